"""Reviews: people's decisions on verdicts, and the queries of the review console.

Every query takes the tenant and puts it in its WHERE clause: a job of another tenant is simply not found
(the edges answer 404). The queue is a keyset page over ``ix_scan_jobs_review_queue`` (a tenant's done jobs
by ``(created_at, id)``), so a page costs the same at the first row and the millionth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, insert, or_, select
from sqlalchemy.orm import Session

from db import results
from db.models import (
    REVIEW_DECISIONS,
    Review,
    ScanJob,
    Submission,
    VerdictFace,
    VerdictPreview,
    VerdictRow,
    WebhookDelivery,
    utcnow,
)
from db.notifications import notify
from dfscan.webhooks import JOB_REVIEWED, parse_events, receiver_of

# "Near the threshold": |p(fake) - threshold| at most this. A tenth either side is where a small change of
# threshold or model flips the label, which is where a person's look is worth most.
NEAR_BAND = 0.1
LABEL_FILTERS = ("all", "fake", "near")
STATE_FILTERS = ("reviewed", "unreviewed")
MAX_NOTE = 2000


@dataclass(frozen=True)
class ReviewEntry:
    id: int
    job_id: uuid.UUID
    decision: str
    note: str | None
    api_key_id: uuid.UUID | None
    created_at: datetime

    def output(self) -> dict[str, Any]:
        """The ``review`` object of a job's JSON result."""
        return {
            "decision": self.decision,
            "note": self.note,
            "reviewer_key_id": str(self.api_key_id) if self.api_key_id else None,
            "reviewed_at": self.created_at.isoformat(),
        }


def _entry(row: Review) -> ReviewEntry:
    return ReviewEntry(row.id, row.job_id, row.decision, row.note, row.api_key_id, row.created_at)


def _tenant_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> ScanJob | None:
    return session.execute(
        select(ScanJob).where(ScanJob.id == job_id, ScanJob.tenant_id == tenant_id)
    ).scalar_one_or_none()


def record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    decision: str,
    note: str | None,
    api_key_id: uuid.UUID | None,
) -> ReviewEntry | None:
    """Store a decision on a done job of the tenant and write its ``job.reviewed`` webhook event in the same
    transaction. None: no such done job in this tenant (the edge answers 404)."""
    if decision not in REVIEW_DECISIONS:
        raise ValueError(f"unknown decision {decision!r}: choose from {', '.join(REVIEW_DECISIONS)}")
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE:
        raise ValueError(f"a note has at most {MAX_NOTE} characters, got {len(note)}")
    if note is not None and "\x00" in note:
        raise ValueError("a note cannot hold a NUL character")
    job = _tenant_job(session, tenant_id, job_id)
    if job is None or job.state != "done":
        return None
    row = Review(job_id=job_id, tenant_id=tenant_id, api_key_id=api_key_id, decision=decision, note=note)
    session.add(row)
    session.flush()
    entry = _entry(row)
    _record_event(session, job, entry)
    return entry


def _record_event(session: Session, job: ScanJob, entry: ReviewEntry) -> None:
    submission = session.get(Submission, job.submission_id)
    if submission is None or not submission.callback_url:
        return
    try:
        wanted = parse_events(submission.callback_events)
    except ValueError:
        wanted = ()
    if JOB_REVIEWED not in wanted:
        return
    from db.webhooks import _body  # one body format for every event

    now = utcnow()
    event_id = uuid.uuid4()
    data: dict[str, Any] = {
        "job_id": str(job.id),
        "submission_id": str(job.submission_id),
        "client_ref": job.client_ref,
    }
    data["review"] = entry.output()
    verdict = verdict_row(session, job.id)
    if verdict is not None:
        data.update(label=verdict.label, fake_score=verdict.fake_score, model_version=verdict.model_version)
    session.execute(
        insert(WebhookDelivery).values(
            id=event_id,
            submission_id=job.submission_id,
            job_id=job.id,
            event=JOB_REVIEWED,
            dedupe_key=f"{JOB_REVIEWED}:{entry.id}",
            url=submission.callback_url,
            receiver=receiver_of(submission.callback_url),
            body=_body(event_id, JOB_REVIEWED, data, now),
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    from db.webhooks import CHANNEL

    notify(session, CHANNEL)


def latest(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, ReviewEntry]:
    """The latest decision of each of these jobs (jobs never reviewed are absent)."""
    if not job_ids:
        return {}
    newest = (
        select(Review.job_id, func.max(Review.id).label("id"))
        .where(Review.job_id.in_(sorted(set(job_ids))))
        .group_by(Review.job_id)
        .subquery()
    )
    rows = session.scalars(select(Review).join(newest, Review.id == newest.c.id))
    return {row.job_id: _entry(row) for row in rows}


def history(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[ReviewEntry]:
    """Every decision on the job, newest first."""
    rows = session.scalars(
        select(Review)
        .where(Review.job_id == job_id, Review.tenant_id == tenant_id)
        .order_by(Review.id.desc())
    )
    return [_entry(row) for row in rows]


@dataclass(frozen=True)
class QueueFilters:
    label: str = "all"
    media: str | None = None
    client_ref: str | None = None
    model_version: str | None = None
    state: str | None = None

    def query_params(self) -> dict[str, str]:
        out = {"label": self.label}
        for name in ("media", "client_ref", "model_version", "state"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


@dataclass(frozen=True)
class QueueRow:
    job_id: uuid.UUID
    source: str
    client_ref: str | None
    media: str
    label: str
    fake_score: float | None
    threshold: float
    n_faces: int
    created_at: datetime
    decision: str | None
    image_sha256: str
    previewed: bool = False  # a stored preview (verdict_previews seq 0) can stand for the media


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    next_cursor: uuid.UUID | None


def _queue_query(tenant_id: uuid.UUID, filters: QueueFilters) -> Select[ScanJob, VerdictRow]:
    query = (
        select(ScanJob, VerdictRow)
        .join(VerdictRow, VerdictRow.job_id == ScanJob.id)
        .where(ScanJob.tenant_id == tenant_id, ScanJob.state == "done")
    )
    if filters.label == "fake":
        query = query.where(VerdictRow.label == "fake")
    elif filters.label == "near":
        query = query.where(func.abs(VerdictRow.fake_score - VerdictRow.threshold) <= NEAR_BAND)
    elif filters.label != "all":
        raise ValueError(f"unknown label filter {filters.label!r}: choose from {', '.join(LABEL_FILTERS)}")
    if filters.media:
        query = query.where(VerdictRow.media == filters.media)
    if filters.client_ref:
        query = query.where(ScanJob.client_ref == filters.client_ref)
    if filters.model_version:
        query = query.where(VerdictRow.model_version == filters.model_version)
    if filters.state:
        reviewed = exists().where(Review.job_id == ScanJob.id)
        if filters.state == "reviewed":
            query = query.where(reviewed)
        elif filters.state == "unreviewed":
            query = query.where(~reviewed)
        else:
            raise ValueError(
                f"unknown state filter {filters.state!r}: choose from {', '.join(STATE_FILTERS)}"
            )
    return query


def _anchor(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> tuple[datetime, uuid.UUID] | None:
    row = session.execute(
        select(ScanJob.created_at, ScanJob.id).where(ScanJob.id == job_id, ScanJob.tenant_id == tenant_id)
    ).first()
    return None if row is None else (row[0], row[1])


def queue(
    session: Session,
    tenant_id: uuid.UUID,
    filters: QueueFilters,
    *,
    limit: int = 50,
    cursor: uuid.UUID | None = None,
) -> QueuePage:
    """One page of the tenant's done jobs, newest first; ``cursor`` (a job id of this tenant, the last row of
    the page before) continues after it. An unknown cursor starts from the newest."""
    # Only the columns a row shows: loading whole ORM objects costs more than the indexed query itself.
    query = _queue_query(tenant_id, filters).with_only_columns(
        ScanJob.id,
        ScanJob.source,
        ScanJob.client_ref,
        ScanJob.created_at,
        VerdictRow.media,
        VerdictRow.label,
        VerdictRow.fake_score,
        VerdictRow.threshold,
        VerdictRow.image_sha256,
    )
    anchor = _anchor(session, tenant_id, cursor) if cursor is not None else None
    if anchor is not None:
        at, last = anchor
        query = query.where(or_(ScanJob.created_at < at, and_(ScanJob.created_at == at, ScanJob.id < last)))
    query = query.order_by(ScanJob.created_at.desc(), ScanJob.id.desc()).limit(limit + 1)
    found = list(session.execute(query))
    more = len(found) > limit
    found = found[:limit]
    ids = [row.id for row in found]
    faces = (
        dict(
            session.execute(
                select(VerdictFace.job_id, func.count())
                .where(VerdictFace.job_id.in_(ids))
                .group_by(VerdictFace.job_id)
            ).all()
        )
        if ids
        else {}
    )
    decisions = latest(session, ids)
    previewed = (
        set(
            session.scalars(
                select(VerdictPreview.job_id).where(VerdictPreview.job_id.in_(ids), VerdictPreview.seq == 0)
            )
        )
        if ids
        else set()
    )
    rows = [
        QueueRow(
            job_id=row.id,
            source=row.source,
            client_ref=row.client_ref,
            media=row.media,
            label=row.label,
            fake_score=row.fake_score,
            threshold=row.threshold,
            n_faces=int(faces.get(row.id, 0)),
            created_at=row.created_at,
            decision=decisions[row.id].decision if row.id in decisions else None,
            image_sha256=row.image_sha256,
            previewed=row.id in previewed,
        )
        for row in found
    ]
    return QueuePage(rows, rows[-1].job_id if more and rows else None)


def neighbours(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, filters: QueueFilters
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The (newer, older) jobs beside ``job_id`` in the queue with these filters (None at either end)."""
    anchor = _anchor(session, tenant_id, job_id)
    if anchor is None:
        return None, None
    at, this = anchor
    base = _queue_query(tenant_id, filters).with_only_columns(ScanJob.id)
    older = session.scalar(
        base.where(or_(ScanJob.created_at < at, and_(ScanJob.created_at == at, ScanJob.id < this)))
        .order_by(ScanJob.created_at.desc(), ScanJob.id.desc())
        .limit(1)
    )
    newer = session.scalar(
        base.where(or_(ScanJob.created_at > at, and_(ScanJob.created_at == at, ScanJob.id > this)))
        .order_by(ScanJob.created_at.asc(), ScanJob.id.asc())
        .limit(1)
    )
    return newer, older


def item(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> tuple[ScanJob, results.ResultRow] | None:
    """A done job of the tenant with its full stored result (faces, frames), or None."""
    job = _tenant_job(session, tenant_id, job_id)
    if job is None or job.state != "done":
        return None
    rows = results.results(session, job_ids=[job_id])
    return (job, rows[0]) if rows else None


def verdict_row(session: Session, job_id: uuid.UUID) -> VerdictRow | None:
    return session.execute(select(VerdictRow).where(VerdictRow.job_id == job_id)).scalar_one_or_none()


def preview_times(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, image_sha256: str, media: str
) -> tuple[uuid.UUID, list[tuple[int, float | None]]]:
    """The stored previews that show a verdict, as (job id, [(seq, t)...]): the job's own, else (a verdict
    answered from the duplicate cache decodes nothing) those of the newest done job of the same tenant
    that judged the same bytes as the same media; (job_id, []) when there are none."""
    own = session.execute(
        select(VerdictPreview.seq, VerdictPreview.t)
        .where(VerdictPreview.job_id == job_id)
        .order_by(VerdictPreview.seq)
    ).all()
    if own:
        return job_id, [(int(seq), t) for seq, t in own]
    donor = session.scalar(
        select(ScanJob.id)
        .join(VerdictRow, VerdictRow.job_id == ScanJob.id)
        .where(
            VerdictRow.image_sha256 == image_sha256,
            VerdictRow.media == media,
            ScanJob.tenant_id == tenant_id,
            ScanJob.state == "done",
            exists().where(VerdictPreview.job_id == ScanJob.id),
        )
        .order_by(ScanJob.created_at.desc())
        .limit(1)
    )
    if donor is None:
        return job_id, []
    rows = session.execute(
        select(VerdictPreview.seq, VerdictPreview.t)
        .where(VerdictPreview.job_id == donor)
        .order_by(VerdictPreview.seq)
    )
    return donor, [(int(seq), t) for seq, t in rows]


def size_of_bytes(
    session: Session, tenant_id: uuid.UUID, image_sha256: str, media: str
) -> tuple[int, int] | None:
    """The pixel size some done job of the tenant recorded for these bytes (a verdict answered from the
    duplicate cache decodes nothing and records none), or None."""
    row = session.execute(
        select(VerdictRow.width, VerdictRow.height)
        .join(ScanJob, ScanJob.id == VerdictRow.job_id)
        .where(
            VerdictRow.image_sha256 == image_sha256,
            VerdictRow.media == media,
            VerdictRow.width.is_not(None),
            VerdictRow.height.is_not(None),
            ScanJob.tenant_id == tenant_id,
            ScanJob.state == "done",
        )
        .limit(1)
    ).first()
    if row is None or row[0] is None or row[1] is None:
        return None
    return int(row[0]), int(row[1])


def preview(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, seq: int) -> bytes | None:
    """One stored preview's JPEG bytes, if the job is a done job of the tenant; else None."""
    return session.execute(
        select(VerdictPreview.jpeg)
        .join(ScanJob, ScanJob.id == VerdictPreview.job_id)
        .where(
            VerdictPreview.job_id == job_id,
            VerdictPreview.seq == seq,
            ScanJob.tenant_id == tenant_id,
            ScanJob.state == "done",
        )
    ).scalar_one_or_none()


@dataclass(frozen=True)
class Decided:
    job_id: uuid.UUID
    model_label: str
    fake_score: float | None  # None: the model said not_applicable (no face under DFSCAN_FACES=require)
    threshold: float
    media: str
    image_format: str | None
    image_sha256: str
    model_version: str
    decision: str
    decided_at: datetime


def decided(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
) -> list[Decided]:
    """The tenant's reviewed jobs with their latest decision (decided at or after ``since``), newest first."""
    newest = (
        select(Review.job_id, func.max(Review.id).label("id"))
        .where(Review.tenant_id == tenant_id)
        .group_by(Review.job_id)
        .subquery()
    )
    query = (
        select(Review, VerdictRow)
        .join(newest, Review.id == newest.c.id)
        .join(VerdictRow, VerdictRow.job_id == Review.job_id)
        .order_by(Review.created_at.desc(), Review.id.desc())
    )
    if model_version is not None:
        query = query.where(VerdictRow.model_version == model_version)
    if since is not None:
        query = query.where(Review.created_at >= since)
    return [
        Decided(
            job_id=review.job_id,
            model_label=verdict.label,
            fake_score=verdict.fake_score,
            threshold=verdict.threshold,
            media=verdict.media,
            image_format=verdict.image_format,
            image_sha256=verdict.image_sha256,
            model_version=verdict.model_version,
            decision=review.decision,
            decided_at=review.created_at,
        )
        for review, verdict in session.execute(query)
    ]


def reviewed_model_versions(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """Model versions with at least one reviewed verdict in the tenant, most reviews first."""
    rows = session.execute(
        select(VerdictRow.model_version, func.count())
        .join(Review, Review.job_id == VerdictRow.job_id)
        .where(Review.tenant_id == tenant_id)
        .group_by(VerdictRow.model_version)
        .order_by(func.count().desc(), VerdictRow.model_version)
    ).all()
    return [version for version, _ in rows]
