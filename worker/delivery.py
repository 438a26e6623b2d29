"""Deliver webhook events from the outbox (``webhook_deliveries``): sign, POST, record, retry.

A callback URL is untrusted input, handled like an image URL and by the same client
(``dfscan/urlguard.py``, ``dfscan/pinned_http.py``): http(s) only; the host is resolved once and
every address must be public or in ``DFSCAN_WEBHOOK_ALLOWLIST``; the connection goes to that very
address (no DNS rebinding); no redirects are followed; one timeout bounds the whole POST; at most
``DFSCAN_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer are read. A refused URL
(``BLOCKED_DESTINATION``, ``UNSUPPORTED_SOURCE``) fails its delivery at once; anything else (no
answer, a non-2xx status) is tried again with exponential backoff up to ``DFSCAN_WEBHOOK_MAX_ATTEMPTS``.

The loop runs in the sweeper process (``dfscan sweeper``, ``dfscan worker --sweeper``) or alone
(``dfscan webhooks deliver``); several loops share the work. Each event has at most one attempt in
flight: a claim writes a fencing token and a lease (``2 x DFSCAN_WEBHOOK_TIMEOUT + 5 s``) that the
holder renews every ``timeout / 2`` while its POSTs run, each POST starts at its claim and ends within
the timeout, and outcomes are recorded only under the claim's token (``db.webhooks``). So another loop
can take an event only after its holder died or stalled past the lease, and then the stale holder
neither records nor counts that attempt.

Fairness: the loop is a scheduler of ``THREADS`` POST slots. Each step (one transaction) records the
POSTs that finished, renews leases, and claims due events receiver by receiver (``scheme://host:port``,
the one waiting longest first) into the free slots, at most ``PER_RECEIVER`` in flight per receiver,
and starts their POSTs at once; a finished POST wakes the next step. A hung or slow receiver thus
holds only its own slots, and its circuit breaker stops claiming its events after ``BREAKER_FAILURES``
failures in a row, probing once per open period (5 s doubling to 5 min), so a receiver that is down
costs one POST per period whatever its backlog. The breakers are shared by every loop of the deployment
(in Redis, :mod:`worker.breakers`): the count of failures in a row, the open period and the probe are
one per receiver, not one per loop. The loop sleeps on ``LISTEN
dfscan_webhooks`` (the transaction that writes events sends ``NOTIFY`` at its commit) up to
``POLL_INTERVAL``, the fallback for retries coming due, SQLite and a lost connection. Each callback
URL is checked and resolved at most once a second (``ROUND_CACHE``); each POST has its own connection
(``Connection: close``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import webhooks
from db.notifications import Listener
from dfscan.exceptions import (
    BlockedDestinationError,
    ConfigError,
    DfscanError,
    HttpStatusError,
    UnsupportedSourceError,
)
from dfscan.pinned_http import open_target, pinned_connection, start_clock
from dfscan.settings import FIXED, Settings
from dfscan.urlguard import IPAddress, SourcePolicy, Target, parse_url
from dfscan.webhooks import EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header
from worker.breakers import BREAKER_FAILURES, BREAKER_MAX, BREAKER_OPEN, Breakers, shared_breakers

log = logging.getLogger(__name__)

# Tuning that users do not need to change, written down once (the settings of the same names were
# folded into these; the old variables still work for one release, with a warning).
# POSTs in flight at once per loop (threads blocked on I/O are cheap).
THREADS = 64
# POSTs in flight at once per receiver (scheme://host:port) per loop: a slow or hung receiver holds
# at most this many slots, so the others keep THREADS - PER_RECEIVER at least.
PER_RECEIVER = 16
# The circuit breaker (worker/breakers.py): BREAKER_FAILURES failed attempts in a row open it for
# BREAKER_OPEN s, doubling up to BREAKER_MAX; shared by all loops.
__all__ = ["BREAKER_FAILURES", "BREAKER_MAX", "BREAKER_OPEN", "Deliverer", "check_secret"]
# Longest wait of an idle loop: on Postgres a new event wakes it at once (LISTEN/NOTIFY); the poll is
# the fallback for retries and breakers coming due, SQLite and a lost LISTEN connection.
POLL_INTERVAL = float(FIXED["webhook_poll_interval"].value)
# Least seconds between the starts of two steps woken early: under load, events and outcomes gather
# into one transaction each step instead of one each (measured: bench/delivery.py).
MIN_ROUND_INTERVAL = float(FIXED["webhook_min_round_interval"].value)
# Seconds before the first retry; doubles each attempt up to DFSCAN_WEBHOOK_RETRY_MAX.
RETRY_BASE = float(FIXED["webhook_retry_base"].value)
# Receivers looked at per step, longest waiting first.
_RECEIVERS = 256
# Seconds a callback URL's check and DNS answer are reused across steps.
ROUND_CACHE = 1.0
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


# Seconds a delivery with no secret to sign it (its tenant has none of its own and DFSCAN_WEBHOOK_SECRET is
# unset) waits before it is looked at again: a setting or a `dfscan tenants rotate-secret` away.
UNSIGNED_WAIT = 60.0


def check_secret(settings: Settings) -> str:
    """The webhook secret, or "" when unset (deliveries of tenants without their own secret wait); CONFIG_ERROR for a blank or padded one
    (anyone could guess a signature made with spaces, and a receiver trimming its copy never matches)."""
    secret = settings.webhook_secret.get_secret_value()
    if secret and not secret.strip():
        raise ConfigError("DFSCAN_WEBHOOK_SECRET is blank or only whitespace: set a real secret or unset it")
    if secret != secret.strip():
        raise ConfigError("DFSCAN_WEBHOOK_SECRET has leading or trailing whitespace: remove it")
    return secret


class Deliverer:
    """Claims due deliveries per receiver into free slots, POSTs each at once, records each outcome.

    One scheduler (the thread that calls :meth:`step`, :meth:`run` or :meth:`deliver_once`) owns every
    piece of state; POST threads only hand back results (``_finished``) and wake it.
    """

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, breakers: Breakers | None = None
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.secret = check_secret(settings)
        self.policy = callback_policy(settings)
        self.timeout = settings.webhook_timeout
        # A claimed delivery is retried after this long if its holder stops renewing it (a killed
        # process). Its POST starts at the claim and ends within the timeout; renewals cover the rest.
        self.lease = 2 * settings.webhook_timeout + 5
        self.renew_every = settings.webhook_timeout / 2
        self.poll_interval = _deprecated(settings, "webhook_poll_interval", POLL_INTERVAL)
        self.min_round_interval = _deprecated(settings, "webhook_min_round_interval", MIN_ROUND_INTERVAL)
        self.retry_base = _deprecated(settings, "webhook_retry_base", RETRY_BASE)
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="dfscan-webhook")
        self._warned = False
        self.wakeups = Listener(_engine(sessions), webhooks.CHANNEL, retry_every=_RELISTEN)
        self._lock = threading.Lock()
        self._finished: list[tuple[webhooks.Due, int | DfscanError | None]] = []
        self._in_flight: dict[uuid.UUID, tuple[webhooks.Due, float]] = {}  # id -> (due, claimed at)
        self._outcomes: list[webhooks.Outcome] = []  # finished, not yet recorded
        self._unsent: list[webhooks.Due] = []  # claimed, never POSTed, not yet released
        self._per_receiver: dict[str, int] = {}  # receiver -> this loop's POSTs in flight to it
        self._blocked: set[str] = set()  # receivers whose breaker let nothing through at the last claim
        # The receivers' circuit breakers, shared by the deployment's loops (a probe is held at most a lease).
        self.breakers: Breakers = breakers or shared_breakers(
            settings.broker_url, settings.database_url, probe_lease=self.lease
        )
        self._renewed = time.monotonic()
        self._destinations = _Destinations(self.policy)
        self._destinations_at = time.monotonic()
        self.report = DeliveryReport()  # everything this deliverer settled

    # --- one step of the scheduler ---------------------------------------------------------------

    def step(self, *, claim: bool = True) -> int:
        """Settle what finished, renew leases still held, and claim due rows into free slots (each
        receiver up to its limit, its breaker permitting), starting their POSTs. One transaction.
        Returns how many rows were claimed."""
        secret = self.secret
        with self._lock:
            finished, self._finished = self._finished, []
        now = time.monotonic()
        # Kept until their transaction commits: a step that fails (a database outage) records them
        # in the next one (if their claim still holds by then).
        outcomes, unsent = self._outcomes, self._unsent
        for due, result in finished:
            self._in_flight.pop(due.id, None)
            left = self._per_receiver[due.receiver] - 1
            if left:
                self._per_receiver[due.receiver] = left
            else:
                del self._per_receiver[due.receiver]
            if result is None:
                unsent.append(due)
            else:
                outcomes.append(self._outcome(due, result))
        renew = (
            [due for due, _ in self._in_flight.values()] if now - self._renewed >= self.renew_every else []
        )
        free = THREADS - len(self._in_flight) if claim else 0
        if not (outcomes or unsent or renew or free):
            return 0
        claimed: list[webhooks.Due] = []
        with self.sessions.begin() as session:
            if outcomes:
                webhooks.settle(session, outcomes)
            if unsent:
                webhooks.release(session, unsent)
            if renew:
                kept = webhooks.renew(session, renew, lease_seconds=self.lease)
                lost = [due.id for due in renew if due.id not in kept]
                if lost:
                    log.warning("webhook: %d claims were taken over while in flight: %s", len(lost), lost[:5])
                self._renewed = now
            if free:
                claimed = self._claim(session, free, now)
        self._outcomes, self._unsent = [], []
        if now - self._destinations_at >= ROUND_CACHE:  # check and resolve every URL again
            self._destinations, self._destinations_at = _Destinations(self.policy), now
        for due in claimed:
            self._in_flight[due.id] = (due, now)
            self._pool.submit(self._post, due, secret, self._destinations, now)
        return len(claimed)

    def _claim(self, session: Session, free: int, now: float) -> list[webhooks.Due]:
        """Claim due rows receiver by receiver, as the shared breakers allow (one Redis round trip for the
        receivers blocked at the last claim, one for the others the query returns)."""
        counts = self._per_receiver
        rooms, probes = self.breakers.room(sorted(self._blocked), PER_RECEIVER, counts)
        blocked = [r for r, n in rooms.items() if n <= 0]
        due = webhooks.due_receivers(session, limit=_RECEIVERS, skip=blocked)
        more, more_probes = self.breakers.room([r for r in due if r not in rooms], PER_RECEIVER, counts)
        rooms.update(more)
        probes |= more_probes
        claimed: list[webhooks.Due] = []
        got: set[str] = set()
        for receiver in due:
            room = min(free - len(claimed), rooms[receiver])
            if room <= 0:
                continue
            rows = webhooks.claim_due(session, limit=room, lease_seconds=self.lease, receiver=receiver)
            rows = webhooks.with_secrets(session, rows)  # each tenant's own secret(s), if it has one
            rows = self._signable(session, rows)
            if rows:
                counts[receiver] = counts.get(receiver, 0) + len(rows)
                got.add(receiver)
            claimed.extend(rows)
            if len(claimed) >= free:
                break
        for receiver in probes - got:  # another loop took its events, or none was due: no probe
            self.breakers.release_probe(receiver)
        self._blocked = {r for r, n in rooms.items() if n <= 0}
        return claimed

    def _signable(self, session: Session, rows: list[webhooks.Due]) -> list[webhooks.Due]:
        """The rows there is a secret to sign with: their tenant's own, else DFSCAN_WEBHOOK_SECRET. The
        others (neither exists) are given back, their attempt not counted, due again in UNSIGNED_WAIT
        seconds: an event is never sent unsigned, nor lost for a missing setting."""
        if self.secret:
            return rows
        unsigned = [row for row in rows if not row.secrets]
        if not unsigned:
            return rows
        webhooks.release(session, unsigned, after=UNSIGNED_WAIT)
        if not self._warned:
            log.warning(
                "%d webhook deliveries wait: their tenant has no webhook secret of its own and "
                "DFSCAN_WEBHOOK_SECRET is not set; set it, or give the tenant one with "
                "`dfscan tenants rotate-secret NAME` (looked at again every %.0f s)",
                len(unsigned),
                UNSIGNED_WAIT,
            )
            self._warned = True
        return [row for row in rows if row.secrets]

    def _post(self, due: webhooks.Due, secret: str, destinations: _Destinations, claimed: float) -> None:
        """A POST thread: one attempt, its result handed to the scheduler (never raises)."""
        result: int | DfscanError | None
        if time.monotonic() - claimed > self.lease - self.timeout - 1:
            result = None  # waited so long that the lease could run out mid-POST: give it back
        else:
            result = self._attempt(due, secret, destinations)
        with self._lock:
            self._finished.append((due, result))
        self.wakeups.wake()

    def _attempt(self, due: webhooks.Due, secret: str, destinations: _Destinations) -> int | DfscanError:
        """POST one delivery: its 2xx status, or the error (never raised)."""
        body = due.body.encode()
        headers = {
            # The tenant's secrets (both during a rotation), else DFSCAN_WEBHOOK_SECRET (_signable
            # made sure one of them is there).
            SIGNATURE_HEADER: signature_header(due.secrets or (secret,), body),
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

    def _outcome(self, due: webhooks.Due, attempt: int | DfscanError) -> webhooks.Outcome:
        """What to store for one attempt (and count it in ``report`` and the receiver's breaker)."""
        report = self.report
        if not isinstance(attempt, DfscanError):
            self.breakers.succeeded(due.receiver)
            report.delivered += 1
            return webhooks.Outcome(due.id, attempt, token=due.token)
        exc = attempt
        extra = {"delivery_id": str(due.id), "attempt": due.attempts}
        status = exc.status if isinstance(exc, HttpStatusError) else None
        permanent = isinstance(exc, PERMANENT)
        failure = None if permanent else self.breakers.failed(due.receiver)
        if failure is not None and failure.opened:
            log.warning(
                "webhook receiver failing (%d in a row): no attempts to it for %.0f s",
                failure.failures,
                failure.open_for,
                extra=extra,
            )
        give_up = permanent or due.attempts >= self.settings.webhook_max_attempts
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
        return webhooks.Outcome(due.id, status, exc.code, exc.message, delay, token=due.token)

    def _delay(self, attempts: int) -> float:
        return webhooks.retry_delay(attempts, base=self.retry_base, cap=self.settings.webhook_retry_max)

    # --- loops --------------------------------------------------------------------------------

    def deliver_once(self) -> DeliveryReport:
        """Deliver what is due now: steps until nothing is in flight and a step claims nothing more
        (a receiver whose breaker opened is left for later). Returns what this call settled."""
        before = DeliveryReport(**vars(self.report))
        stop = threading.Event()
        while True:
            claimed = self.step()
            if not claimed and not self._in_flight:
                break
            if not claimed:
                self.wakeups.wait(self.timeout, stop)  # a POST finishing wakes it
        return DeliveryReport(
            self.report.delivered - before.delivered,
            self.report.retrying - before.retrying,
            self.report.failed - before.failed,
        )

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; a database outage is logged and tried again. On stop, the
        POSTs in flight finish (within the timeout) and are recorded.

        Between steps the loop waits for a POST to finish, ``NOTIFY dfscan_webhooks`` (Postgres) or
        ``POLL_INTERVAL``: a new event starts a step at once, and the poll stays for retries and
        breakers coming due and for when no LISTEN connection is up (SQLite, an outage). A woken loop
        starts its next step no sooner than ``MIN_ROUND_INTERVAL`` after the last one started: under
        load, events and outcomes gather into steps (one transaction for many) instead of one each."""
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.step()
                except SQLAlchemyError as exc:
                    log.warning("webhook delivery paused, will try again: %s", exc)
                    stop.wait(1.0)
                    continue
                except Exception:
                    log.exception("webhook delivery loop failed, will try again")
                    stop.wait(1.0)
                    continue
                if self.wakeups.wait(self.poll_interval, stop):
                    stop.wait(max(0.0, started + self.min_round_interval - time.monotonic()))
            self._drain()
        finally:
            self.wakeups.close()

    def _drain(self) -> None:
        """Record the POSTs still in flight (they end within the timeout); claim nothing new."""
        deadline = time.monotonic() + self.timeout + 5
        never = threading.Event()
        while self._in_flight and time.monotonic() < deadline:
            try:
                self.step(claim=False)
            except Exception as exc:  # their leases run out and another loop tries them again
                log.warning("webhook: could not record the last outcomes: %s", exc)
                return
            if self._in_flight:
                self.wakeups.wait(0.5, never)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.wakeups.close()


def _deprecated(settings: Settings, name: str, default: float) -> float:
    """A folded setting: its constant, or (for one release; Settings warns) the old variable's value."""
    value = settings.fixed(name)
    return default if value is None else float(value)


def start_delivery_thread(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event
) -> threading.Thread:
    """Run a :class:`Deliverer` on a daemon thread until ``stop`` is set."""
    deliverer = Deliverer(sessions, settings)
    thread = threading.Thread(target=deliverer.run, args=(stop,), name="dfscan-webhooks", daemon=True)
    thread.start()
    return thread
