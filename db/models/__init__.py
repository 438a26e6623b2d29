"""The dfscan schema: SQLAlchemy 2 typed models, the single source of truth for Alembic.

One row per scan job says where the job is (``state``) and why (``error_code``, ``error_message``).
The same models run on PostgreSQL (the service) and SQLite (``dfscan scan`` on a laptop), so types
are portable: ``Uuid`` keys, ``JSON`` (JSONB on Postgres), and :class:`UtcDateTime`, which stores UTC
and always hands back timezone-aware datetimes, even on SQLite, which has no timezone type.

One module per concept: ``base`` (types, states), ``tenants``, ``jobs``, ``verdicts``, ``banks``,
``training``, ``webhooks``, ``reviews``, ``uploads``. Importing this package registers every table on
``Base.metadata``.

Invariants the database itself enforces (CHECK / UNIQUE), so no code path can break them:

- a job is ``failed`` exactly when it has an ``error_code``; ``done``/``failed`` jobs have ``finished_at``;
- a job has at most one verdict (``verdicts.job_id`` is unique);
- ``attempts`` is never negative, scores lie in [0, 1], labels are ``real`` or ``fake``.
"""

from db.models.banks import BankEntry, HashBank
from db.models.base import (
    DELIVERY_STATES,
    FINAL_JOB_STATES,
    FINAL_RUN_STATES,
    JOB_STATES,
    JUDGED_ON,
    LABELS,
    MEDIA,
    PROMOTION_REASONS,
    RUN_STATES,
    WEBHOOK_EVENTS,
    Base,
    UtcDateTime,
    utcnow,
)
from db.models.jobs import ScanJob, Submission
from db.models.reviews import REVIEW_DECISIONS, Review
from db.models.tenants import ApiKey, Tenant
from db.models.training import ModelVersion, Promotion, TrainingRun
from db.models.uploads import Upload
from db.models.verdicts import VerdictFace, VerdictFrame, VerdictHash, VerdictPreview, VerdictRow
from db.models.webhooks import WebhookDelivery

__all__ = [
    "DELIVERY_STATES",
    "FINAL_JOB_STATES",
    "FINAL_RUN_STATES",
    "JOB_STATES",
    "JUDGED_ON",
    "LABELS",
    "MEDIA",
    "PROMOTION_REASONS",
    "REVIEW_DECISIONS",
    "RUN_STATES",
    "WEBHOOK_EVENTS",
    "ApiKey",
    "BankEntry",
    "Base",
    "HashBank",
    "ModelVersion",
    "Promotion",
    "Review",
    "ScanJob",
    "Submission",
    "Tenant",
    "TrainingRun",
    "Upload",
    "UtcDateTime",
    "VerdictFace",
    "VerdictFrame",
    "VerdictHash",
    "VerdictPreview",
    "VerdictRow",
    "WebhookDelivery",
    "utcnow",
]
