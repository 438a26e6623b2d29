"""A video down the Judge's road: sampled frames (bounded by the job's budget), their regions behind
images in both batchers (with a second model, each frame judged whole by it too; with explanations, the
heatmaps of the most suspicious frame), and a verdict with its duration, peak time and timeline under
:attr:`Judge.video_version <worker.inference.judge.Judge.video_version>`, so the duplicate cache answers
a video only with a verdict sampled the same way.

With a near-duplicate look-up, every sampled frame is decoded and hashed before the first model input
(the frames wait, held in the job's pixel budget: 32 frames of at most 640 px by default, about 40 MiB),
so a clip that repeats one of the tenant's verdicts (vPDQ's frame shares) is answered from it without
spending a model input; otherwise the held frames go to the model as they would have."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from dfscan.verdicts import FACES, IMAGE, VIDEO, Preview, Stored, Verdict
from worker.inference.budget import Budget, rgb_bytes
from worker.inference.hashing.pdq import MediaHash, Near, Pdq, Similar, frame_hashes
from worker.inference.images.decode import image_sha256
from worker.inference.images.previews import Thumbnails
from worker.inference.model.batcher import BACKGROUND
from worker.inference.outcomes import MODEL_TIMEOUT_S, face_counts, hashing, ms, timeline, with_near
from worker.inference.regions import ClipFrame, Observe, score_clip
from worker.inference.signals import ClipSecond
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
    known: Known | None,
    similar: Similar | None,
) -> Verdict:
    """A video's verdict, under the version that names its sampling (:attr:`Judge.video_version`), with
    its sampled frames' hashes and what the near-duplicate look-up (``similar``) found."""
    hashed: list[Pdq] = []
    near: list[Near | None] = []
    verdict = _video_verdict(
        judge, data, container, source, fetch_ms, budget, observe, hashed, known, similar, near
    )
    verdict = replace(verdict, model_version=judge.video_version)
    if not verdict.done or not hashed:
        return verdict
    verdict = replace(verdict, hashes=frame_hashes(tuple(hashed)))
    return with_near(verdict, near[0]) if near else verdict


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
    similar: Similar | None,
    near: list[Near | None],
) -> Verdict:
    sha = image_sha256(data)
    facts: dict[str, object] = {
        "image_sha256": sha,
        "n_bytes": len(data),
        "fetch_ms": fetch_ms,
        "image_format": container.upper(),
        "media": VIDEO,
    }
    # The same bytes judged before with this model and sampling: its verdict and frames, no decoding
    # (the duplicate cache keeps no heatmaps: a video asked to explain is judged again).
    stored = known(sha, judge.video_version) if known is not None and not judge.explain else None
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
    second = ClipSecond()  # with a second model: each sampled frame judged whole by it too
    second_score: float | None = None
    held: list[tuple[ClipFrame, contextlib.ExitStack]] = []
    try:
        budget.enter("video decode")
        clip = hashing(frames(), hashed)
        if similar is not None:  # every frame hashed before the first model input
            held = _decoded_ahead(clip, budget)
            clip = _replay(held)
            near.append(judge._look_up(MediaHash(tuple(hashed), video=True), judge.video_version, similar))
            found = near[0]
            if found is not None and found.stored is not None:
                _let_go(held)  # answered from the earlier verdict: the held frames go unjudged
                info = opened[0]
                facts.update(
                    width=info.width, height=info.height, duration_s=info.duration_s, decode_ms=ms(started)
                )
                return replace(judge._from_stored(source, found.stored, **facts), cached=False)
        if judge.second is not None:
            clip = judge._second_per_frame(clip, budget, second, BACKGROUND)
        scored = score_clip(
            clip,
            judge.classifier.preprocess,
            # behind images: a video never starves the images queued after it
            lambda region: judge._score(region.key, region.pixels, BACKGROUND),
            budget,
            faces=judge.faces,
            find=None if judge.faces is None else lambda image: judge._find_faces(image, BACKGROUND),
            max_in_flight=judge.videos.in_flight,
            timeout=MODEL_TIMEOUT_S,
            observe=observe,
            explain=judge._heatmap if judge.explain else None,
            clip=True,
        )
        if second.futures:
            with budget.waiting():
                second_score = second.score(MODEL_TIMEOUT_S)
    except Exception as exc:
        return judge._failed(source, exc, **facts, decode_ms=ms(started))
    finally:
        _let_go(held)  # what the road did not take (a generator never started runs no finally)
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
    if judge.explain:
        facts["explanation"] = tuple(scored.heatmaps)
    if second_score is not None:
        facts["second_opinion"] = judge._opinion(scored.fake_score, second_score)
    return judge._done(
        source,
        scored.fake_score,
        cached=scored.cached and second.cached,
        judged_on=FACES if scored.on_faces else IMAGE,
        peak_t=scored.peak_t,
        **facts,  # type: ignore[arg-type]
    )


def _decoded_ahead(
    frames: Iterator[ClipFrame], budget: Budget
) -> list[tuple[ClipFrame, contextlib.ExitStack]]:
    """Every frame of ``frames`` (decoding and hashing them all), each held in the job's pixel budget
    until it is passed on (:func:`_replay`)."""
    held: list[tuple[ClipFrame, contextlib.ExitStack]] = []
    try:
        for frame in frames:
            stack = contextlib.ExitStack()
            size = frame.image.size if frame.image is not None else (0, 0)
            stack.enter_context(budget.hold(rgb_bytes(size), "video frames"))
            held.append((frame, stack))
    except BaseException:
        _let_go(held)
        raise
    return held


def _replay(held: list[tuple[ClipFrame, contextlib.ExitStack]]) -> Iterator[ClipFrame]:
    """The held frames in order, each let go of once the road has taken it (and all of them when the
    road stops early or the generator is closed)."""
    try:
        while held:
            frame, stack = held.pop(0)
            try:
                yield frame
            finally:
                stack.close()
            del frame
    finally:
        _let_go(held)


def _let_go(held: list[tuple[ClipFrame, contextlib.ExitStack]]) -> None:
    for _, stack in held:
        stack.close()
    held.clear()
