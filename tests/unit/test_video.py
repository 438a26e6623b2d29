"""The video core: sniffing, the allow-list, caps before decoding, the sampling plan, hostile videos."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from dfscan.exceptions import DfscanError, error_detail
from tests.fixtures.videos import (
    corrupt_mdat,
    flat_clip,
    hostile_corpus,
    is_video,
    make_clip,
    probe_video,
    redness,
)
from worker.inference.video.decode import (
    SampledFrame,
    VideoPolicy,
    decode_cost,
    plan_runs,
    sample_frames,
    scaled_size,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY = VideoPolicy()

av.logging.set_level(av.logging.PANIC)  # FFmpeg's own complaints about the hostile files


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[bytes, str]]:
    return hostile_corpus()


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


# --- sniffing and the allow-list ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "codec"),
    [
        ("mp4", "libx264"),
        ("mov", "libx264"),
        ("mp4", "libx265"),
        ("webm", "libvpx"),
        ("webm", "libvpx-vp9"),
        ("mkv", "libvpx-vp9"),
        ("webm", "libsvtav1"),
    ],
)
def test_every_allowed_container_and_codec_is_sniffed_and_sampled(container: str, codec: str) -> None:
    data = make_clip(container=container, codec=codec, seconds=2.0, fps=10, gop=5, fake_spans=((0.5, 1.0),))
    assert is_video(data)
    info = probe_video(data, POLICY)
    assert (info.width, info.height, info.frames) == (64, 48, 20)
    assert info.duration_s == pytest.approx(2.0, abs=0.11)
    frames = list(sample_frames(data, POLICY))
    assert len(frames) == 20  # fewer frames than the 32 asked for: every frame once
    assert [f.t for f in frames] == sorted(f.t for f in frames)
    for f in frames:
        assert f.image.mode == "RGB" and f.image.size == (64, 48)
        # The red wash is on exactly the frames timed inside the fake span: times match pixels.
        assert (redness(np.asarray(f.image)) > 0.8) == (0.5 - 1e-6 <= f.t < 1.0 - 1e-6), f.t


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff\xe0" + b"\0" * 64,
        b"hello world, this is text named clip.mp4",
        b"\x00\x00\x00\x1cftypavif" + b"\0" * 32,
        b"\x00\x00\x00\x1cftypheic" + b"\0" * 32,
    ],
    ids=["empty", "jpeg", "text", "avif", "heic"],
)
def test_images_and_other_bytes_are_not_videos(data: bytes) -> None:
    assert not is_video(data)


def test_a_png_is_not_a_video_and_is_refused_as_unsupported() -> None:
    png = _png()
    assert not is_video(png)
    with pytest.raises(DfscanError) as err:
        list(sample_frames(png, POLICY))
    assert err.value.code == "UNSUPPORTED_FORMAT"


def test_h264_in_matroska_is_not_on_the_allow_list() -> None:
    data = make_clip(container="mkv", codec="libx264", seconds=0.5)
    assert is_video(data)
    with pytest.raises(DfscanError) as err:
        probe_video(data, POLICY)
    assert err.value.code == "UNSUPPORTED_FORMAT"
    assert "'h264'" in err.value.message and "vp9" in err.value.message


# --- sampling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gop", [1, 5, 40, 400])
def test_sampling_spreads_frames_over_the_duration_whatever_the_keyframe_interval(gop: int) -> None:
    # 40 s at 10 fps = 400 frames; 32 samples, one every 1.25 s.
    data = make_clip(width=32, height=32, fps=10, seconds=40.0, gop=gop, fake_spans=((10.0, 14.0),))
    frames = list(sample_frames(data, VideoPolicy(frames=32)))
    assert len(frames) == 32
    targets = [(i + 0.5) * 40.0 / 32 for i in range(32)]
    spacing = 40.0 / 32
    for f, target in zip(frames, targets, strict=True):
        # exact (nearest frame) or a keyframe within a quarter of the spacing
        assert abs(f.t - target) <= spacing / 4 + 0.051, (gop, f.t, target)
        assert (redness(np.asarray(f.image)) > 0.8) == (10.0 - 1e-6 <= f.t < 14.0 - 1e-6)


def test_the_plan_decodes_no_more_than_straight_through_nor_than_independent_seeks() -> None:
    for gop in (1, 3, 10, 25, 60, 250, 1000):
        pts = list(range(0, 1500))
        key = [i % gop == 0 for i in pts]
        wanted = [round((i + 0.5) * 1500 / 32) for i in range(32)]
        runs = plan_runs(pts, key, wanted, tolerance=1500 / 32 / 4)
        cost = decode_cost(pts, runs)
        independent = sum(j - (j // gop) * gop + 1 for j in wanted)
        assert cost <= len(pts) and cost <= independent, (gop, cost, independent)
        got = sorted(p for r in runs for p in r.wanted)
        assert len(got) == len(set(got)) >= 30, gop
        if gop <= 11:  # a keyframe within a quarter of the spacing of every target: one frame each
            assert cost == len(got), (gop, cost)
        if gop == 1000:  # two keyframes: one forward run from each
            assert len(runs) == 2 and cost < len(pts)


def test_fps_mode_samples_that_many_frames_per_second() -> None:
    data = make_clip(width=32, height=32, fps=10, seconds=6.0, gop=10)
    frames = list(sample_frames(data, VideoPolicy(fps=2.0)))
    assert len(frames) == 12
    for i, f in enumerate(frames):  # a target halfway between two frames takes the earlier one
        assert abs(f.t - (0.25 + 0.5 * i)) <= 0.05 + 1e-9, (i, f.t)


def test_large_frames_are_scaled_to_the_frame_side_keeping_the_aspect() -> None:
    data = make_clip(width=1280, height=720, fps=5, seconds=1.0, gop=5)
    frames = list(sample_frames(data, VideoPolicy(frame_side=320)))
    assert {f.image.size for f in frames} == {(320, 180)}
    assert scaled_size(1280, 720, 640) == (640, 360)
    assert scaled_size(17, 9, 640) == (17, 9)  # small frames keep their size
    assert scaled_size(4000, 10, 640) == (640, 2)
    assert scaled_size(10000, 1, 640) == (640, 1)


def test_frames_come_from_a_generator_one_at_a_time() -> None:
    data = make_clip(width=32, height=32, fps=10, seconds=4.0, gop=10)
    frames = sample_frames(data, POLICY)
    first: SampledFrame = next(frames)
    assert inspect.isgenerator(frames)
    assert first.t == pytest.approx(0.0, abs=0.11)
    frames.close()  # stopping early closes the container; nothing else is decoded


# --- hostile videos ---------------------------------------------------------------------------------


def test_every_hostile_video_ends_with_its_code_and_the_process_stays_healthy(
    corpus: dict[str, tuple[bytes, str]],
) -> None:
    got = {}
    for name, (data, _) in corpus.items():
        try:
            list(sample_frames(data, POLICY))
            got[name] = "done"
        except DfscanError as exc:
            got[name] = exc.code
            assert exc.message and len(exc.message) < 400
    assert got == {name: code for name, (_, code) in corpus.items()}
    # afterwards an ordinary clip still decodes in this process
    assert len(list(sample_frames(make_clip(seconds=1.0), POLICY))) == 10


def test_hostile_videos_are_refused_before_decoding_when_the_headers_tell(
    corpus: dict[str, tuple[bytes, str]],
) -> None:
    for name in (
        "hundreds_of_streams",
        "ten_hours_16x16",
        "huge_dimensions",
        "zero_video_streams",
        "mpeg4_part2_in_mp4",
    ):
        with pytest.raises(DfscanError) as err:
            probe_video(corpus[name][0], POLICY)  # probe decodes nothing
        assert err.value.code == corpus[name][1], name


def test_a_moov_that_lies_about_duration_is_caught_by_the_timestamps(
    corpus: dict[str, tuple[bytes, str]],
) -> None:
    data = corpus["moov_lies_duration"][0]
    with av.open(__import__("io").BytesIO(data)) as c:
        stream = c.streams.video[0]
        assert (
            stream.duration is not None and float(stream.duration * stream.time_base) < 3
        )  # the header lies
    with pytest.raises(DfscanError) as err:
        probe_video(data, POLICY)
    assert err.value.code == "VIDEO_TOO_LONG" and "timestamps" in err.value.message


def test_corrupt_packets_mid_stream_still_give_a_sample_from_the_intact_parts() -> None:
    data = corrupt_mdat(make_clip(seconds=4.0, fps=10, gop=5), start=0.4, end=0.6)
    frames = list(sample_frames(data, POLICY))
    assert 20 <= len(frames) < 40


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_truncated_videos_fail_cleanly_or_give_what_they_hold(container: str, cut: float) -> None:
    codec = "libx264" if container == "mp4" else "libvpx-vp9"
    data = make_clip(container=container, codec=codec, seconds=3.0, fps=10, gop=5)
    part = data[: int(len(data) * cut)]
    try:
        frames = list(sample_frames(part, POLICY))
    except DfscanError as exc:
        assert exc.code == "CORRUPT_VIDEO", exc
    else:
        # Matroska needs no index at the end: a cut-off WebM gives the frames it holds (at least half the
        # sampled ones, or it is CORRUPT_VIDEO). A cut-off MP4 box is always CORRUPT_VIDEO.
        assert container == "webm" and len(frames) >= 1


def test_byte_cap_and_deadline() -> None:
    data = make_clip(seconds=1.0)
    with pytest.raises(DfscanError) as err:
        probe_video(data, VideoPolicy(max_bytes=len(data) - 1))
    assert (err.value.code, getattr(err.value, "limit", None)) == ("TOO_LARGE", "bytes")
    with pytest.raises(DfscanError) as err:
        list(sample_frames(data, VideoPolicy(deadline_s=0.0)))
    assert (err.value.code, getattr(err.value, "limit", None)) == ("TOO_LARGE", "video_time")
    assert "longer than" in err.value.message and err.value.message.endswith("(limit: video_time)")


def test_duration_cap_from_the_header_and_frame_cap_from_the_index() -> None:
    data = make_clip(width=16, height=16, fps=10, seconds=5.0)
    with pytest.raises(DfscanError) as err:
        probe_video(data, VideoPolicy(max_seconds=4.0))
    assert err.value.code == "VIDEO_TOO_LONG"
    with pytest.raises(DfscanError) as err:
        probe_video(data, VideoPolicy(max_seconds=10.0, max_fps=2.0))  # at most 21 frames; it has 50
    assert err.value.code == "VIDEO_TOO_LONG" and "more than 21 frames" in err.value.message


def test_pixel_cap_is_checked_from_the_header() -> None:
    data = make_clip(width=64, height=48, seconds=0.5)
    with pytest.raises(DfscanError) as err:
        probe_video(data, VideoPolicy(max_frame_pixels=64 * 48 - 1))
    assert err.value.code == "TOO_LARGE" and "64x48" in err.value.message
    assert error_detail(err.value.code, err.value.message) == {
        "limit": "frame_pixels",
        "former_code": "VIDEO_TOO_LARGE",
    }
    assert probe_video(data, VideoPolicy(max_frame_pixels=64 * 48)).width == 64


def test_a_decode_bomb_under_the_pixel_cap_stays_within_a_memory_bound(tmp_path: Path) -> None:
    """120 flat 2048x2048 frames, one keyframe: 22 KB on disk, 1.5 GB as RGB. Sampling decodes them all
    (the targets need every frame after the only keyframe) but holds one at a time."""
    data = flat_clip(2048, 2048, frames=120, fps=30, gop=1000)
    assert len(data) < 100_000
    path = tmp_path / "bomb.mp4"
    path.write_bytes(data)
    code = textwrap.dedent(
        f"""
        import resource, sys
        from tests.fixtures.videos import make_clip
        from worker.inference.video.decode import VideoPolicy, sample_frames
        list(sample_frames(make_clip(seconds=1.0), VideoPolicy()))  # libraries loaded before measuring
        data = open({str(path)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        frames = list(sample_frames(data, VideoPolicy(frames=32)))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(frames), (after - before) // 1024)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    count, grown_mib = map(int, out.stdout.split())
    assert count == 32
    assert grown_mib < 300, f"peak RSS grew {grown_mib} MiB while sampling a 1.5 GB (decoded) bomb"
    with pytest.raises(DfscanError) as err:
        list(sample_frames(data, VideoPolicy(deadline_s=0.05)))
    assert (err.value.code, getattr(err.value, "limit", None)) == ("TOO_LARGE", "video_time")


def test_the_decoder_refuses_frames_over_the_cap_even_when_the_header_check_is_passed(
    corpus: dict[str, tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg's max_pixels is the backstop for a stream whose frames grow past what its header said."""
    import dataclasses

    from worker.inference.video import container as video

    original = video.check_headers

    def lenient(
        container: av.container.InputContainer, kind: str, codecs: frozenset[str], policy: VideoPolicy
    ) -> None:
        original(container, kind, codecs, dataclasses.replace(policy, max_frame_pixels=10**9))
        container.streams.video[0].codec_context.options = {"max_pixels": str(policy.max_frame_pixels)}

    monkeypatch.setattr(video, "check_headers", lenient)
    with pytest.raises(DfscanError) as err:
        list(sample_frames(corpus["huge_dimensions"][0], POLICY))
    assert err.value.code == "CORRUPT_VIDEO" and "0 of" in err.value.message  # no 4096x4096 frame came out


def _ftyp(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")  # the offset of the box after ftyp


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d + b"\x00\x00\x00", "stray bytes"),
        (lambda d: d[: _ftyp(d)] + b"\x00\x00\x00\x04" + d[_ftyp(d) + 4 :], "impossible size"),
    ],
    ids=["stray-tail", "box-size-4"],
)
def test_broken_mp4_box_structure_is_corrupt(mutate: object, message: str) -> None:
    data = make_clip(seconds=0.5)
    assert data[4:8] == b"ftyp" and int.from_bytes(data[:4], "big") in (24, 28, 32)
    broken = mutate(data)  # type: ignore[operator]
    with pytest.raises(DfscanError) as err:
        probe_video(broken, POLICY)
    assert err.value.code == "CORRUPT_VIDEO" and message in err.value.message
