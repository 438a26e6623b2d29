"""A video down the Judge's road: sampled frames (bounded by the job's budget), their regions behind
images in both batchers, and a verdict with its duration, peak time and timeline under
:attr:`Judge.video_version <worker.inference.judge.Judge.video_version>`, so the duplicate cache answers
a video only with a verdict sampled the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from dfscan.verdicts import FACES, IMAGE, VIDEO, Preview, Stored, Verdict
from worker.inference.budget import Budget, rgb_bytes
from worker.inference.hashing.pdq import Pdq
from worker.inference.images.decode import image_sha256
from worker.inference.images.previews import Thumbnails
from worker.inference.model.batcher import BACKGROUND
from worker.inference.outcomes import MODEL_TIMEOUT_S, face_counts, hashing, ms, timeline
from worker.inference.regions import ClipFrame, Observe, score_clip
from worker.inference.video.decode import VideoInfo, open_video

if TYPE_CHECKING:  # the Judge calls in here; its type is all this module needs of it
    from worker.inference.judge import Judge, Known


def judge_video(
    judge: Judge,
    data: bytes,
    container: str,
    source: str,
    fetch_ms: float,
    budget: Budget,
    observe: Observe | None,
    hashed: list[Pdq],
    known: Known | None,
) -> Verdict:
    """A video's verdict, under the version that names its sampling (:attr:`Judge.video_version`); its
    sampled frames' hashes are appended to ``hashed``."""
    verdict = _video_verdict(judge, data, container, source, fetch_ms, budget, observe, hashed, known)
    return replace(verdict, model_version=judge.video_version)


def _video_verdict(
    judge: Judge,
    data: bytes,
    container: str,
    source: str,
    fetch_ms: float,
    budget: Budget,
    observe: Observe | None,
    hashed: list[Pdq],
    known: Known | None,
) -> Verdict:
    sha = image_sha256(data)
    facts: dict[str, object] = {
        "image_sha256": sha,
        "n_bytes": len(data),
        "fetch_ms": fetch_ms,
        "image_format": container.upper(),
        "media": VIDEO,
    }
    # The same bytes judged before with this model and sampling: its verdict and frames, no decoding.
    stored = known(sha, judge.video_version) if known is not None else None
    if isinstance(stored, Stored) and stored.media == VIDEO:
        facts.update(duration_s=stored.duration_s, peak_t=stored.peak_t, frames=stored.frames)
        return judge._from_stored(source, stored, **facts)
    opened: list[VideoInfo] = []
    thumbs = Thumbnails(judge.images.previews)

    def frames() -> Iterator[ClipFrame]:
        # The deadline is the job's budget: it counts decoding, not waiting for the model or detector.
        with open_video(data, judge.videos, check=budget.check) as video:
            opened.append(video.info)
            for sampled in video.frames:
                image = sampled.image
                with budget.hold(rgb_bytes(image.size), "video frames"):
                    thumbs.add(sampled.t, image)
                    yield ClipFrame(
                        sampled.t, sampled.size or image.size, f"{sha}@{sampled.t!r}", image=image
                    )
                del sampled, image

    started = time.perf_counter()
    try:
        budget.enter("video decode")
        scored = score_clip(
            hashing(frames(), hashed),
            judge.classifier.preprocess,
            # behind images: a video never starves the images queued after it
            lambda region: judge._score(region.key, region.pixels, BACKGROUND),
            budget,
            faces=judge.faces,
            find=None if judge.faces is None else lambda image: judge._find_faces(image, BACKGROUND),
            max_in_flight=judge.videos.in_flight,
            timeout=MODEL_TIMEOUT_S,
            observe=observe,
        )
    except Exception as exc:
        return judge._failed(source, exc, **facts, decode_ms=ms(started))
    info = opened[0]
    facts.update(
        width=info.width,
        height=info.height,
        decode_ms=scored.total_ms - scored.wait_ms - scored.detect_ms,
        detect_ms=scored.detect_ms,
        infer_ms=scored.wait_ms,
        duration_s=info.duration_s,
        frames=timeline(scored),
        previews=tuple(Preview(t, jpeg) for t, jpeg in thumbs.kept()),
        **face_counts(scored),
    )
    if scored.fake_score is None:  # require, and no face in any frame: nothing was judged
        return judge._not_applicable(source, **facts)
    return judge._done(
        source,
        scored.fake_score,
        cached=scored.cached,
        judged_on=FACES if scored.on_faces else IMAGE,
        peak_t=scored.peak_t,
        **facts,  # type: ignore[arg-type]
    )
