"""The sampling plan of a video: which frames to decode, from which keyframes (pure, no FFmpeg).

Chosen by measurement (``bench/video.py``): ``frames`` targets spread evenly over the duration (or ``fps``
per second). A keyframe within a quarter of the target spacing stands in for a target (one frame decoded);
other targets are decoded exactly. Runs of frames to decode are merged: the decoder seeks to the keyframe
before a target only when that keyframe lies past the frames it has already decoded, otherwise it decodes
forward. So the plan never decodes more frames than decoding the whole file straight through, nor more
than independent frame-exact seeks. The number of frames it decodes (:func:`decode_cost`) is known before
decoding starts, which is what the decode budget of :mod:`worker.inference.video.decode` is checked against.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["Index", "Run", "decode_cost", "plan_runs", "targets", "tolerance"]


@dataclass
class Index:
    pts: list[int]  # presentation timestamps, ascending (stream time base); frame ordinals when sequential
    key: list[bool]  # keyframe flag per entry of pts
    time_base: Fraction
    start: int
    end: int  # pts just after the last frame
    # True when the timestamps cannot tell frames apart (many packets share one: zeroed durations): frames
    # are then told apart by their order, decoded in one pass from the start, and timed evenly over the
    # declared duration.
    sequential: bool = False


@dataclass
class Run:
    seek_pts: int
    wanted: list[int] = field(default_factory=list)


def targets(index: Index, frames: int, fps: float | None, max_samples: int) -> list[int]:
    """Indices (into index.pts) of the frames nearest to evenly spread target times, deduplicated."""
    duration = float((index.end - index.start) * index.time_base)
    count = max(1, math.ceil(duration * fps)) if fps is not None else frames
    count = max(1, min(count, max_samples, len(index.pts)))
    span = index.end - index.start
    picks: list[int] = []
    for i in range(count):
        target = index.start + (i + 0.5) * span / count
        j = bisect.bisect_left(index.pts, target)
        if j > 0 and (j == len(index.pts) or target - index.pts[j - 1] <= index.pts[j] - target):
            j -= 1
        if not picks or picks[-1] != j:
            picks.append(j)
    return picks


def tolerance(index: Index, count: int) -> float:
    """How far (in pts units) a keyframe may be from a target and still stand in for it."""
    return (index.end - index.start) / max(count, 1) / 4


def plan_runs(pts: list[int], key: list[bool], wanted: list[int], *, tolerance: float) -> list[Run]:
    """Group the wanted frame indices into decode runs, each starting with a seek to a keyframe.

    A keyframe within ``tolerance`` of a wanted frame replaces it. A wanted frame whose keyframe lies at or
    before the last frame the current run decodes joins that run (decoding forward is cheaper than a seek
    back to the same keyframe); otherwise a new run seeks to its keyframe.
    """
    keys = [i for i, k in enumerate(key) if k]
    runs: list[Run] = []
    last_end = -1  # index of the last frame the current run decodes
    chosen: list[int] = []
    for j in wanted:
        k = keys[bisect.bisect_right(keys, j) - 1] if keys and keys[0] <= j else 0
        nearest = _nearest_key(keys, j, pts)
        if nearest is not None and abs(pts[nearest] - pts[j]) <= tolerance:
            j = nearest
            k = nearest
        if chosen and j <= chosen[-1]:
            continue  # two targets fell on the same frame
        chosen.append(j)
        if runs and k <= last_end:
            runs[-1].wanted.append(pts[j])
        else:
            runs.append(Run(seek_pts=pts[k], wanted=[pts[j]]))
        last_end = max(last_end, j)
    return runs


def _nearest_key(keys: list[int], j: int, pts: list[int]) -> int | None:
    if not keys:
        return None
    at = bisect.bisect_left(keys, j)
    best = [keys[i] for i in (at - 1, at) if 0 <= i < len(keys)]
    return min(best, key=lambda k: abs(pts[k] - pts[j]))


def decode_cost(pts: list[int], runs: list[Run]) -> int:
    """Frames the plan decodes: from each run's keyframe to its last wanted frame (presentation order)."""
    position = {p: i for i, p in enumerate(pts)}
    return sum(position[max(r.wanted)] - position[r.seek_pts] + 1 for r in runs)
