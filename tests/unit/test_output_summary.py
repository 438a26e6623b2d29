"""The one-line summary under a results table counts what was judged, videos apart from images."""

from __future__ import annotations

from dfscan.cli.output import summary


def test_the_summary_counts_videos_apart_from_images_and_failures_by_code() -> None:
    rows = [
        {"status": "done", "label": "fake", "media": "video"},
        {"status": "done", "label": "real", "media": "image"},
        {"status": "done", "label": "real"},  # a row without media is an image
        {"status": "failed", "error_code": "CORRUPT_VIDEO", "media": "video"},
        {"status": "queued"},
    ]
    assert summary(rows) == "3 images, 2 videos, 1 fake, 2 real, 1 failed (CORRUPT_VIDEO 1), 1 pending"
    assert summary([{"status": "done", "label": "fake"}]) == "1 image, 1 fake, 0 real, 0 failed"
