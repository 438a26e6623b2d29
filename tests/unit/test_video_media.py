"""Issue 17's media findings on videos, each on a clip the test generates: the packet index bounded by
packets, a plan over the decode budget refused before decoding, rotation, start offsets, zeroed durations
and a mid-stream size change."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from dfscan.exceptions import DfscanError, VideoTooLargeError
from tests.fixtures.hostile_videos import (
    block_times,
    offset_clip,
    repeated_cluster_mkv,
    repeated_packets,
    resized_clip,
    rotated_clip,
    shifted_mkv,
    zero_duration_mp4,
)
from tests.fixtures.videos import encode_images, make_clip, probe_video
from worker.inference.video.decode import VideoPolicy, open_video, sample_frames

av.logging.set_level(av.logging.PANIC)


def _code(data: bytes, policy: VideoPolicy) -> DfscanError:
    with pytest.raises(DfscanError) as err:
        list(sample_frames(data, policy))
    return err.value


def _packets(data: bytes) -> tuple[int, int]:
    """(video packets, distinct timestamps) as FFmpeg's demuxer reads them."""
    with av.open(io.BytesIO(data)) as container:
        stamps = [p.pts for p in container.demux(video=0) if p.pts is not None]
    return len(stamps), len(set(stamps))


# --- the packet index counts packets ----------------------------------------------------------------


@pytest.fixture(scope="module")
def repeated() -> bytes:
    return repeated_cluster_mkv(2_000)  # 2,001 copies of a 20-frame cluster: 40,020 packets, 20 timestamps


def test_a_repeated_cluster_is_many_packets_over_few_timestamps(repeated: bytes) -> None:
    assert _packets(repeated) == (40_020, 20)


def test_the_frame_cap_counts_packets_not_timestamps(repeated: bytes) -> None:
    # 2 s at 10 fps would pass a cap of 1,001 frames by its 20 timestamps; its 40,020 packets do not.
    err = _code(repeated, VideoPolicy(max_seconds=10.0, max_fps=100.0))
    assert err.code == "VIDEO_TOO_LONG" and "more than 1001 frames (packets)" in err.message


def test_the_index_deadline_counts_packets_not_timestamps(repeated: bytes) -> None:
    # 20 timestamps: a check every 256 distinct timestamps never ran. Now every 256 packets does.
    err = _code(repeated, VideoPolicy(deadline_s=0.0))
    assert (
        isinstance(err, VideoTooLargeError)
        and "reading the video's index took longer than 0 s" in err.message
    )


def test_an_ordinary_clip_of_as_many_packets_as_the_cap_allows_passes() -> None:
    data = make_clip(width=16, height=16, fps=10, seconds=5.0)  # 50 packets, 50 timestamps
    assert probe_video(data, VideoPolicy(max_seconds=10.0, max_fps=4.9)).frames == 50


# --- the decode budget: the plan's cost is known before decoding ------------------------------------


def test_thousands_of_repeated_4k_packets_are_refused_before_decoding() -> None:
    # One 4K keyframe and 8,000 "nothing changed" packets (~270 KB): sampling 32 frames means decoding
    # them all (no other keyframe), 66 Gpx. Before the budget this decoded for the whole deadline.
    data = repeated_packets(3840, 2160, 8_000)
    assert len(data) < 400_000
    err = _code(data, VideoPolicy())
    assert isinstance(err, VideoTooLargeError) and err.code == VideoTooLargeError.code
    assert "decoding 7876 frames of 3840x2160" in err.message and "decode budget of 60 Gpx" in err.message


def test_the_budget_scales_with_the_deadline_and_admits_what_fits() -> None:
    data = repeated_packets(320, 240, 300, fps=10)  # 300 frames of 76,800 pixels, one keyframe
    policy = VideoPolicy(frames=4, deadline_s=1.0, decode_pixels_per_s=76_800 * 200)  # 200 frames fit
    err = _code(data, policy)
    assert isinstance(err, VideoTooLargeError) and "decoding 263 frames of 320x240" in err.message
    frames = list(
        sample_frames(data, VideoPolicy(frames=4, deadline_s=60.0, decode_pixels_per_s=76_800 * 300))
    )
    assert len(frames) == 4


# --- rotation: frames upright, sizes as displayed ----------------------------------------------------


def _portrait_frames(n: int = 4) -> list[Image.Image]:
    """Portrait 48x64 frames with a red block at the top-left corner (as displayed)."""
    frames = []
    for i in range(n):
        image = np.full((64, 48, 3), 40 + 10 * i, dtype=np.uint8)
        image[:12, :12] = (250, 20, 20)
        frames.append(Image.fromarray(image))
    return frames


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_clip_with_a_display_matrix_is_decoded_upright(degrees: int) -> None:
    upright = _portrait_frames()
    data = rotated_clip(upright, degrees)
    with av.open(io.BytesIO(data)) as container:  # stored sideways (or upside down)
        stored = container.streams.video[0].codec_context
        assert (stored.width, stored.height) == ((48, 64) if degrees == 180 else (64, 48))
    info = probe_video(data, VideoPolicy())
    assert (info.width, info.height) == (48, 64)
    frames = list(sample_frames(data, VideoPolicy(frames=4)))
    assert len(frames) == 4
    for frame in frames:
        assert frame.image.size == frame.size == (48, 64)
        pixels = np.asarray(frame.image, dtype=int)
        assert pixels[4, 4, 0] > 200 and pixels[4, 4, 1] < 80  # the red block is at the top-left again
        assert pixels[-4, -4, 0] < 120


def test_a_portrait_phone_clip_has_its_faces_found_as_in_the_upright_copy() -> None:
    pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")
    from tests.fixtures.faces import face_scene, matches
    from worker.inference.faces.crops import load_face_detector

    scenes = [face_scene(110, seed=s, size=(300, 400), kind="field", centers=[(150, 200)]) for s in range(4)]
    upright = encode_images([s.image for s in scenes])
    turned = rotated_clip([s.image for s in scenes], -90)  # stored landscape, shown turned 90 clockwise
    mtcnn = load_face_detector("mtcnn", "cpu")
    policy = VideoPolicy(frames=4)
    assert (probe_video(turned, policy).width, probe_video(turned, policy).height) == (300, 400)
    for upright_frame, turned_frame, scene in zip(
        sample_frames(upright, policy), sample_frames(turned, policy), scenes, strict=True
    ):
        assert turned_frame.size == upright_frame.image.size == (300, 400)
        found = mtcnn.detect([turned_frame.image, upright_frame.image])
        assert [len(f) for f in found] == [1, 1]
        assert matches(found[0][0].box, scene.truth[0]) and matches(found[1][0].box, scene.truth[0])


# --- start offsets, zeroed durations, a size change ---------------------------------------------------


def test_a_clip_starting_at_minus_five_seconds_decodes() -> None:
    data = shifted_mkv(5000)
    # Every block sits 5 s before its cluster's time 0 (what FFmpeg's muxer writes for a negative start).
    assert block_times(data)[:3] == [-5000, -4900, -4800]
    frames = list(sample_frames(data, VideoPolicy(frames=8)))
    assert len(frames) == 8
    assert [round(f.t, 1) for f in frames] == sorted(round(f.t, 1) for f in frames)
    assert 0.0 <= frames[0].t < frames[-1].t <= 2.0
    assert probe_video(data, VideoPolicy()).duration_s == pytest.approx(2.0, abs=0.11)


def test_a_clip_starting_2_to_the_40_ms_in_is_two_seconds_long() -> None:
    data = offset_clip(2**40)
    info = probe_video(data, VideoPolicy())
    assert info.duration_s == pytest.approx(2.0, abs=0.11)
    frames = list(sample_frames(data, VideoPolicy(frames=8)))
    assert len(frames) == 8 and 0.0 <= frames[0].t < frames[-1].t < 2.0
    err = _code(offset_clip(2**40, seconds=12.0), VideoPolicy(max_seconds=10.0))
    assert err.code == "VIDEO_TOO_LONG"  # end minus start still counts: 12 s is over 10 s


def test_zeroed_frame_durations_still_sample_spread_frames() -> None:
    data = zero_duration_mp4(seconds=25.0, fps=10)
    assert _packets(data) == (250, 1)  # every frame at the timestamp 0
    frames = list(sample_frames(data, VideoPolicy(frames=32)))
    assert len(frames) == 32
    times = [f.t for f in frames]
    assert times == sorted(times) and times[0] < 1.0 and times[-1] > 24.0
    pictures = {np.asarray(f.image).tobytes() for f in frames}
    assert len(pictures) == 32  # 32 different frames, not one frame 32 times
    assert probe_video(data, VideoPolicy()).duration_s == pytest.approx(25.0, abs=0.5)


def test_boxes_stay_inside_the_reported_size_after_a_mid_stream_size_change() -> None:
    small = Image.new("RGB", (64, 48), (200, 30, 30))
    large = Image.new("RGB", (128, 96), (30, 30, 200))
    data = resized_clip(small, large, frames=10)
    with open_video(data, VideoPolicy(frames=20)) as video:
        frames = list(video.frames)
        reported = (video.info.width, video.info.height)
    assert reported == (64, 48)
    assert {f.image.size for f in frames} == {(64, 48), (128, 96)}  # the stream did change size
    assert all(f.size == reported for f in frames)  # every frame is reported in the video's size
    from worker.inference.regions import scale_box

    for f in frames:  # a box over a whole frame of either size maps inside the reported size
        x, y, w, h = scale_box((0, 0, *f.image.size), f.image.size, f.size or f.image.size)
        assert min(x, y) >= 0 and x + w <= reported[0] and y + h <= reported[1]
