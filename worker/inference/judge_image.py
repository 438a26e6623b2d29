"""A still or animated image down the Judge's road: decoded inside the job's budget (straight to the
model's size, or at full size for faces, a second opinion or a picture), hashed, matched against near
duplicates before any model input is spent, then its regions through the batcher; an animated image is a
clip of sampled frames under :attr:`Judge.animation_version <worker.inference.judge.Judge.animation_version>`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import Image

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError
from dfscan.verdicts import FACES, IMAGE, Preview, Verdict
from worker.inference.budget import Budget, rgb_bytes
from worker.inference.hashing.pdq import MediaHash, Pdq, Similar, frame_hashes, pdq_dihedral, pdq_of
from worker.inference.images.animation import (
    AnimationFrame,
    animation_frames,
    frame_count,
    list_animation_frames,
)
from worker.inference.images.decode import decode_in_process, decode_with_size, image_sha256, sniff_format
from worker.inference.images.previews import Thumbnails, preview_jpeg
from worker.inference.model.batcher import BACKGROUND, FOREGROUND
from worker.inference.model.preprocess import load_pixels_hashed
from worker.inference.outcomes import MODEL_TIMEOUT_S, face_counts, hashing, ms, timeline, with_near
from worker.inference.regions import ClipFrame, Observe, score_clip
from worker.inference.signals import SECOND, ClipSecond, with_second

if TYPE_CHECKING:  # the Judge calls in here; its type is all this module needs of it
    from worker.inference.judge import Judge, Known


def judge_image(
    judge: Judge,
    data: bytes,
    source: str,
    fetch_ms: float,
    budget: Budget,
    observe: Observe | None,
    similar: Similar | None,
    known: Known | None,
) -> Verdict:
    """A still or animated image's verdict (an animated image's under :attr:`Judge.animation_version`)."""
    sha = image_sha256(data)
    facts: dict[str, object] = {"image_sha256": sha, "n_bytes": len(data), "fetch_ms": fetch_ms}
    facts["image_format"] = sniff_format(data, judge.images)
    count = frame_count(data, judge.images)
    version = judge.version if count == 1 else judge.animation_version
    # The duplicate cache keeps no heatmaps: a verdict asked to explain is judged again.
    stored = known(sha, version) if known is not None and not judge.explain else None
    if stored is not None:
        return replace(judge._from_stored(source, stored, **facts), model_version=version)
    started = time.perf_counter()
    kept = contextlib.ExitStack()  # the full-size image's share of the decode memory, while held
    try:
        budget.enter("decode")
        if judge.faces is None and observe is None and judge.second is None:
            # Decode, reduce and preprocess inside the decode memory budget (and, with
            # DFSCAN_DECODE_PROCESSES, in a child process): only the model-sized tensor (and the hash
            # of the pixels) comes back.
            pixels, (width, height), pdq, variants, preview = load_pixels_hashed(
                data, judge.classifier.preprocess, judge.images
            )
            frame = ClipFrame(0.0, (width, height), sha, pixels=pixels)
        else:  # full size: faces are cropped from the original pixels (no JPEG draft)
            image, (width, height) = _decode_held(judge, data, budget, kept)
            pdq, variants = pdq_dihedral(image) if count == 1 else (pdq_of(image), ())
            preview = preview_jpeg(image) if judge.images.previews and count == 1 else None
            frame = ClipFrame(0.0, (width, height), sha, image=image)
            del image
        budget.check("decode")
    except Exception as exc:
        kept.close()
        return judge._failed(source, exc, **facts, decode_ms=ms(started))
    facts.update(width=width, height=height, decode_ms=ms(started))
    if count > 1:
        del frame  # frame 1 passed every check of the bounded decode; the clip reads its frames
        kept.close()
        frame_pdqs: list[Pdq] = []
        thumbs = Thumbnails(judge.images.previews)
        sampled = hashing(_animation_frames(judge, data, sha, budget, thumbs), frame_pdqs)
        verdict = judge_frames(judge, sampled, source, facts, budget, observe, clip=True)
        verdict = replace(verdict, previews=tuple(Preview(t, jpeg) for t, jpeg in thumbs.kept()))
        return judge._matched_clip(replace(verdict, model_version=version), frame_pdqs, similar)
    facts["hashes"] = frame_hashes((pdq,))
    if preview is not None:
        facts["previews"] = (Preview(None, preview),)
    near = judge._look_up(MediaHash((pdq,), variants), version, similar)
    if near is not None and near.stored is not None:
        kept.close()
        del frame  # answered from the earlier verdict: no model input
        answer = replace(judge._from_stored(source, near.stored, **facts), cached=False)
        return with_near(answer, near)
    frames = [frame]
    del frame  # only the road holds the image now: it is dropped once its regions are made
    verdict = judge_frames(judge, _held(frames, kept), source, facts, budget, observe, clip=False)
    return with_near(verdict, near)


def _decode_held(
    judge: Judge, data: bytes, budget: Budget, kept: contextlib.ExitStack
) -> tuple[Image.Image, tuple[int, int]]:
    """The full-size decode, its RGB image counted against the job's and the process's decode memory
    from inside the decode's own reservation (never outside the budget) until ``kept`` closes."""
    stage = "face crops" if judge.faces is not None else "regions"
    if judge.images.decode_processes > 0:  # decoded in a child: counted as it arrives
        image, size = decode_with_size(data, judge.images)
        kept.enter_context(budget.hold(rgb_bytes(image.size), stage))
        return image, size

    def keep(rgb: Image.Image) -> Image.Image:
        kept.enter_context(budget.hold(rgb_bytes(rgb.size), stage, wait=False))
        return rgb

    return decode_in_process(data, judge.images, None, keep)


def _held(frames: list[ClipFrame], kept: contextlib.ExitStack) -> Iterator[ClipFrame]:
    """Yield the frames of ``frames`` (emptied as it goes); once the road has made the regions of
    one, its pixels are dropped and ``kept`` (their share of the decode memory) is released."""
    try:
        while frames:
            frame = frames.pop(0)
            yield frame
            del frame
    finally:
        kept.close()


def _animation_frames(
    judge: Judge, data: bytes, sha: str, budget: Budget, thumbs: Thumbnails
) -> Iterator[ClipFrame]:
    """The sampled frames of an animated image, sampled like a video's (count and side)."""
    videos = judge.videos
    if judge.images.decode_processes > 0:
        from worker.inference.images.decode_pool import run_isolated

        sampled: Iterable[AnimationFrame] = run_isolated(
            judge.images, list_animation_frames, data, judge.images, videos.frames, videos.frame_side
        )
    else:
        sampled = animation_frames(data, judge.images, videos.frames, videos.frame_side, budget.check)
    try:
        for frame in sampled:
            with budget.hold(rgb_bytes(frame.image.size), "animation frames"):
                thumbs.add(frame.t, frame.image)
                yield ClipFrame(frame.t, frame.size, f"{sha}@{frame.t!r}", image=frame.image)
    except DfscanError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            "animation too large: out of memory while decoding a frame", limit="decode_memory"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, EOFError, ... on a broken frame
        raise CorruptImageError(f"corrupt animation frame: {type(exc).__name__}: {exc}") from exc


def judge_frames(
    judge: Judge,
    frames: Iterable[ClipFrame],
    source: str,
    facts: dict[str, object],
    budget: Budget,
    observe: Observe | None,
    *,
    clip: bool,
) -> Verdict:
    """An image (one frame) or an animated image (``clip``: sampled frames) down the region road."""
    priority = BACKGROUND if clip else FOREGROUND
    started = time.perf_counter()
    second: list[tuple[Future[float], bool]] = []  # the second model's future, and whether it was new
    frames_second = ClipSecond()  # an animated image's: its sampled frames, each judged whole
    if judge.second is not None and not clip:
        frames = with_second(
            frames,
            budget,
            second,
            judge.second,
            lambda key, pixels: judge._score(key, pixels, FOREGROUND, model=SECOND),
        )
    elif judge.second is not None:
        frames = judge._second_per_frame(frames, budget, frames_second, BACKGROUND)
    second_score: float | None = None
    try:
        scored = score_clip(
            frames,
            judge.classifier.preprocess,
            lambda region: judge._score(region.key, region.pixels, priority),
            budget,
            faces=judge.faces,
            find=None if judge.faces is None else lambda image: judge._find_faces(image, priority),
            max_in_flight=judge.videos.in_flight if clip else None,
            timeout=MODEL_TIMEOUT_S,
            observe=observe,
            explain=judge._heatmap if judge.explain else None,
            clip=clip,
        )
        with budget.waiting():
            if second:
                second_score = float(second[0][0].result(timeout=MODEL_TIMEOUT_S))
            elif frames_second.futures:
                second_score = frames_second.score(MODEL_TIMEOUT_S)
    except Exception as exc:
        return judge._failed(source, exc, **facts, infer_ms=ms(started))
    if judge.faces is not None:
        facts["detect_ms"] = scored.detect_ms
    facts.update(face_counts(scored))
    facts["infer_ms"] = scored.total_ms - scored.detect_ms
    if clip:  # an animated image: its frames (media "image": no duration or peak time is stored)
        facts["frames"] = timeline(scored)
    if scored.fake_score is None:  # require, and no face: nothing was judged
        return judge._not_applicable(source, **facts)
    faces = () if clip else tuple(scored.frames[0].faces)
    if judge.explain:
        facts["explanation"] = tuple(scored.heatmaps)
    if second_score is not None:
        facts["second_opinion"] = judge._opinion(scored.fake_score, second_score)
    return judge._done(
        source,
        scored.fake_score,
        cached=scored.cached and not (second and second[0][1]) and frames_second.cached,
        judged_on=FACES if scored.on_faces else IMAGE,
        faces=faces,
        **facts,  # type: ignore[arg-type]
    )
