"""Reading outcomes: per-submission counts, result rows, and the invariant checker.

:func:`check_submission` is what the fault scenarios assert on: after killing workers, stopping
Redis or Postgres, every submitted job must end done with exactly one verdict, or failed with a code;
nothing lost, nothing duplicated, no job tried more often than allowed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from db.models import JOB_STATES, ScanJob, Submission, VerdictFace, VerdictFrame, VerdictHash, VerdictRow
from dfscan.exceptions import UnknownIdError
from dfscan.verdicts import STORED, VIDEO, FrameHash, Verdict


@dataclass(frozen=True)
class ResultRow:
    """One job and its outcome: ``verdict`` carries the source, the job's state and, once the job is
    done, its stored verdict (``dfscan.verdicts.Verdict``, the same type the judge returns)."""

    job_id: uuid.UUID
    submission_id: uuid.UUID
    seq: int
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    verdict: Verdict

    @property
    def source(self) -> str:
        return self.verdict.source

    @property
    def status(self) -> str:
        return self.verdict.status

    @property
    def label(self) -> str | None:
        return self.verdict.label

    @property
    def fake_score(self) -> float | None:
        return self.verdict.fake_score

    @property
    def model_version(self) -> str | None:
        return self.verdict.model_version

    @property
    def threshold(self) -> float | None:
        return self.verdict.threshold

    @property
    def image_sha256(self) -> str | None:
        return self.verdict.image_sha256

    @property
    def error_code(self) -> str | None:
        return self.verdict.error_code

    @property
    def error(self) -> str | None:
        return self.verdict.error

    def output(self) -> dict[str, Any]:
        """The public JSON object of this job (what `dfscan results --format json` prints)."""
        return {
            "job_id": self.job_id,
            "submission_id": self.submission_id,
            "seq": self.seq,
            **self.verdict.output(),
            "attempts": self.attempts,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


# Tenants: every reading function takes ``tenant_id``. The HTTP API always passes the caller's tenant, so
# another tenant's rows are never read (they look like ids that do not exist); None reads every tenant,
# for callers inside the trust boundary (ScanClient, the CLI, the invariant checker).


def _of_tenant(query: Any, tenant_id: uuid.UUID | None) -> Any:
    return query if tenant_id is None else query.where(ScanJob.tenant_id == tenant_id)


def get_submission(
    session: Session, submission_id: uuid.UUID, *, tenant_id: uuid.UUID | None
) -> Submission | None:
    """The submission, if it exists and belongs to ``tenant_id`` (None: any tenant)."""
    query = select(Submission).where(Submission.id == submission_id)
    if tenant_id is not None:
        query = query.where(Submission.tenant_id == tenant_id)
    return session.scalars(query).one_or_none()


def submission_counts(
    session: Session, submission_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
) -> dict[str, int]:
    """Jobs of the submission per state, every state present (0 if none), plus ``total``."""
    query = select(ScanJob.state, func.count()).where(ScanJob.submission_id == submission_id)
    rows = session.execute(_of_tenant(query, tenant_id).group_by(ScanJob.state)).all()
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in rows:
        counts[state] = n
    counts["total"] = sum(counts[state] for state in JOB_STATES)
    return counts


def results(
    session: Session,
    *,
    submission_id: uuid.UUID | None = None,
    label: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    job_ids: Sequence[uuid.UUID] | None = None,
    tenant_id: uuid.UUID | None = None,
) -> list[ResultRow]:
    """Jobs with their verdicts, in submission order (by ``seq`` within one submission).

    ``label`` keeps done jobs with that label; ``since`` keeps jobs finished at or after it;
    ``job_ids`` keeps those jobs; ``tenant_id`` that tenant's jobs.
    """
    query = select(ScanJob, VerdictRow).outerjoin(VerdictRow, VerdictRow.job_id == ScanJob.id)
    query = _of_tenant(query, tenant_id)
    if job_ids is not None:
        query = query.where(ScanJob.id.in_(list(job_ids)))
        # Read inside the transaction that just finished them (webhooks): rows the session already
        # holds must show their new state.
        query = query.execution_options(populate_existing=True)
    if submission_id is not None:
        query = query.where(ScanJob.submission_id == submission_id)
    if label is not None:
        query = query.where(VerdictRow.label == label)
    if since is not None:
        query = query.where(ScanJob.finished_at >= since)
    query = query.order_by(ScanJob.created_at, ScanJob.submission_id, ScanJob.seq)
    if limit is not None:
        query = query.limit(limit)
    return _rows(session, list(session.execute(query)))


@dataclass(frozen=True)
class Page:
    """One page of :func:`page`: its rows, newest first, and the cursor of the next page (None: last)."""

    rows: list[ResultRow]
    next_cursor: uuid.UUID | None


def page(
    session: Session,
    *,
    submission_id: uuid.UUID | None = None,
    label: str | None = None,
    since: datetime | None = None,
    client_ref: str | None = None,
    error_code: str | None = None,
    limit: int = 100,
    cursor: uuid.UUID | None = None,
    tenant_id: uuid.UUID | None = None,
) -> Page:
    """Jobs with their verdicts, newest submission first (a submission's jobs in source order), at
    most ``limit``; ``cursor`` (the ``next_cursor`` of the page before: the id of its last job)
    continues after that job, so pages neither skip nor repeat rows while new jobs arrive.

    ``client_ref`` and ``error_code`` keep jobs with that reference or failure code; ``label`` and
    ``since`` as in :func:`results`; ``tenant_id`` keeps that tenant's jobs (a cursor from another tenant
    is UNKNOWN_ID). An unknown cursor is UNKNOWN_ID.
    """
    query = select(ScanJob, VerdictRow).outerjoin(VerdictRow, VerdictRow.job_id == ScanJob.id)
    query = _of_tenant(query, tenant_id)
    if submission_id is not None:
        query = query.where(ScanJob.submission_id == submission_id)
    if label is not None:
        query = query.where(VerdictRow.label == label)
    if since is not None:
        query = query.where(ScanJob.finished_at >= since)
    if client_ref is not None:
        query = query.where(ScanJob.client_ref == client_ref)
    if error_code is not None:
        query = query.where(ScanJob.error_code == error_code)
    if cursor is not None:
        anchor = session.execute(
            _of_tenant(
                select(ScanJob.created_at, ScanJob.submission_id, ScanJob.seq).where(ScanJob.id == cursor),
                tenant_id,
            )
        ).first()
        if anchor is None:
            raise UnknownIdError(f"no job {cursor}: the cursor must be a job id from an earlier page")
        # Compare with the anchor row's own stored values (a subquery), not a Python copy: SQLite
        # keeps timestamps as text in its own format.
        of = select(ScanJob).where(ScanJob.id == cursor).subquery("anchor")
        at, sub, seq = (
            select(column).scalar_subquery() for column in (of.c.created_at, of.c.submission_id, of.c.seq)
        )
        query = query.where(
            or_(
                ScanJob.created_at < at,
                and_(
                    ScanJob.created_at == at,
                    or_(ScanJob.submission_id < sub, and_(ScanJob.submission_id == sub, ScanJob.seq > seq)),
                ),
            )
        )
    query = query.order_by(ScanJob.created_at.desc(), ScanJob.submission_id.desc(), ScanJob.seq).limit(
        limit + 1
    )
    pairs = list(session.execute(query))
    more = len(pairs) > limit
    rows = _rows(session, pairs[:limit])
    return Page(rows, rows[-1].job_id if more and rows else None)


def _rows(session: Session, pairs: list[Any]) -> list[ResultRow]:
    faces = faces_of(session, [v.job_id for _, v in pairs if v is not None and v.judged_on == "faces"])
    videos = [job.id for job, verdict in pairs if verdict is not None and verdict.media == VIDEO]
    frames = verdict_frames(session, videos)
    hashed = _hashes_of(session, [job.id for job, verdict in pairs if verdict is not None])
    return [
        _row(job, verdict, faces.get(job.id, []), frames.get(job.id), hashed.get(job.id, ()))
        for job, verdict in pairs
    ]


def _row(
    job: ScanJob,
    verdict: VerdictRow | None,
    faces: list[dict[str, Any]] | None = None,
    frames: list[tuple[Any, ...]] | None = None,
    hashes: Sequence[FrameHash] = (),
) -> ResultRow:
    stored = None if verdict is None else {name: getattr(verdict, name) for name in STORED}
    return ResultRow(
        job_id=job.id,
        submission_id=job.submission_id,
        seq=job.seq,
        attempts=job.attempts,
        created_at=job.created_at,
        finished_at=job.finished_at,
        verdict=Verdict.from_stored(
            source=job.source,
            status=job.state,
            error_code=job.error_code,
            error=job.error_message,
            row=stored,
            faces=faces or (),
            frames=frames,
            hashes=hashes,
        ),
    )


def _hashes_of(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FrameHash]]:
    """The stored perceptual hashes of these jobs' verdicts, in frame order."""
    out: dict[uuid.UUID, list[FrameHash]] = {}
    if not job_ids:
        return out
    query = (
        select(VerdictHash.job_id, VerdictHash.t, VerdictHash.pdq, VerdictHash.quality)
        .where(VerdictHash.job_id.in_(sorted(set(job_ids))))
        .order_by(VerdictHash.job_id, VerdictHash.seq)
    )
    for job_id, t, pdq, quality in session.execute(query):
        out.setdefault(job_id, []).append(FrameHash(t, bytes(pdq).hex(), quality))
    return out


def faces_of(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """The stored faces of these jobs' verdicts, largest first: ``{"box": [x, y, w, h], "score", "fake_score"}``."""
    out: dict[uuid.UUID, list[dict[str, Any]]] = {}
    if not job_ids:
        return out
    query = (
        select(VerdictFace)
        .where(VerdictFace.job_id.in_(sorted(set(job_ids))))
        .order_by(VerdictFace.job_id, VerdictFace.seq)
    )
    for face in session.scalars(query):
        out.setdefault(face.job_id, []).append(
            {"box": [face.x, face.y, face.w, face.h], "score": face.score, "fake_score": face.fake_score}
        )
    return out


def verdict_frames(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[Any, ...]]]:
    """The stored frames of these jobs' video verdicts as (t_seconds, fake_score) in time order, per job
    (jobs without frames are absent); (t_seconds, fake_score, faces) for a frame judged on faces."""
    out: dict[uuid.UUID, list[tuple[Any, ...]]] = {}
    if not job_ids:
        return out
    query = (
        select(VerdictFrame.job_id, VerdictFrame.t, VerdictFrame.fake_score, VerdictFrame.faces)
        .where(VerdictFrame.job_id.in_(sorted(set(job_ids))))
        .order_by(VerdictFrame.job_id, VerdictFrame.seq)
    )
    for job_id, t, score, faces in session.execute(query):
        frame = (float(t), float(score), faces) if faces else (float(t), float(score))
        out.setdefault(job_id, []).append(frame)
    return out


@dataclass
class CheckReport:
    """What happened to every job of one submission. ``ok`` when nothing is lost or duplicated.

    - ``submitted``: jobs the submission promised (``n_jobs``);
    - ``done``: done with exactly one verdict; ``failed``: failed with an error code;
    - ``lost``: job ids not final, done without a verdict, or failed without a code; plus
      ``missing_seqs``, positions with no job row at all;
    - ``duplicated``: job ids with more than one verdict, or a verdict on a job that is not done;
    - ``over_attempts``: job ids tried more than ``max_attempts`` times.
    """

    submission_id: uuid.UUID
    submitted: int
    done: int = 0
    failed: int = 0
    lost: list[uuid.UUID] = field(default_factory=list)
    missing_seqs: list[int] = field(default_factory=list)
    duplicated: list[uuid.UUID] = field(default_factory=list)
    over_attempts: list[uuid.UUID] = field(default_factory=list)
    failed_codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.missing_seqs or self.duplicated or self.over_attempts)

    def summary(self) -> str:
        return (
            f"submission {self.submission_id}: submitted={self.submitted} done={self.done} "
            f"failed={self.failed} lost={len(self.lost) + len(self.missing_seqs)} "
            f"duplicated={len(self.duplicated)} over_attempts={len(self.over_attempts)}"
        )


def check_submission(session: Session, submission_id: uuid.UUID, *, max_attempts: int) -> CheckReport:
    """Check every invariant of one submission's jobs and verdicts (see :class:`CheckReport`)."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise UnknownIdError(f"no submission {submission_id}")
    report = CheckReport(submission_id=submission_id, submitted=submission.n_jobs)
    verdict_counts = (
        select(VerdictRow.job_id, func.count().label("n"))
        .group_by(VerdictRow.job_id)
        .subquery("verdict_counts")
    )
    rows = session.execute(
        select(
            ScanJob.id, ScanJob.seq, ScanJob.state, ScanJob.error_code, ScanJob.attempts, verdict_counts.c.n
        )
        .outerjoin(verdict_counts, verdict_counts.c.job_id == ScanJob.id)
        .where(ScanJob.submission_id == submission_id)
        .order_by(ScanJob.seq)
    ).all()
    seen: set[int] = set()
    for job_id, seq, state, error_code, attempts, n_verdicts in rows:
        seen.add(seq)
        n_verdicts = n_verdicts or 0
        if n_verdicts > 1 or (n_verdicts and state != "done"):
            report.duplicated.append(job_id)
        if state == "done" and n_verdicts == 1:
            report.done += 1
        elif state == "failed" and error_code is not None:
            report.failed += 1
            report.failed_codes[error_code] = report.failed_codes.get(error_code, 0) + 1
        elif state == "done" and n_verdicts > 1:
            pass  # finished, and already counted as duplicated above
        else:
            report.lost.append(job_id)
        if attempts > max_attempts:
            report.over_attempts.append(job_id)
    report.missing_seqs = [seq for seq in range(submission.n_jobs) if seq not in seen]
    return report
