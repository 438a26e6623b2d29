"""Videos through the service: submit -> Redis -> a real worker -> Postgres, with the per-frame timeline,
hostile videos beside images, and a worker killed mid-video that still ends with exactly one verdict."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from db.models import VerdictFrame
from db.session import new_engine, new_session_factory
from producer.check import check_submission
from producer.client import ScanClient
from tests.fixtures.service import Service
from tests.fixtures.videos import hostile_corpus, make_clip
from tests.integration.test_service import settings_for, write_images

pytestmark = pytest.mark.integration


def frame_rows(svc: Service) -> int:
    with new_session_factory(new_engine(svc.database_url))() as session:
        return session.scalar(select(func.count()).select_from(VerdictFrame)) or 0


def test_a_worker_judges_videos_beside_images_and_stores_their_frames(service: Service) -> None:
    clip = service.images / "clip.mp4"
    clip.write_bytes(make_clip(width=64, height=48, fps=10, seconds=5.0, gop=10, fake_spans=((1.0, 2.0),)))
    webm = service.images / "clip.webm"
    webm.write_bytes(make_clip(container="webm", codec="libvpx-vp9", seconds=2.0))
    hostile = {}
    for name in ("truncated_half", "moov_lies_duration", "hundreds_of_streams", "mpeg4_part2_in_mp4"):
        data, code = hostile_corpus()[name]
        (service.images / f"{name}.mp4").write_bytes(data)
        hostile[str(service.images / f"{name}.mp4")] = code
    images = [str(p) for p in write_images(service.images, 3)]
    service.start_worker(env={"DFSCAN_VIDEO_FRAMES": "10", "DFSCAN_MAX_BYTES": "2000"})
    sub = ScanClient(settings_for(service)).submit([str(clip), str(webm), *hostile, *images])
    sub.wait(120)
    rows = {row.source: row for row in sub.results()}
    video = rows[str(clip)].verdict
    assert video.done, video.error
    assert video.media == "video" and video.duration_s == pytest.approx(5.0, abs=0.01)
    assert video.frames is not None and len(video.frames) == 10
    assert video.peak_t in [f.t for f in video.frames]
    out = rows[str(clip)].output()
    assert out["frames"][0].keys() == {"t", "fake_score", "faces"} and out["peak_t"] == video.peak_t
    assert rows[str(webm)].verdict.done and rows[str(webm)].verdict.media == "video"
    assert {source: rows[source].error_code for source in hostile} == hostile
    assert all(rows[p].verdict.done and rows[p].verdict.media == "image" for p in images)
    webm_frames = len(rows[str(webm)].verdict.frames or ())
    assert frame_rows(service) == 10 + webm_frames
    report = check_submission(settings_for(service), sub.id)
    assert report.ok, report.summary()
    table = service.cli("results", str(sub.id))
    assert table.returncode == 0, table.stderr
    # The table folds its widest cells (a long tmp path) but never the label's few words.
    assert f"video 5.0 s, peak at {video.peak_t:.1f} s" in table.stdout
    as_json = service.cli("results", str(sub.id), "--format", "json")
    assert '"media": "video"' in as_json.stdout and '"peak_t": ' in as_json.stdout


def test_a_worker_killed_mid_video_still_ends_with_exactly_one_verdict(service: Service) -> None:
    clip = service.images / "long.mp4"
    clip.write_bytes(make_clip(width=320, height=240, fps=25, seconds=20.0, gop=250))
    env = {"DFSCAN_VIDEO_FRAMES": "64", "DFSCAN_BATCH_SIZE": "2"}
    first = service.start_worker(env=env)
    sub = ScanClient(settings_for(service)).submit([str(clip)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sub.status()["running"] == 0:
        time.sleep(0.05)
    time.sleep(0.3)  # mid-video: claimed, decoding and scoring
    first.kill()
    assert sub.results()[0].status != "done", "the video finished before the kill; make it longer"
    service.start_worker("--sweeper", env=env)
    sub.wait(120)
    (row,) = sub.results()
    assert row.status == "done" and row.verdict.frames is not None and len(row.verdict.frames) == 64
    assert row.attempts == 2  # claimed by the killed worker, then by the second
    assert frame_rows(service) == 64
    report = check_submission(settings_for(service), sub.id)
    assert report.ok and report.done == 1, report.summary()


def test_a_video_url_is_fetched_under_the_video_cap_judged_and_stored(service: Service) -> None:
    """A moderation backend submits the video's URL as it would an image's: the bytes say video (the
    path says nothing), the larger video byte cap applies to it, and one over that cap fails TOO_LARGE.
    The same clip submitted again is answered from the duplicate cache, frames included."""
    from tests.fixtures.http_server import serve_http

    clip = make_clip(width=64, height=48, fps=10, seconds=3.0, gop=10)
    big = make_clip(width=64, height=48, fps=10, seconds=6.0, gop=10)
    assert len(big) > len(clip) + 1000
    files = {"/media/1": clip, "/media/2": big}
    with serve_http(files) as server:
        service.start_worker(
            env={
                "DFSCAN_URL_ALLOWLIST": "127.0.0.1",
                "DFSCAN_VIDEO_FRAMES": "6",
                "DFSCAN_MAX_BYTES": "2000",  # images: far less than either clip
                "DFSCAN_MAX_VIDEO_BYTES": str(len(clip) + 500),
            }
        )
        client = ScanClient(settings_for(service))
        sub = client.submit([server.url("/media/1"), server.url("/media/2")])
        sub.wait(120)
        # The same clip uploaded again: answered from the duplicate cache, with its timeline.
        again = client.submit([server.url("/media/1")])
        again.wait(120)
    (repeat,) = again.results()
    assert repeat.verdict.done and repeat.verdict.cached is True
    rows = {row.source.rsplit("/", 1)[-1]: row for row in sub.results()}
    assert (
        repeat.verdict.frames == rows["1"].verdict.frames
        and repeat.verdict.peak_t == rows["1"].verdict.peak_t
    )
    video = rows["1"].verdict
    assert video.done, video.error
    assert video.media == "video" and video.image_format == "MP4"
    assert (
        video.duration_s == pytest.approx(3.0, abs=0.01)
        and video.frames is not None
        and len(video.frames) == 6
    )
    assert rows["2"].error_code == "TOO_LARGE" and "for videos" in (rows["2"].error or "")
    assert rows["2"].attempts == 1  # a permanent error: not retried
    assert frame_rows(service) == 12  # each verdict keeps its own frames
