"""The dfscan schema: SQLAlchemy 2 typed models, the single source of truth for Alembic.

One row per scan job says where the job is (``state``) and why (``error_code``, ``error_message``).
The same models run on PostgreSQL (the service) and SQLite (``dfscan scan`` on a laptop), so types
are portable: ``Uuid`` keys, ``JSON`` (JSONB on Postgres), and :class:`UtcDateTime`, which stores UTC
and always hands back timezone-aware datetimes, even on SQLite, which has no timezone type.

Invariants the database itself enforces (CHECK / UNIQUE), so no code path can break them:

- a job is ``failed`` exactly when it has an ``error_code``; ``done``/``failed`` jobs have ``finished_at``;
- a job has at most one verdict (``verdicts.job_id`` is unique);
- ``attempts`` is never negative, scores lie in [0, 1], labels are ``real`` or ``fake``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.webhooks import receiver_of

JOB_STATES = ("queued", "running", "done", "failed")
FINAL_JOB_STATES = ("done", "failed")
RUN_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_RUN_STATES = ("done", "failed", "cancelled")
LABELS = ("real", "fake", "not_applicable")  # not_applicable: DFSCAN_FACES=require and no face
JUDGED_ON = ("faces", "image")
MEDIA = ("image", "video")
PROMOTION_REASONS = ("promote", "rollback", "default")
WEBHOOK_EVENTS = ("job.completed", "submission.completed", "job.reviewed")
DELIVERY_STATES = ("pending", "delivered", "failed")

# Constraint names are stable and predictable, so migrations can name what they drop or alter
# (SQLite batch mode needs named constraints to recreate tables).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every timestamp column stores)."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` on Postgres; on SQLite a UTC string. Always aware on the way out.

    Naive datetimes are refused on the way in: they are ambiguous, and a silent local-time bug in a
    lease deadline would requeue or fail jobs at the wrong moment.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime (UTC)")
        value = value.astimezone(timezone.utc)
        # SQLite stores text; drop the offset so every stored value compares as plain UTC text,
        # the same shape as CURRENT_TIMESTAMP (the server default).
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


JsonType = JSON().with_variant(JSONB(), "postgresql")
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Tenant(Base):
    """A client of the HTTP API: its keys, submissions and jobs, and the secret its webhooks are signed with.

    ``webhook_secret`` NULL: DFSCAN_WEBHOOK_SECRET signs its events (the ``default`` tenant's case). After a
    rotation the previous secret stays valid until ``previous_webhook_secret_until``: events carry a
    signature with each secret until then.
    """

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("length(name) >= 1", name="name_not_empty"),
        CheckConstraint(
            "(previous_webhook_secret IS NULL) = (previous_webhook_secret_until IS NULL)",
            name="previous_secret_has_deadline",
        ),
    )


class ApiKey(Base):
    """A key of the HTTP API. Only ``key_hash`` (SHA-256 of the key) is stored: a key has 256 random bits,
    so a slow password hash would add no protection, and a plain digest lets each request find its key
    by an index lookup. ``prefix`` is the key's public start, shown by `dfscan keys list`; ``scopes`` a
    comma-separated subset of ``dfscan.api.auth.SCOPES``."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (CheckConstraint("length(key_hash) = 64", name="key_hash_length"),)


# Rows written without a tenant (ScanClient, `dfscan submit`, foreign messages) belong to the default
# tenant: a Python default for ORM and Core inserts; the migration sets the same as the server default
# (a uuid on Postgres, 32 hex digits on SQLite), for writers of the previous release.
def _tenant_column() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("tenants.id"), default=DEFAULT_TENANT_ID)


class Submission(Base):
    """One call to submit: a batch of sources that share a client reference and a priority."""

    __tablename__ = "submissions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = _tenant_column()
    client_ref: Mapped[str | None] = mapped_column(String(255))
    # Unique within the tenant (two tenants may choose the same key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_jobs: Mapped[int] = mapped_column(Integer)
    # Where to POST events (untrusted: the SSRF guard applies at delivery) and which ones,
    # comma-separated names from WEBHOOK_EVENTS.
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_events: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("n_jobs >= 0", name="n_jobs_nonnegative"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_submissions_tenant_id", "tenant_id"),
    )


class ScanJob(Base):
    """One source to scan. ``enqueued_at IS NULL`` means its message was not sent yet (the outbox)."""

    __tablename__ = "scan_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    submission_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = _tenant_column()
    # The API key that submitted it over HTTP (NULL from ScanClient, the CLI, foreign messages).
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    seq: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    client_ref: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    state: Mapped[str] = mapped_column(String(16), default="queued", server_default=text("'queued'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("submission_id", "seq"),
        CheckConstraint(_in("state", JOB_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("(state = 'failed') = (error_code IS NOT NULL)", name="failed_iff_error_code"),
        CheckConstraint(
            f"NOT ({_in('state', FINAL_JOB_STATES)}) OR finished_at IS NOT NULL", name="final_has_finished_at"
        ),
        Index("ix_scan_jobs_submission_id_state", "submission_id", "state"),
        Index("ix_scan_jobs_state_lease_until", "state", "lease_until"),
        Index("ix_scan_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        # A key's jobs outstanding (its quota). Partial: only the backlog is indexed.
        Index(
            "ix_scan_jobs_api_key_id_active",
            "api_key_id",
            postgresql_where=text("state IN ('queued', 'running')"),
            sqlite_where=text("state IN ('queued', 'running')"),
        ),
        # The outbox: jobs whose message still has to be sent. Partial, so it stays tiny.
        Index(
            "ix_scan_jobs_unsent",
            "created_at",
            postgresql_where=text("enqueued_at IS NULL AND state = 'queued'"),
            sqlite_where=text("enqueued_at IS NULL AND state = 'queued'"),
        ),
    )


class VerdictRow(Base):
    """The outcome of one done job. ``job_id`` is unique: the schema allows at most one per job."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), unique=True)
    label: Mapped[str] = mapped_column(String(16))
    # NULL exactly when the label is not_applicable (faces required, none found).
    fake_score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    # What the model saw: the face crops (rows in verdict_faces; fake_score is their maximum) or the image.
    judged_on: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))
    model_version: Mapped[str] = mapped_column(String(255), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    # The format the bytes were decoded as (Pillow's name: JPEG, PNG, WEBP, ...); NULL before 0002.
    image_format: Mapped[str | None] = mapped_column(String(16))
    n_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fetch_ms: Mapped[float | None] = mapped_column(Float)
    decode_ms: Mapped[float | None] = mapped_column(Float)
    infer_ms: Mapped[float | None] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Videos (issue 11): what was judged, how long it runs, and its most suspicious moment. The per-frame
    # scores are rows of verdict_frames.
    media: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))
    duration_s: Mapped[float | None] = mapped_column(Float)
    peak_t: Mapped[float | None] = mapped_column(Float)
    # What the source declares about its origin (C2PA manifest, IPTC digital source type, EXIF
    # software): dfscan.verdicts.Provenance as JSON, beside the score. NULL when it was not read.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # A second model's p(fake) for the whole image and the combined reading (dfscan.verdicts.SecondOpinion
    # as JSON); NULL without DFSCAN_SECOND_MODEL.
    second_opinion: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # Explanation heatmaps, one per judged region ([{"box": [x, y, w, h] or null, "grid": [[...]]}]),
    # when they were asked for (DFSCAN_EXPLAIN, dfscan scan --explain); NULL otherwise.
    explanation: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    # Faces on: faces the detector found (over every sampled frame), faces judged, and the others by
    # reason ({"too_small": 3, "over_cap": 1}); NULL when faces were off.
    faces_found: Mapped[int | None] = mapped_column(Integer)
    faces_judged: Mapped[int | None] = mapped_column(Integer)
    faces_skipped: Mapped[dict[str, Any] | None] = mapped_column()
    # Near-duplicates (docs/near-duplicates.md): the earlier job whose verdict this one reuses and the
    # Hamming distance; the hash bank entries matched (``[{"bank", "id", "distance"}]``).
    near_duplicate_of: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    near_distance: Mapped[int | None] = mapped_column(Integer)
    matches: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"), nullable=True
    )

    __table_args__ = (
        CheckConstraint(_in("label", LABELS), name="label_valid"),
        CheckConstraint(
            "faces_judged IS NULL OR (faces_judged >= 0 AND faces_judged <= faces_found)",
            name="faces_judged_of_found",
        ),
        CheckConstraint("fake_score >= 0 AND fake_score <= 1", name="fake_score_range"),
        CheckConstraint(
            "(label = 'not_applicable') = (fake_score IS NULL)", name="not_applicable_iff_no_score"
        ),
        CheckConstraint(_in("judged_on", JUDGED_ON), name="judged_on_valid"),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold_range"),
        CheckConstraint("length(image_sha256) = 64", name="image_sha256_length"),
        CheckConstraint(_in("media", MEDIA), name="media_valid"),
        CheckConstraint(
            "media = 'video' OR (duration_s IS NULL AND peak_t IS NULL)", name="image_has_no_timeline"
        ),
        Index("ix_verdicts_image_sha256_model_version", "image_sha256", "model_version"),
        Index("ix_verdicts_label_created_at", "label", "created_at"),
    )


class VerdictFace(Base):
    """One judged face of a verdict made on faces: its box (pixels of the EXIF-oriented image), the face
    detector's confidence and the model's p(fake) for its crop. ``seq`` orders them largest first."""

    __tablename__ = "verdict_faces"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("verdicts.job_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    fake_score: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint("seq >= 0", name="seq_nonnegative"),
        CheckConstraint("x >= 0 AND y >= 0 AND w > 0 AND h > 0", name="box_valid"),
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
        CheckConstraint("fake_score >= 0 AND fake_score <= 1", name="fake_score_range"),
    )


class VerdictFrame(Base):
    """One sampled frame of a video verdict: its time in the video and its p(fake); ``faces`` the faces
    it was judged on (``[{"box": [x, y, w, h], "score", "fake_score"}]``, migration 0006), null when the
    frame was judged whole."""

    __tablename__ = "verdict_frames"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("verdicts.job_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[float] = mapped_column(Float)
    fake_score: Mapped[float] = mapped_column(Float)
    # none_as_null: a frame judged whole is SQL NULL, not the JSON value null
    faces: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"), nullable=True
    )

    __table_args__ = (
        CheckConstraint("seq >= 0", name="seq_nonnegative"),
        CheckConstraint("t >= 0", name="t_nonnegative"),
        CheckConstraint("fake_score >= 0 AND fake_score <= 1", name="fake_score_range"),
    )


class VerdictHash(Base):
    """A perceptual hash of a verdict (PDQ, 32 bytes): an image's (``seq`` 0), or one per sampled frame of a
    video or animation (vPDQ). The tenant and model version are copied from the job and verdict, so the
    near-duplicate index is refreshed from this table alone, by ``id`` (see dfscan/near.py)."""

    __tablename__ = "verdict_hashes"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("verdicts.job_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    t: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    pdq: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[int] = mapped_column(SmallInteger)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, default=DEFAULT_TENANT_ID, server_default=text(f"'{DEFAULT_TENANT_ID}'")
    )
    model_version: Mapped[str] = mapped_column(String(255))
    media: Mapped[str] = mapped_column(String(8), default="image", server_default=text("'image'"))

    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint("seq >= 0", name="seq_nonnegative"),
        CheckConstraint("length(pdq) = 32", name="pdq_length"),
        CheckConstraint("quality >= 0 AND quality <= 100", name="quality_range"),
        CheckConstraint(_in("media", MEDIA), name="media_valid"),
    )


class HashBank(Base):
    """A named list of hashes to match every source against (known fakes, a partner's list). It belongs to
    a tenant; ``shared`` banks are matched for every tenant. ``force_label`` (fake or real), when set,
    is the label of every source that matches it."""

    __tablename__ = "hash_banks"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, default=DEFAULT_TENANT_ID, server_default=text(f"'{DEFAULT_TENANT_ID}'")
    )
    name: Mapped[str] = mapped_column(String(128))
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    force_label: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint("force_label IS NULL OR force_label IN ('fake', 'real')", name="force_label_valid"),
    )


class BankEntry(Base):
    """One hash of a bank: PDQ (32 bytes), its id in the bank (imported, or the job it came from), quality."""

    __tablename__ = "bank_entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("hash_banks.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    pdq: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[int | None] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("length(pdq) = 32", name="pdq_length"),)


class TrainingRun(Base):
    """A fine-tuning run. ``progress`` is rewritten as it goes (epoch, step, loss, eval metrics)."""

    __tablename__ = "training_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    state: Mapped[str] = mapped_column(String(16), default="queued", server_default=text("'queued'"))
    data_path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any] | None] = mapped_column()
    progress: Mapped[dict[str, Any] | None] = mapped_column()
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    output_dir: Mapped[str | None] = mapped_column(Text)
    report_path: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    worker: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint(_in("state", RUN_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("(state = 'failed') = (error_code IS NOT NULL)", name="failed_iff_error_code"),
        CheckConstraint(
            f"NOT ({_in('state', FINAL_RUN_STATES)}) OR finished_at IS NOT NULL", name="final_has_finished_at"
        ),
        Index("ix_training_runs_state_created_at", "state", "created_at"),
    )


class ModelVersion(Base):
    """A model that can serve: where it came from, what it was trained on, how it scored."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    data_fingerprint: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict[str, Any] | None] = mapped_column()
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    threshold: Mapped[float | None] = mapped_column(Float)
    # Where ``threshold`` was measured: the road (faces mode, detector, margin, face limits, runtime,
    # judge version) and the data, split and target FPR (worker/training/calibrate.py).
    calibration: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("threshold IS NULL OR (threshold >= 0 AND threshold <= 1)", name="threshold_range"),
    )


class Promotion(Base):
    """One change of the serving model. The latest row (highest id) names the current model; a row
    without a version means the default model (DFSCAN_MODEL, DFSCAN_THRESHOLD)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    version: Mapped[str | None] = mapped_column(ForeignKey("model_versions.version"))
    previous_version: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint(_in("reason", PROMOTION_REASONS), name="reason_valid"),)


def _receiver_default(context: Any) -> str:
    """``receiver`` from the row's ``url`` when an INSERT leaves it out."""
    return receiver_of(str(context.get_current_parameters()["url"]))


class WebhookDelivery(Base):
    """One webhook event and its delivery (the webhook outbox).

    Written in the same transaction as the job's final state, so no event is lost to a crash between
    the two. ``id`` is the event id the receiver sees (``X-Dfscan-Event-Id``); ``body`` is the exact
    JSON sent on every attempt, so redeliveries carry the same bytes. ``dedupe_key`` makes a second
    write of the same event a no-op. A delivery loop claims due rows (``state = 'pending' AND
    next_attempt_at <= now()``) one ``receiver`` at a time, writes a fresh ``claim_token`` and pushes
    ``next_attempt_at`` past the attempt (the lease, renewed while the POST runs) first: a delivery
    process killed mid-POST leaves the row to be retried, and only the holder of the token records
    the attempt's outcome.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    submission_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(Text)
    # Who receives it: the URL's scheme://host:port, the unit of per-receiver limits and backoff.
    # '' from a writer older than migration 0007 (a rolling update): delivered, as one receiver.
    receiver: Mapped[str] = mapped_column(Text, default=_receiver_default, server_default=text("''"))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    # Written by each claim; an outcome is recorded only by the claim that still holds it (fencing).
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint(_in("event", WEBHOOK_EVENTS), name="event_valid"),
        CheckConstraint(_in("state", DELIVERY_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint(
            "(state = 'delivered') = (delivered_at IS NOT NULL)", name="delivered_iff_delivered_at"
        ),
        Index("ix_webhook_deliveries_submission_id", "submission_id"),
        # What the delivery loop scans: due, pending rows. Partial, so it stays small.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        # A claim takes one receiver's oldest due rows (partial: pending rows only).
        Index(
            "ix_webhook_deliveries_receiver_due",
            "receiver",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        # Given-up rows, counted by the exporter: its cost follows them, not the delivered history.
        Index(
            "ix_webhook_deliveries_failed",
            "updated_at",
            postgresql_where=text("state = 'failed'"),
            sqlite_where=text("state = 'failed'"),
        ),
        # The retention sweep deletes settled rows oldest first.
        Index("ix_webhook_deliveries_state_updated_at", "state", "updated_at"),
    )


REVIEW_DECISIONS = ("fake", "real", "not_applicable", "escalate")


class Review(Base):
    """One reviewer's decision on a job's verdict. Every decision is kept (the history); the latest (highest
    ``id``) counts. ``api_key_id`` is the key the reviewer signed in with (NULL once that key is deleted: the
    decision outlives it); ``tenant_id`` is the job's tenant, copied so a tenant's reviews are read by index."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(_in("decision", REVIEW_DECISIONS), name="decision_valid"),
        CheckConstraint("note IS NULL OR length(note) <= 2000", name="note_length"),
        # The latest decision of a job: the last entry of (job_id, id).
        Index("ix_reviews_job_id_id", "job_id", "id"),
        # Export and agreement: a tenant's decisions by time.
        Index("ix_reviews_tenant_id_created_at", "tenant_id", "created_at"),
    )


# The review queue: a tenant's done jobs newest first, read backwards by keyset (created_at, id). Partial,
# so queued and failed jobs do not weigh on it.
Index(
    "ix_scan_jobs_review_queue",
    ScanJob.tenant_id,
    ScanJob.created_at,
    ScanJob.id,
    postgresql_where=text("state = 'done'"),
    sqlite_where=text("state = 'done'"),
)
