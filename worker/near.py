"""The near-duplicate look-up of a worker (or of ``dfscan scan``, the API): an in-memory exact index over
every stored verdict hash and bank entry, kept in step with Postgres.

- **Rebuilt at start**: the first look-up reads every row (in id order, in pages).
- **Updated as rows arrive**: before a look-up (at most every ``refresh_s`` seconds) the rows with an id
  above the watermark are read and added, from ``verdict_hashes`` and ``bank_entries``, and the banks'
  settings (enabled, shared, forced label) are read again. Concurrent look-ups share a refresh: one that
  began after a look-up was asked for serves it (it sees every row committed before the look-up began),
  so a busy worker reads the tables once per group of look-ups, not once per image. Many workers each keep their own copy; they agree
  because each reads the same tables.
- **Correct with concurrent writers**: ids come from a sequence, and a transaction that took a lower id can
  commit after one that took a higher id. The watermark is therefore the highest id *below which nothing is
  missing*: ids above it already seen are remembered, and a hole is waited for (read again on each refresh)
  for ``gap_timeout_s`` before it is taken for a rolled-back insert.

Deleting entries is not followed (a bank is disabled instead; disabling takes effect on the next refresh).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from db import hashes
from db.models import HashBank
from dfscan.hashindex import HashIndex
from dfscan.verdicts import BankMatch
from worker.inference.hashing.pdq import MediaHash, Near, NearPolicy, Pdq, frame_share

log = logging.getLogger(__name__)

_PAGE = 100_000


@dataclass
class Watermark:
    """The highest id below which every row has been read, and the ids above it read already."""

    gap_timeout_s: float = 60.0
    low: int = 0
    seen: set[int] = field(default_factory=set)
    holes: dict[int, float] = field(default_factory=dict)  # id -> when first missed

    def fresh(self, ids: list[int]) -> list[int]:
        """Which of ``ids`` (read above ``low``) are new; notes them as read."""
        new = [i for i in ids if i > self.low and i not in self.seen]
        self.seen.update(new)
        return new

    def advance(self, now: float) -> None:
        """Move ``low`` up over read ids and over holes older than the timeout."""
        if not self.seen:
            return
        top = max(self.seen)
        for i in range(self.low + 1, top):
            if i not in self.seen:
                self.holes.setdefault(i, now)
        while self.low + 1 <= top:
            nxt = self.low + 1
            if nxt in self.seen:
                self.seen.discard(nxt)
            elif now - self.holes.get(nxt, now) >= self.gap_timeout_s:
                log.debug("hash row id %d never appeared: taken as rolled back", nxt)
            else:
                break
            self.holes.pop(nxt, None)
            self.low = nxt


@dataclass(frozen=True)
class _VerdictMeta:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    model_version: str


class NearIndex:
    """Every verdict hash and bank entry, searched exactly (dfscan/hashindex.py); see the module docstring."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        policy: NearPolicy | None = None,
        *,
        reuse: bool = True,
        refresh_s: float = 0.0,
        gap_timeout_s: float = 60.0,
    ) -> None:
        self.sessions = sessions
        self.policy = policy or NearPolicy()
        self.reuse = reuse
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._verdicts = HashIndex()
        self._entries = HashIndex()
        self._verdict_meta: dict[int, _VerdictMeta] = {}
        self._clips: dict[uuid.UUID, list[Pdq]] = {}  # a clip's frames, for vPDQ's frame shares
        self._entry_meta: dict[int, tuple[int, str]] = {}  # entry id -> (bank id, id in the bank)
        self._banks: dict[int, HashBank] = {}
        self._marks = (Watermark(gap_timeout_s), Watermark(gap_timeout_s))
        self._refreshed = float("-inf")  # when the last finished refresh began

    # --- keeping in step ---------------------------------------------------------------------------

    def refresh(self, *, force: bool = False, since: float | None = None) -> None:
        """Read what arrived since the last refresh (everything, the first time). A refresh that began
        after this call did (another thread's, finished while this one waited for the lock) serves it;
        ``since`` (a ``time.monotonic()`` reading) asks only for one that began at or after that moment."""
        asked = time.monotonic() if since is None else since
        with self._lock:
            if not force and (asked - self._refreshed < self.refresh_s or self._refreshed >= asked):
                return
            now = time.monotonic()
            with self.sessions() as session:
                self._banks = {bank.id: bank for bank in hashes.all_banks(session)}
                for bank in self._banks.values():
                    session.expunge(bank)
                self._read_verdicts(session, now)
                self._read_entries(session, now)
            self._refreshed = now

    def _read_verdicts(self, session: Session, now: float) -> None:
        mark = self._marks[0]
        while True:
            rows = hashes.verdict_hashes_after(session, mark.low, _PAGE)
            new = set(mark.fresh([row.id for row in rows]))
            keep = [r for r in rows if r.id in new and r.quality >= self.policy.quality_floor]
            for r in keep:
                self._verdict_meta[r.id] = _VerdictMeta(r.job_id, r.tenant_id, r.model_version)
                if _is_clip(r.media, r.model_version):
                    self._clips.setdefault(r.job_id, []).append(Pdq(bytes(r.pdq), r.quality, r.t))
            self._verdicts.add([bytes(r.pdq) for r in keep], [r.id for r in keep])
            before = mark.low
            mark.advance(now)
            if len(rows) < _PAGE or mark.low == before:
                return

    def _read_entries(self, session: Session, now: float) -> None:
        mark = self._marks[1]
        while True:
            rows = hashes.bank_entries_after(session, mark.low, _PAGE)
            new = set(mark.fresh([row.id for row in rows]))
            keep = [
                r
                for r in rows
                if r.id in new and (r.quality is None or r.quality >= self.policy.quality_floor)
            ]
            for r in keep:
                self._entry_meta[r.id] = (r.bank_id, r.external_id or str(r.id))
            self._entries.add([bytes(r.pdq) for r in keep], [r.id for r in keep])
            before = mark.low
            mark.advance(now)
            if len(rows) < _PAGE or mark.low == before:
                return

    @property
    def size(self) -> tuple[int, int]:
        """(verdict hashes, bank entries) indexed."""
        return len(self._verdicts), len(self._entries)

    # --- matching --------------------------------------------------------------------------------

    def similar(
        self, hashed: MediaHash, version: str, tenant_id: uuid.UUID, *, since: float | None = None
    ) -> Near | None:
        """What ``hashed`` matches for ``tenant_id``: its own verdicts of ``version`` (reused unless
        reuse is off) and the enabled banks it owns or that are shared. None when nothing matched.
        ``since``: the index must hold every row committed before that moment (default: before this call;
        a worker passes the moment it claimed the job, so a batch of jobs shares one refresh)."""
        self.refresh(since=since)
        good = [f for f in hashed.frames if f.quality >= self.policy.quality_floor]
        if not good:
            return None
        # a clip: every good frame; an image: the upright hash and its 7 dihedral variants
        queries = [f.bits for f in good] if hashed.video else [good[0].bits, *hashed.variants]
        with self._lock:
            verdict_hits = self._verdicts.search(queries, self.policy.distance)
            entry_hits = self._entries.search(queries, self.policy.distance)
            banks = dict(self._banks)
            matches, force = self._bank_matches(entry_hits, banks, tenant_id)
            own = self._own_match(hashed, good, verdict_hits, version, tenant_id)
        if own is None and not matches:
            return None
        stored = None
        if own is not None and self.reuse:
            with self.sessions() as session:
                stored = hashes.stored_by_job(session, [own[0]]).get(own[0])
        return Near(
            of=str(own[0]) if own is not None and stored is not None else None,
            distance=own[1] if own is not None and stored is not None else None,
            stored=stored,
            matches=matches,
            force_label=force,
        )

    def match(
        self, hashed: MediaHash, tenant_id: uuid.UUID
    ) -> tuple[tuple[BankMatch, ...], list[tuple[uuid.UUID, int]]]:
        """Match without judging (the API): the bank entries ``hashed`` matches for ``tenant_id``, and the
        tenant's own verdicts within the distance, of any model version, as (job id, distance), nearest
        first. A hash under the quality floor matches nothing."""
        self.refresh()
        good = [f for f in hashed.frames if f.quality >= self.policy.quality_floor]
        if not good:
            return (), []
        queries = [f.bits for f in good] if hashed.video else [good[0].bits, *hashed.variants]
        with self._lock:
            verdict_hits = self._verdicts.search(queries, self.policy.distance)
            entry_hits = self._entries.search(queries, self.policy.distance)
            matches, _force = self._bank_matches(entry_hits, dict(self._banks), tenant_id)
            jobs: dict[uuid.UUID, int] = {}
            for per_query in verdict_hits:
                for row_id, distance in per_query:
                    meta = self._verdict_meta[row_id]
                    if meta.tenant_id == tenant_id:
                        jobs[meta.job_id] = min(distance, jobs.get(meta.job_id, distance))
        return matches, sorted(jobs.items(), key=lambda kv: (kv[1], str(kv[0])))

    def _bank_matches(
        self, hits: list[list[tuple[int, int]]], banks: dict[int, HashBank], tenant_id: uuid.UUID
    ) -> tuple[tuple[BankMatch, ...], str | None]:
        best: dict[int, int] = {}
        for per_query in hits:
            for entry_id, distance in per_query:
                best[entry_id] = min(distance, best.get(entry_id, distance))
        found: list[BankMatch] = []
        force: str | None = None
        for entry_id, distance in sorted(best.items(), key=lambda kv: (kv[1], kv[0])):
            bank_id, external_id = self._entry_meta[entry_id]
            bank = banks.get(bank_id)
            if bank is None or not bank.enabled or not (bank.shared or bank.tenant_id == tenant_id):
                continue
            found.append(BankMatch(bank.name, external_id, distance))
            if bank.force_label is not None and force != "fake":  # fake wins over real
                force = bank.force_label
        return tuple(found), force

    def _own_match(
        self,
        hashed: MediaHash,
        good: list[Pdq],
        hits: list[list[tuple[int, int]]],
        version: str,
        tenant_id: uuid.UUID,
    ) -> tuple[uuid.UUID, int] | None:
        """The tenant's own verdict of ``version`` that ``hashed`` repeats (job id, distance), nearest
        first; for a clip, by vPDQ's frame shares."""
        candidates: dict[uuid.UUID, int] = {}
        for per_query in hits:
            for row_id, distance in per_query:
                meta = self._verdict_meta[row_id]
                # the version also tells an image from an animation or a video (Judge.*_version)
                if meta.tenant_id != tenant_id or meta.model_version != version:
                    continue
                candidates[meta.job_id] = min(distance, candidates.get(meta.job_id, distance))
        if not hashed.video:
            if not candidates:
                return None
            job_id, distance = min(candidates.items(), key=lambda kv: (kv[1], str(kv[0])))
            return job_id, distance
        best: tuple[float, uuid.UUID, int] | None = None
        for job_id, distance in candidates.items():
            share = frame_share(
                tuple(good),
                tuple(self._clips.get(job_id, ())),
                self.policy.distance,
                self.policy.quality_floor,
            )
            if share.query_percent >= self.policy.video_percent and (
                best is None or share.query_percent > best[0]
            ):
                best = (share.query_percent, job_id, distance)
        return None if best is None else (best[1], best[2])


def _is_clip(media: str, model_version: str) -> bool:
    """Whether a verdict's hashes are a clip's frames: a video, or an animated image (its version names
    its sampling, ``+animation:``, see Judge.animation_version)."""
    return media == "video" or "+animation:" in model_version
