"""Tenants: every submission, job, verdict, webhook delivery, upload, review and hash bank belongs to one.

Rows made inside the trust boundary (``ScanClient``, ``dfscan submit``, foreign Celery messages, ``dfscan scan``)
belong to the ``default`` tenant, which the tenants migration creates with this fixed id, so everything that
worked before tenants keeps working and its rows stay readable through the same queries.
"""

from __future__ import annotations

import uuid

DEFAULT_TENANT_NAME = "default"
DEFAULT_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
