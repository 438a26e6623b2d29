"""Agreement between the model and its reviewers: pure functions over (model label, human decision) pairs.

A review's decision is one of :data:`DECISIONS`. Only ``fake`` and ``real`` are comparable with a model label;
``not_applicable`` (no face, not a photo, out of scope) and ``escalate`` (a person could not decide) are
counted beside the matrix, never as agreement or disagreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

FAKE, REAL, NOT_APPLICABLE, ESCALATE = "fake", "real", "not_applicable", "escalate"
DECISIONS = (FAKE, REAL, NOT_APPLICABLE, ESCALATE)
COMPARABLE = (FAKE, REAL)


@dataclass(frozen=True)
class Reviewed:
    """One reviewed verdict: the model's label and p(fake), the latest human decision and when it was made."""

    job_id: str
    model_label: str
    fake_score: float
    threshold: float
    decision: str
    decided_at: datetime


@dataclass(frozen=True)
class Confusion:
    """``cells[(model_label, decision)]`` counts, for model labels fake/real and every decision."""

    cells: dict[tuple[str, str], int]

    def count(self, model_label: str, decision: str) -> int:
        return self.cells.get((model_label, decision), 0)

    @property
    def comparable(self) -> int:
        return sum(self.count(m, d) for m in COMPARABLE for d in COMPARABLE)

    @property
    def disagreements(self) -> int:
        return self.count(FAKE, REAL) + self.count(REAL, FAKE)

    @property
    def disagreement_rate(self) -> float | None:
        """Disagreements over fake/real decisions; None when there is none to compare."""
        return self.disagreements / self.comparable if self.comparable else None


def confusion(items: Iterable[Reviewed]) -> Confusion:
    cells: dict[tuple[str, str], int] = {}
    for item in items:
        if item.decision not in DECISIONS:
            raise ValueError(f"unknown decision {item.decision!r}: choose from {', '.join(DECISIONS)}")
        key = (item.model_label, item.decision)
        cells[key] = cells.get(key, 0) + 1
    return Confusion(cells)


@dataclass(frozen=True)
class RatePoint:
    day: date
    comparable: int
    disagreements: int

    @property
    def rate(self) -> float:
        return self.disagreements / self.comparable


def disagreement_by_day(items: Iterable[Reviewed]) -> list[RatePoint]:
    """The disagreement rate per UTC day of the decision, oldest first; days with no fake/real decision are
    left out (a rate of nothing is not zero)."""
    by_day: dict[date, list[int]] = {}
    for item in items:
        if item.decision not in COMPARABLE:
            continue
        counts = by_day.setdefault(item.decided_at.date(), [0, 0])
        counts[0] += 1
        counts[1] += item.model_label != item.decision
    return [RatePoint(day, n, d) for day, (n, d) in sorted(by_day.items())]


def distance(item: Reviewed) -> float | None:
    """How far the model's p(fake) was from the human decision: 1 - p for fake, p for real; None otherwise."""
    if item.decision == FAKE:
        return 1.0 - item.fake_score
    if item.decision == REAL:
        return item.fake_score
    return None


def furthest(items: Sequence[Reviewed], limit: int = 20) -> list[tuple[Reviewed, float]]:
    """The reviewed items whose p(fake) was furthest from the decision, furthest first (ties: newest first)."""
    scored = [(item, d) for item in items if (d := distance(item)) is not None]
    scored.sort(key=lambda pair: (-pair[1], -pair[0].decided_at.timestamp()))
    return scored[:limit]
