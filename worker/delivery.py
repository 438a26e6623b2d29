"""Deliver webhook events from the outbox (``webhook_deliveries``): sign, POST, record, retry.

A callback URL is untrusted input, handled like an image URL (``dfscan/urlguard.py``,
``sources.py``): http(s) only; the host is resolved once and every address must be public or in
``DFSCAN_WEBHOOK_ALLOWLIST``; the connection goes to that very address (no DNS rebinding); no
redirects are followed; one timeout bounds the whole POST; at most
``DFSCAN_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer are read. A refused URL
(``BLOCKED_DESTINATION``, ``UNSUPPORTED_SOURCE``) fails its delivery at once; anything else (no
answer, a non-2xx status) is tried again with exponential backoff up to ``DFSCAN_WEBHOOK_MAX_ATTEMPTS``.

The loop runs in the sweeper process (``dfscan sweeper``, ``dfscan worker --sweeper``) or alone
(``dfscan webhooks deliver``); several loops share the work (``FOR UPDATE SKIP LOCKED``). It sleeps
on ``LISTEN dfscan_webhooks`` (the transaction that writes events sends ``NOTIFY`` at its commit) up
to ``DFSCAN_WEBHOOK_POLL_INTERVAL``, the fallback for retries coming due, SQLite and a lost
connection. A round checks and resolves each distinct URL once, POSTs (each on its own connection,
``Connection: close``), and records every outcome in one transaction of a few statements.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import webhooks
from db.notifications import Listener
from dfscan.exceptions import BlockedDestinationError, DfscanError, HttpStatusError, UnsupportedSourceError
from dfscan.settings import Settings
from dfscan.urlguard import IPAddress, SourcePolicy, Target, parse_url
from dfscan.webhooks import EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header
from worker.inference.sources import open_target, pinned_connection, start_clock

log = logging.getLogger(__name__)

# Deliveries one claim takes, and POSTs in flight at once per loop.
_CLAIM = 64
_THREADS = 16
# Seconds between two attempts to LISTEN again after the connection was lost (polling meanwhile).
_RELISTEN = 5.0
# Refused destinations never heal by waiting: the delivery fails at once.
PERMANENT = (BlockedDestinationError, UnsupportedSourceError)


def _engine(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the delivery loop needs a sessionmaker bound to an Engine")
    return bind


def callback_policy(settings: Settings) -> SourcePolicy:
    """The SSRF policy of callback URLs: the webhook allow-list, one timeout, a cap on the answer."""
    return SourcePolicy(
        allowed_roots=(),
        url_allowlist=settings.webhook_allowlist,
        max_bytes=settings.webhook_max_response_bytes,
        connect_timeout=settings.webhook_timeout,
        read_timeout=settings.webhook_timeout,
        deadline=settings.webhook_timeout,
        max_redirects=0,
    )


def check_callback_url(url: str, settings: Settings) -> None:
    """Refuse a callback URL statically (scheme, host syntax, IP literals, localhost): raises
    UNSUPPORTED_SOURCE or BLOCKED_DESTINATION. Names are checked again, resolved, at each delivery."""
    parse_url(url, callback_policy(settings))


def post(url: str, body: bytes, headers: dict[str, str], policy: SourcePolicy) -> int:
    """POST ``body`` to ``url`` through the SSRF guard; the status of a 2xx answer, else raises
    (HTTP_STATUS for other statuses, FETCH_TIMEOUT, FETCH_FAILED, BLOCKED_DESTINATION, ...)."""
    target, ip, _ = open_target(url, policy)
    return post_to(target, ip, body, headers, policy)


def post_to(target: Target, ip: IPAddress, body: bytes, headers: dict[str, str], policy: SourcePolicy) -> int:
    """POST to ``ip``, an address :func:`open_target` checked for ``target``, on a new connection
    under a fresh deadline (see :func:`post`)."""
    clock = start_clock(target, policy)
    with pinned_connection(target, ip, policy, clock) as (conn, fired):
        conn.request(
            "POST",
            target.request_path,
            body=body,
            headers={
                "Host": target.host_header,
                "User-Agent": "dfscan-webhooks",
                "Content-Type": "application/json",
                "Accept-Encoding": "identity",
                "Connection": "close",
                **headers,
            },
            preload_content=False,
            decode_content=False,
        )
        response = conn.getresponse()
        response.read1(policy.max_bytes)  # read (a bounded part of) the answer, then hang up
        if fired.is_set():
            raise clock.expired()
        if not 200 <= response.status < 300:
            raise HttpStatusError(
                f"{target.display} answered HTTP {response.status} {(response.reason or '')[:60]}".strip(),
                status=response.status,
            )
        return int(response.status)


class _Destinations:
    """The callback URLs of one round, each checked and resolved once (by the first POST that needs
    it; the others wait for that answer): a round of 64 events to one receiver pays one parse and one
    DNS lookup, not 64. Every connection still goes to the address the guard approved; the next round
    checks and resolves again, so a changed DNS answer or allow-list is seen within one round."""

    def __init__(self, policy: SourcePolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._opened: dict[str, Future[tuple[Target, IPAddress]]] = {}

    def open(self, url: str) -> tuple[Target, IPAddress]:
        with self._lock:
            future = self._opened.get(url)
            mine = future is None
            if future is None:
                future = self._opened[url] = Future()
        if mine:
            try:
                target, ip, _ = open_target(url, self.policy)
                future.set_result((target, ip))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed


class Deliverer:
    """Claims due deliveries, POSTs them (a few at a time), records each outcome."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.policy = callback_policy(settings)
        # A claimed delivery is retried after this long if its attempt never reported (a killed process).
        self.lease = 2 * settings.webhook_timeout + 5
        self._pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="dfscan-webhook")
        self._warned = False
        self.wakeups = Listener(_engine(sessions), webhooks.CHANNEL, retry_every=_RELISTEN)

    def deliver_once(self) -> DeliveryReport:
        secret = self.settings.webhook_secret.get_secret_value()
        report = DeliveryReport()
        if not secret:
            if not self._warned:
                log.warning("DFSCAN_WEBHOOK_SECRET is not set: webhook deliveries wait until it is")
                self._warned = True
            return report
        with self.sessions.begin() as session:
            due = webhooks.claim_due(session, limit=_CLAIM, lease_seconds=self.lease)
        if not due:
            return report
        destinations = _Destinations(self.policy)
        attempts = list(self._pool.map(lambda d: self._attempt(d, secret, destinations), due))
        outcomes = [self._outcome(item, attempt, report) for item, attempt in zip(due, attempts, strict=True)]
        with self.sessions.begin() as session:  # the whole round in one transaction, a few statements
            webhooks.settle(session, outcomes)
        return report

    def _attempt(self, due: webhooks.Due, secret: str, destinations: _Destinations) -> int | DfscanError:
        """POST one delivery: its 2xx status, or the error (never raised)."""
        body = due.body.encode()
        headers = {
            SIGNATURE_HEADER: signature_header(secret, body),
            EVENT_ID_HEADER: str(due.id),
            EVENT_HEADER: due.event,
        }
        try:
            target, ip = destinations.open(due.url)
            return post_to(target, ip, body, headers, self.policy)
        except DfscanError as exc:
            return exc
        except Exception as exc:  # a bug: keep the delivery, try again later
            log.exception("webhook %s: unexpected error", due.id)
            return DfscanError(f"unexpected error: {exc!r}")

    def _outcome(
        self, due: webhooks.Due, attempt: int | DfscanError, report: DeliveryReport
    ) -> webhooks.Outcome:
        """What to store for one attempt (and count it in ``report``)."""
        if not isinstance(attempt, DfscanError):
            report.delivered += 1
            return webhooks.Outcome(due.id, attempt)
        exc = attempt
        extra = {"delivery_id": str(due.id), "attempt": due.attempts}
        status = exc.status if isinstance(exc, HttpStatusError) else None
        give_up = isinstance(exc, PERMANENT) or due.attempts >= self.settings.webhook_max_attempts
        delay = None if give_up else self._delay(due.attempts)
        if give_up:
            report.failed += 1
            log.warning(
                "webhook %s given up after %d attempts: %s %s",
                due.id,
                due.attempts,
                exc.code,
                exc.message,
                extra=extra,
            )
        else:
            report.retrying += 1
            log.info(
                "webhook %s attempt %d failed (%s), next in %.1fs",
                due.id,
                due.attempts,
                exc.code,
                delay,
                extra=extra,
            )
        return webhooks.Outcome(due.id, status, exc.code, exc.message, delay)

    def _delay(self, attempts: int) -> float:
        return webhooks.retry_delay(
            attempts, base=self.settings.webhook_retry_base, cap=self.settings.webhook_retry_max
        )

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; a database outage is logged and tried again.

        Between rounds the loop waits on ``NOTIFY dfscan_webhooks`` (Postgres) up to
        ``DFSCAN_WEBHOOK_POLL_INTERVAL``: a new event starts a round at once, and the poll stays for
        retries that come due and for when no LISTEN connection is up (SQLite, an outage). A woken
        loop starts its next round no sooner than ``DFSCAN_WEBHOOK_MIN_ROUND_INTERVAL`` after the last
        one started: under load, events gather into rounds (one claim and one settle for many)
        instead of a round per event, for at most that much latency."""
        gap = self.settings.webhook_min_round_interval
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    report = self.deliver_once()
                except SQLAlchemyError as exc:
                    log.warning("webhook delivery paused, will try again: %s", exc)
                    stop.wait(max(1.0, self.settings.webhook_poll_interval))
                    continue
                except Exception:
                    log.exception("webhook delivery loop failed, will try again")
                    stop.wait(1.0)
                    continue
                # A full claim may have left more due rows: go again. After a partial one, a listening
                # loop may wait too: a NOTIFY committed during the round is already waiting on the socket.
                listening = self.wakeups.listening
                idle = not report.attempted or (listening and report.attempted < _CLAIM)
                if idle and self.wakeups.wait(self.settings.webhook_poll_interval, stop):
                    stop.wait(max(0.0, started + gap - time.monotonic()))  # let more events gather
        finally:
            self.wakeups.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.wakeups.close()


def start_delivery_thread(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event
) -> threading.Thread:
    """Run a :class:`Deliverer` on a daemon thread until ``stop`` is set."""
    deliverer = Deliverer(sessions, settings)
    thread = threading.Thread(target=deliverer.run, args=(stop,), name="dfscan-webhooks", daemon=True)
    thread.start()
    return thread
