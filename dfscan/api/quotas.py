"""Per-key quotas shared by every API replica: requests per second (the ``limits`` library's moving
window, counted in Redis) and jobs outstanding (queued + running, counted in Postgres, the truth).

Over either: 429 ``RATE_LIMITED`` with ``Retry-After``. Keys are counted by key id, never by the key.
"""

from __future__ import annotations

import math
import time
import uuid

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from db.jobs import outstanding_jobs
from dfscan.exceptions import BadArgumentError, RateLimitedError
from dfscan.settings import Settings

# Seconds a client over its outstanding-jobs quota is told to wait: jobs take about this long to drain.
OUTSTANDING_RETRY_AFTER = 5


def parse_rate(text: str) -> RateLimitItem:
    """DFSCAN_API_RATE_LIMIT (``50/second``) as a limits item; BAD_ARGUMENT when it does not parse."""
    try:
        return parse(text)
    except ValueError as exc:
        raise BadArgumentError(
            f"DFSCAN_API_RATE_LIMIT={text!r} is not a rate such as 50/second ({exc})"
        ) from None


class Quotas:
    def __init__(self, settings: Settings) -> None:
        self.rate = parse_rate(settings.api_rate_limit)
        self.max_outstanding = settings.api_max_outstanding
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.broker_url))

    def hit(self, key_id: uuid.UUID) -> None:
        """Count one request of the key; RATE_LIMITED past its rate."""
        if self.limiter.hit(self.rate, "dfscan-api", str(key_id)):
            return
        stats = self.limiter.get_window_stats(self.rate, "dfscan-api", str(key_id))
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(
            f"this API key is over its rate of {self.rate.amount} requests per "
            f"{self.rate.multiples if self.rate.multiples > 1 else ''}{self.rate.GRANULARITY.name}; retry after "
            f"{wait} s",
            retry_after=wait,
        )

    def check_outstanding(self, session: Session, key_id: uuid.UUID, adding: int) -> None:
        """RATE_LIMITED when ``adding`` more jobs would pass the key's jobs-outstanding quota."""
        if adding > self.max_outstanding:
            raise BadArgumentError(
                f"{adding} jobs in one submission is more than this key may have outstanding "
                f"(DFSCAN_API_MAX_OUTSTANDING={self.max_outstanding}); split it"
            )
        current = outstanding_jobs(session, key_id)
        if current + adding > self.max_outstanding:
            raise RateLimitedError(
                f"this API key has {current} jobs queued or running and {adding} more would pass its quota "
                f"of {self.max_outstanding}; retry when some finish",
                retry_after=OUTSTANDING_RETRY_AFTER,
            )
