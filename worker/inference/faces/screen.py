"""Which detected faces are judged, and why the others are not: every face the detector returns is
either judged or counted under one reason, so no face is dropped silently.

:func:`choose_faces` applies, in this order, to the detector's output (each face is counted under the
first reason that applies):

1. ``low_score``: the detector's confidence is under ``min_score`` (``DFSCAN_MIN_FACE_SCORE``);
2. ``implausible``: its five landmarks (when the detector gives them) do not sit like a face's
   (:func:`plausible`: eyes swapped or together, the mouth above the eyes, the nose off the midface);
3. ``too_small``: its shorter side is under ``min_face_px`` (``DFSCAN_MIN_FACE_PX``);
4. ``over_cap``: more than ``max_faces`` (``DFSCAN_MAX_FACES``) remain; the largest are judged (ties:
   higher score, then top-left first), the rest are counted here.

The screens work on the detector's output, whatever the detector (``DFSCAN_FACE_DETECTOR``); a
detector without landmarks is screened by score and size only. The rules and the defaults are measured
by ``bench/real_faces.py`` on real photographs (docs/faces-and-video.md, "Which faces are judged").

Pure: the standard library only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.inference.faces.crops import Face, select_faces

LOW_SCORE = "low_score"
IMPLAUSIBLE = "implausible"
TOO_SMALL = "too_small"
OVER_CAP = "over_cap"
REASONS = (LOW_SCORE, IMPLAUSIBLE, TOO_SMALL, OVER_CAP)

# The eyes are at least this far apart (a fraction of the box's width): a profile still shows ~0.15.
_MIN_EYE_SPAN = 0.08


@dataclass(frozen=True)
class FaceCounts:
    """How many faces the detector found in a frame (or all frames of a clip), how many were judged,
    and the rest by reason (:data:`REASONS`; only reasons with a count)."""

    found: int = 0
    judged: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: FaceCounts) -> FaceCounts:
        total = Counter(self.skipped)
        total.update(other.skipped)
        return FaceCounts(self.found + other.found, self.judged + other.judged, _ordered(total))


@dataclass(frozen=True)
class FaceChoice:
    """The faces to judge (largest first) and the counts of the frame."""

    chosen: list[Face]
    counts: FaceCounts


def plausible(face: Face) -> bool:
    """Whether ``face``'s landmarks sit like a face's: the eyes apart and above the mouth corners, the
    left eye left of the right one (and the mouth's corners likewise), the nose between the eyes' and
    the mouth's heights. True for a face without landmarks.

    The points are not required to lie in the box: a face cut by the image's border has its box clipped
    to the image and its points beyond it (measured: every border-cut face of bench/real_faces.py)."""
    if face.landmarks is None or len(face.landmarks) != 5:
        return True
    w = face.box[2]
    (lex, ley), (rex, rey), (_, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    return (
        rex - lex >= _MIN_EYE_SPAN * w
        and rmx > lmx
        and max(ley, rey) < min(lmy, rmy)
        and min(ley, rey) < ny < max(lmy, rmy)
    )


def choose_faces(
    faces: Sequence[Face], *, max_faces: int, min_face_px: int, min_score: float = 0.0
) -> FaceChoice:
    """The faces of one frame to judge and the counts (see the module docstring for the order)."""
    skipped: Counter[str] = Counter()
    kept: list[Face] = []
    for face in faces:
        if face.score < min_score:
            skipped[LOW_SCORE] += 1
        elif not plausible(face):
            skipped[IMPLAUSIBLE] += 1
        elif face.side < min_face_px:
            skipped[TOO_SMALL] += 1
        else:
            kept.append(face)
    chosen = select_faces(kept, max_faces, 0)
    if len(kept) > len(chosen):
        skipped[OVER_CAP] += len(kept) - len(chosen)
    return FaceChoice(chosen, FaceCounts(len(faces), len(chosen), _ordered(skipped)))


def _ordered(counts: Mapping[str, int]) -> dict[str, int]:
    return {reason: counts[reason] for reason in REASONS if counts.get(reason)}
