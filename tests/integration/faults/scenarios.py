"""The fault scenarios, shared by the pytest modules beside this file and by ``python -m bench.faults``.

Each scenario takes a fresh ``Service`` (real Postgres database, own Redis db, real ``dfscan worker``
processes), causes its fault, asserts what must hold on the way (loudly: AssertionError with the
counts) and ends in the invariant checker. It returns an ``Outcome`` whose ``report`` is the
checker's ``CheckReport``; the caller asserts ``report.ok`` and the exact counts and codes.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from db.models import ScanJob
from db.results import CheckReport
from db.session import new_engine, new_session_factory
from dfscan.outbox import send_job
from dfscan.queueing import SCAN_TASK, new_celery_app, queue_lists
from producer.check import check_submission
from producer.client import ScanClient, Submission
from tests.fixtures import faults
from tests.fixtures.service import Service, save_slow_vit
from tests.integration.test_service import raw_celery_message, settings_for, write_images
from tests.integration.test_worker_kill import state_counts, wait_for


@dataclass
class Outcome:
    name: str
    report: CheckReport
    notes: dict[str, object] = field(default_factory=dict)
    log: str = ""

    def row(self) -> dict[str, object]:
        r = self.report
        return {
            "scenario": self.name,
            "submitted": r.submitted,
            "done": r.done,
            "failed": r.failed,
            "lost": len(r.lost) + len(r.missing_seqs),
            "duplicated": len(r.duplicated),
            "notes": ", ".join(f"{k}={v}" for k, v in self.notes.items()),
        }


def finish(name: str, svc: Service, sub: Submission, deadline: float = 120.0, **notes: object) -> Outcome:
    """Wait for every job to be final (up to ``deadline`` s), then run the invariant checker."""
    report = check_submission(settings_for(svc), sub.id, deadline=deadline)
    return Outcome(name, report, dict(notes))


def _slow_client(svc: Service, n: int) -> tuple[ScanClient, list[str]]:
    svc.env["DFSCAN_MODEL"] = str(save_slow_vit(svc.tmp / "slow-model"))
    paths = write_images(svc.images, n, size=(320, 240))
    return ScanClient(settings_for(svc)), [str(p) for p in paths]


# --- killed workers -----------------------------------------------------------------------------


def kill_while_buffering(svc: Service) -> Outcome:
    """SIGKILL a worker whose claimed jobs all wait in the batcher (batch of 64, 60 s wait), restart it."""
    client = ScanClient(settings_for(svc))
    paths = [str(p) for p in write_images(svc.images, 24)]
    worker = svc.start_worker(
        "--concurrency=8", env={"DFSCAN_BATCH_SIZE": "64", "DFSCAN_BATCH_WAIT_MS": "60000"}
    )
    # Interactive: on a CPU only interactive images share a batch (bulk inputs go one per forward
    # pass), so these are the ones that wait out the 60 s batch window.
    sub = client.submit(paths, priority=9)
    at_kill = wait_for(svc, lambda c: c.get("running", 0) >= 8, 60)
    time.sleep(0.5)  # the 8 claimed images are decoded and handed to the batcher, which waits
    at_kill = state_counts(svc)
    worker.kill()
    assert at_kill.get("done", 0) == 0 and at_kill["verdicts"] == 0, f"a batch ran before the kill: {at_kill}"
    svc.start_worker("--sweeper")
    return finish("SIGKILL while buffering", svc, sub, buffered_at_kill=at_kill.get("running", 0))


def kill_mid_model(svc: Service) -> Outcome:
    """SIGKILL a worker while the (slow) model runs batches, restart it."""
    client, paths = _slow_client(svc, 48)
    sub = client.submit(paths)
    worker = svc.start_worker()
    wait_for(svc, lambda c: c.get("done", 0) >= 8, 120)
    worker.kill()
    at_kill = state_counts(svc)
    assert at_kill.get("done", 0) < 48, f"the worker finished before it was killed: {at_kill}"
    assert at_kill.get("running", 0) > 0, f"no job was in flight when the worker was killed: {at_kill}"
    svc.start_worker("--sweeper")
    return finish("SIGKILL while the model runs", svc, sub, 180, in_flight_at_kill=at_kill["running"])


def sigterm_under_load(svc: Service) -> Outcome:
    """SIGTERM (warm shutdown) mid-run: running work finishes or goes back; a new worker (no sweeper)
    finishes the rest from the messages still in Redis."""
    client, paths = _slow_client(svc, 40)
    sub = client.submit(paths)
    worker = svc.start_worker("--concurrency=4")
    wait_for(svc, lambda c: c.get("done", 0) >= 4, 120)
    code = worker.terminate(timeout=120)
    after = state_counts(svc)
    assert code == 0, f"warm shutdown exited {code}:\n{worker.text()[-3000:]}"
    assert after.get("running", 0) == 0 and after.get("failed", 0) == 0, f"drain left {after}"
    assert after.get("done", 0) < 40, f"the worker finished before SIGTERM: {after}"
    svc.start_worker()
    return finish("SIGTERM under load", svc, sub, 180, done_at_sigterm=after.get("done", 0))


def one_of_two_killed_repeatedly(svc: Service, kills: int = 3) -> Outcome:
    """Two workers on one queue; one is SIGKILLed ``kills`` times (and restarted) while the other runs."""
    client, paths = _slow_client(svc, 128)
    svc.start_worker("--concurrency=4", "--name=steady@faults", "--sweeper")
    victim = svc.start_worker("--concurrency=4", "--name=victim@faults")
    sub = client.submit(paths)
    for _ in range(kills):
        _wait_running_on(svc, f":{victim.proc.pid}", 120)  # killed while it holds claimed work
        victim.kill()
        at_kill = state_counts(svc)
        victim = svc.start_worker("--concurrency=4", "--name=victim@faults")
    assert at_kill.get("done", 0) < 128, f"everything was done before the last kill: {at_kill}"
    return finish(f"2 workers, one SIGKILLed {kills}x", svc, sub, 240, kills=kills)


def _wait_running_on(svc: Service, worker_suffix: str, timeout: float) -> None:
    """Wait until a job is running on the worker whose runtime name (host:pid) ends with the suffix."""
    sessions = new_session_factory(new_engine(svc.database_url))
    query = (
        select(func.count())
        .select_from(ScanJob)
        .where(ScanJob.state == "running", ScanJob.worker.like(f"%{worker_suffix}"))
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            if session.scalar(query):
                return
        time.sleep(0.1)
    raise AssertionError(
        f"no job ran on a worker named *{worker_suffix} within {timeout}s: {state_counts(svc)}"
    )


# --- broker and database outages ----------------------------------------------------------------


def postgres_outage(svc: Service, seconds: float) -> Outcome:
    """Stop PostgreSQL for ``seconds`` mid-run, start it again: every job still ends once."""
    client, paths = _slow_client(svc, 32)
    sub = client.submit(paths)
    worker = svc.start_worker("--sweeper")
    wait_for(svc, lambda c: c.get("done", 0) >= 4, 120)
    with faults.postgres_stopped():
        time.sleep(seconds)
        assert worker.proc.poll() is None, "the worker died while PostgreSQL was down"
    assert worker.proc.poll() is None, worker.text()[-3000:]
    return finish(f"PostgreSQL stopped {seconds:.0f} s", svc, sub, 240, outage_s=seconds)


def redis_restart(svc: Service) -> Outcome:
    """Restart Redis (no persistence: queued messages vanish) mid-run; the same worker process keeps
    consuming, and a submission made after the restart completes too."""
    client, paths = _slow_client(svc, 32)
    sub = client.submit(paths)
    worker = svc.start_worker("--sweeper")
    wait_for(svc, lambda c: c.get("done", 0) >= 4, 120)
    faults.restart_redis()
    assert worker.proc.poll() is None, f"the worker died with Redis:\n{worker.text()[-3000:]}"
    outcome = finish("Redis restarted", svc, sub, 180)
    later = client.submit(paths[:4])
    late = check_submission(settings_for(svc), later.id, deadline=60)
    assert late.ok and late.done == 4, f"no consumption after the Redis restart: {late.summary()}"
    assert worker.proc.poll() is None and len(svc.workers) == 1
    outcome.notes["worker_restarts"] = 0
    return outcome


def redis_flush(svc: Service) -> Outcome:
    """FLUSHDB the worker's Redis db mid-run: the sweeper re-sends every job from Postgres."""
    client, paths = _slow_client(svc, 32)
    sub = client.submit(paths)
    svc.start_worker("--sweeper")
    wait_for(svc, lambda c: c.get("done", 0) >= 4, 120)
    faults.flush_own_db(svc)
    left = 32 - state_counts(svc).get("done", 0)
    return finish("Redis db flushed", svc, sub, 180, unfinished_at_flush=left)


# --- leases and the sweeper ---------------------------------------------------------------------

SLOW_SECONDS = 7.0  # the slow origin's answer time: over 3 leases, under the visibility timeout (10 s)


def _job_rows(svc: Service, sub: Submission) -> list[ScanJob]:
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        return list(session.scalars(select(ScanJob).where(ScanJob.submission_id == sub.id)))


def slow_job_vs_lease(svc: Service) -> Outcome:
    """A job that takes 3.5 leases (a slow origin) beside quick ones, with the sweeper sweeping every
    second: its worker renews the lease, so it is fetched once, claimed once and judged once."""
    lease = 2
    paths = [str(p) for p in write_images(svc.images, 4)]
    with faults.serve_http_on("127.0.0.2", {"/slow.png": Path(paths[0]).read_bytes()}) as web:
        web.delays["/slow.png"] = SLOW_SECONDS
        slow_url = web.url("/slow.png", host="127.0.0.2")
        worker = svc.start_worker(
            "--sweeper",
            env={
                "DFSCAN_URL_ALLOWLIST": "127.0.0.2/32",
                "DFSCAN_LEASE_SECONDS": str(lease),
                "DFSCAN_SWEEP_INTERVAL": "1",
            },
        )
        sub = ScanClient(settings_for(svc)).submit([slow_url, *paths])
        outcome = finish("slow job vs lease", svc, sub, 60)
        time.sleep(2 * lease)  # a late duplicate would show up here
        outcome.report = check_submission(settings_for(svc), sub.id)
        requests = web.hits["/slow.png"]
    (slow,) = [row for row in _job_rows(svc, sub) if row.source == slow_url]
    outcome.notes.update(lease_s=lease, job_s=SLOW_SECONDS, requests=requests, attempts=slow.attempts)
    outcome.log = worker.text()
    assert slow.state == "done", (slow.state, slow.error_code, slow.error_message)
    return outcome


def _backlog_jobs(svc: Service) -> int:
    from dfscan.outbox import queued_job_ids

    return len(queued_job_ids(svc.broker_url))


def bulk_backlog_vs_sweeper(svc: Service, n: int = 400, per_message: int = 8) -> Outcome:
    """A bulk backlog (``n`` jobs, ``per_message`` a message) with no worker consuming, a 2 s lease and a
    sweep every second: its message count holds over several leases (the sweeper counts jobs, not
    messages). Then Redis is flushed: the sweeper re-sends every job, once. Then a worker drains it."""
    lease = 2
    messages = -(-n // per_message)
    env = {"DFSCAN_JOBS_PER_MESSAGE": str(per_message), "DFSCAN_LEASE_SECONDS": str(lease)}
    svc.env.update({**env, "DFSCAN_SWEEP_INTERVAL": "1"})
    paths = [str(p) for p in write_images(svc.images, n, size=(16, 16))]
    client = ScanClient(settings_for(svc).model_copy(update={"jobs_per_message": per_message}))
    sub = client.submit(paths)
    assert svc.messages() == messages, svc.messages()
    sweeper = faults.start_process(svc, "sweeper", "sweeper")
    try:
        counts: list[int] = []
        for _ in range(4 * lease):  # four leases of sweeps, each of which judged the backlog stale
            time.sleep(1.0)
            counts.append(int(svc.messages()))
        assert counts == [messages] * len(counts), f"backlog messages changed under the sweeper: {counts}"
        faults.flush_own_db(svc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _backlog_jobs(svc) < n:
            time.sleep(0.5)
        recovered = _backlog_jobs(svc)
        assert recovered == n, f"after the flush the broker names {recovered} of {n} jobs"
        time.sleep(2 * lease)  # and the re-sent backlog does not grow either
        after = int(svc.messages())
        assert after == messages, f"{after} messages after the re-send, expected {messages}"
    finally:
        sweeper.kill()
    svc.start_worker(env=env)
    return finish(
        "bulk backlog vs sweeper",
        svc,
        sub,
        180,
        messages=messages,
        llen_per_sweep=counts[-1],
        after_flush=after,
    )


# --- messages ------------------------------------------------------------------------------------


def duplicate_delivery(svc: Service) -> Outcome:
    """Every message of a submission delivered three times: one verdict per job."""
    paths = [str(p) for p in write_images(svc.images, 8)]
    sub = ScanClient(settings_for(svc)).submit(paths)
    app = new_celery_app(settings_for(svc))
    for job_id in sub.job_ids:
        send_job(app, job_id, 0)
        send_job(app, job_id, 0)
    svc.start_worker()
    outcome = finish("same message delivered 3x", svc, sub, 60)
    time.sleep(1.0)  # the extra deliveries run too
    outcome.report = check_submission(settings_for(svc), sub.id)
    outcome.notes["deliveries"] = 3 * len(paths)
    return outcome


MALFORMED_KINDS = (
    "unknown field beside job_id",
    "job_id not a UUID",
    "empty sources",
    "source not a string",
    "args not a list",
    "body not JSON",
)


def _raw(body: bytes, queue: str = "inference") -> bytes:
    """A protocol v2 envelope around an arbitrary (possibly not-JSON) body."""
    message = json.loads(raw_celery_message(SCAN_TASK, queue, [], {}))
    message["body"] = base64.b64encode(body).decode()
    return json.dumps(message).encode()


def malformed_messages(svc: Service) -> Outcome:
    """Malformed raw messages among normal ones: the named job fails BAD_MESSAGE, nothing else is
    written, and the worker keeps consuming."""
    paths = [str(p) for p in write_images(svc.images, 6)]
    sub = ScanClient(settings_for(svc)).submit(paths)
    r = svc.redis()
    r.delete(*queue_lists("inference"))  # the producer's messages: the test decides what is delivered
    victim, *others = sub.job_ids
    bad = [
        raw_celery_message(SCAN_TASK, "inference", [], {"job_id": str(victim), "colour": "red"}),
        raw_celery_message(SCAN_TASK, "inference", [], {"job_id": "not-a-uuid"}),
        raw_celery_message(SCAN_TASK, "inference", [], {"sources": []}),
        raw_celery_message(SCAN_TASK, "inference", [], {"sources": [17, None]}),
        raw_celery_message(SCAN_TASK, "inference", [{"job_id": str(victim)}, 3], {}),
        _raw(b"\x00\x01 this is not JSON {"),
    ]
    assert len(bad) == len(MALFORMED_KINDS)
    for message in bad:
        r.lpush("inference", message)
    app = new_celery_app(settings_for(svc))
    worker = svc.start_worker()
    for job_id in others:
        send_job(app, job_id, 0)
    outcome = finish("malformed messages", svc, sub, 60, malformed=len(bad))
    assert worker.proc.poll() is None, f"a malformed message stopped the worker:\n{worker.text()[-3000:]}"
    outcome.log = worker.text()
    return outcome


# --- hostile sources ----------------------------------------------------------------------------

SUCCEEDS = ("jpeg_cmyk", "png_16bit", "png_palette_alpha", "png_named_jpg", "gif_animated", "png")
CORPUS_FAILS = (
    "jpeg_truncated", "empty", "random_bytes", "text_named_jpg", "png_bomb", "png_bomb_huge", "gif_many_frames",
)  # fmt: skip
RSS_BOUND = 1536 * 1024 * 1024  # a tiny-ViT worker idles near 0.5 GiB; a bomb or a 1 GB body would pass this


def hostile_sources(svc: Service, tmp: Path) -> tuple[Outcome, dict[str, str | None], dict[str, str | None]]:
    """Hostile files, paths and URLs mixed into a normal submission. Returns the outcome, the expected
    code per source (None: must succeed) and the stored code per source."""
    from tests.fixtures.corpus import make_corpus

    corpus = make_corpus(svc.images / "corpus")
    outside = tmp / "outside"
    outside.mkdir()
    (secret,) = write_images(outside, 1, prefix="secret")
    (svc.images / "escape.png").symlink_to(secret)
    (svc.images / "zero.png").symlink_to("/dev/zero")
    normal = [str(p) for p in write_images(svc.images, 8)]
    expected: dict[str, str | None] = {p: None for p in normal}
    expected.update({str(corpus[name][0]): None for name in SUCCEEDS})
    expected.update({str(corpus[name][0]): corpus[name][1] for name in CORPUS_FAILS})
    expected.update(_hostile_videos(svc.images / "videos"))
    expected.update(
        {
            f"{svc.images}/../outside/{secret.name}": "PATH_NOT_ALLOWED",
            str(svc.images / "escape.png"): "PATH_NOT_ALLOWED",
            str(svc.images / "zero.png"): "PATH_NOT_ALLOWED",
            "/dev/zero": "PATH_NOT_ALLOWED",
            "/proc/self/environ": "PATH_NOT_ALLOWED",
        }
    )
    with faults.canary() as bird, faults.serve_http_on("127.0.0.2", {"/photo.jpg": _jpeg(corpus)}) as web:
        c4, c6 = bird.port, bird.port6
        expected.update(
            {
                web.url("/photo.jpg", host="127.0.0.2"): None,  # the allow-listed server does work
                web.url("/big", host="127.0.0.2"): "TOO_LARGE",  # declares 10 GiB
                web.url("/nolength", host="127.0.0.2"): "TOO_LARGE",  # 50 MiB, no length: cut at the cap
                web.url("/endless", host="127.0.0.2"): "TOO_LARGE",  # chunked, never ends
                web.url("/lying", host="127.0.0.2"): "UNSUPPORTED_FORMAT",  # says 10 bytes, floods
                web.url("/slow", host="127.0.0.2"): "FETCH_TIMEOUT",  # a byte a second
                web.url(f"/redirect?to=http://127.0.0.1:{c4}/a.jpg", host="127.0.0.2"): "BLOCKED_DESTINATION",
                web.url(f"/redirect?to=http://[::1]:{c6}/a.jpg", host="127.0.0.2"): "BLOCKED_DESTINATION",
                f"http://127.0.0.1:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://2130706433:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://0x7f000001:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://0177.0.0.1:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://127.1:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://localhost:{c4}/a.jpg": "BLOCKED_DESTINATION",
                f"http://[::1]:{c6}/a.jpg": "BLOCKED_DESTINATION",
                f"http://[::ffff:127.0.0.1]:{c4}/a.jpg": "BLOCKED_DESTINATION",
                "file:///proc/self/environ": "UNSUPPORTED_SOURCE",
                f"gopher://127.0.0.1:{c4}/_GET": "UNSUPPORTED_SOURCE",
            }
        )
        sources = list(expected)
        worker = svc.start_worker(
            "--concurrency=4",
            env={
                "DFSCAN_URL_ALLOWLIST": "127.0.0.2/32",
                "DFSCAN_FETCH_DEADLINE": "3",
                "DFSCAN_MAX_ATTEMPTS": "2",
            },
        )
        with faults.RssSampler(worker.proc.pid) as rss:
            sub = ScanClient(settings_for(svc)).submit(sources)
            outcome = finish("hostile sources", svc, sub, 120)
        assert worker.proc.poll() is None, worker.text()[-3000:]
        hits = bird.hits
    stored = {row.source: row.error_code for row in sub.results()}
    outcome.notes.update(canary_hits=hits, peak_rss_mib=rss.peak // (1024 * 1024))
    outcome.notes["rss_samples"] = rss.samples
    return outcome, expected, stored


def _hostile_videos(folder: Path) -> dict[str, str | None]:
    """Every hostile video of tests/fixtures/videos.py with its code, and one ordinary clip that must pass."""
    from tests.fixtures.videos import hostile_corpus, make_clip

    folder.mkdir()
    expected: dict[str, str | None] = {}
    for name, (data, code) in hostile_corpus().items():
        (folder / f"{name}.mp4").write_bytes(data)
        expected[str(folder / f"{name}.mp4")] = code
    (folder / "ordinary.webm").write_bytes(make_clip(container="webm", codec="libvpx-vp9", seconds=2.0))
    expected[str(folder / "ordinary.webm")] = None
    return expected


def _jpeg(corpus: dict[str, tuple[Path, str | None]]) -> bytes:
    return corpus["jpeg"][0].read_bytes()


def hostile_decode(
    svc: Service, *, full: bool = True
) -> tuple[Outcome, dict[str, str | None], dict[str, str | None]]:
    """The decode-cost attacks of tests/fixtures/hostile.py (``full``: the sizes measured on the old main) on
    one worker with 16 task threads. Returns the outcome (notes: the worker's peak RSS, the longest job
    from started to finished among those refused with a code and among those decoded and judged), the
    expected code per source (None: must succeed) and the stored one."""
    from tests.fixtures.hostile import hostile_cases

    folder = svc.images / "hostile"
    folder.mkdir()
    expected: dict[str, str | None] = {}
    for name, case in hostile_cases(full=full).items():
        path = folder / name
        path.write_bytes(case.data)
        expected[str(path)] = case.code
    worker = svc.start_worker("--concurrency=16")
    with faults.RssSampler(worker.proc.pid) as rss:
        sub = ScanClient(settings_for(svc)).submit(list(expected))
        outcome = finish("hostile decode", svc, sub, 300)
    assert worker.proc.poll() is None, worker.text()[-3000:]
    stored = {row.source: row.error_code for row in sub.results()}
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        spans = session.execute(
            select(ScanJob.started_at, ScanJob.finished_at, ScanJob.error_code).where(
                ScanJob.submission_id == sub.id
            )
        ).all()
    seconds = {True: [0.0], False: [0.0]}  # refused (has a code) / decoded
    for start, end, code in spans:
        if start and end:
            seconds[code is not None].append((end - start).total_seconds())
    outcome.notes.update(
        peak_rss_mib=rss.peak // (1024 * 1024),
        longest_refused_s=round(max(seconds[True]), 2),
        longest_decoded_s=round(max(seconds[False]), 2),
    )
    outcome.notes["rss_samples"] = rss.samples
    return outcome, expected, stored
