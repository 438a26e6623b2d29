"""A job's verdict and what it is made of: faces, video frames, perceptual hashes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import JUDGED_ON, LABELS, MEDIA, Base, BigIntId, JsonType, one_of
from dfscan.tenants import DEFAULT_TENANT_ID


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
        CheckConstraint(one_of("label", LABELS), name="label_valid"),
        CheckConstraint(
            "faces_judged IS NULL OR (faces_judged >= 0 AND faces_judged <= faces_found)",
            name="faces_judged_of_found",
        ),
        CheckConstraint("fake_score >= 0 AND fake_score <= 1", name="fake_score_range"),
        CheckConstraint(
            "(label = 'not_applicable') = (fake_score IS NULL)", name="not_applicable_iff_no_score"
        ),
        CheckConstraint(one_of("judged_on", JUDGED_ON), name="judged_on_valid"),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold_range"),
        CheckConstraint("length(image_sha256) = 64", name="image_sha256_length"),
        CheckConstraint(one_of("media", MEDIA), name="media_valid"),
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
        CheckConstraint(one_of("media", MEDIA), name="media_valid"),
    )


class VerdictPreview(Base):
    """A small JPEG of what a verdict judged, for the review console: a still image's preview (``t`` null)
    or one of at most 16 thumbnails of a clip's sampled frames (worker/inference/images/previews.py).
    Made from pixels the worker had decoded; kept with the verdict (the original bytes may be gone)."""

    __tablename__ = "verdict_previews"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("verdicts.job_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[float | None] = mapped_column(Float, nullable=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        CheckConstraint("seq >= 0 AND seq < 16", name="seq_range"),
        CheckConstraint("length(jpeg) <= 65536", name="jpeg_size"),
    )
