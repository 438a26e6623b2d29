"""The interactive lane: a bulk backfill cannot starve an urgent image, nor hold every task thread."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image
from sqlalchemy import select

from db.models import ScanJob
from db.session import new_engine, new_session_factory
from producer.client import ScanClient
from tests.fixtures.service import Service
from tests.integration.test_service import settings_for, write_images
from tests.integration.test_worker_kill import slow_service, wait_for


def test_an_interactive_image_overtakes_a_bulk_backlog(service: Service) -> None:
    client = slow_service(service, 81)
    paths = sorted(str(p) for p in service.images.iterdir())
    bulk = client.submit(paths[:80], client_ref="backfill")
    service.start_worker("--concurrency=8")
    wait_for(service, lambda c: c.get("done", 0) >= 1, 120)
    urgent = client.submit(paths[80:], client_ref="urgent", priority=9)
    urgent.wait(120)
    sessions = new_session_factory(new_engine(service.database_url))
    with sessions() as session:
        (urgent_done,) = session.scalars(
            select(ScanJob.finished_at).where(ScanJob.submission_id == urgent.id)
        ).all()
        bulk_states = session.execute(
            select(ScanJob.state, ScanJob.finished_at).where(ScanJob.submission_id == bulk.id)
        ).all()
    later = [1 for state, finished in bulk_states if state != "done" or finished > urgent_done]
    assert len(later) >= 40, f"the urgent image waited behind {80 - len(later)} of 80 bulk images"
    bulk.wait(180)


class _HeldOrigin:
    """An HTTP origin that holds every request until ``release`` is set, then answers with a PNG: bulk
    jobs that keep their task threads busy for as long as the test wants, no clock involved."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        self._lock = threading.Lock()
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "PNG")
        body = buffer.getvalue()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with origin._lock:
                    origin.arrived += 1
                origin.release.wait(300)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}.png"


@contextmanager
def held_origin() -> Iterator[_HeldOrigin]:
    origin = _HeldOrigin()
    thread = threading.Thread(target=origin.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        origin.release.set()
        origin.server.shutdown()
        origin.server.server_close()


def _until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_bulk_jobs_never_hold_the_task_threads_reserved_for_the_interactive_lane(service: Service) -> None:
    """4 task threads for both lanes + 1 reserved: 8 bulk jobs whose fetches hang hold 4 threads (never
    the 5th), and an interactive image is judged while all of them still hang."""
    service.env.update(
        {"DFSCAN_URL_ALLOWLIST": "127.0.0.1", "DFSCAN_READ_TIMEOUT": "300", "DFSCAN_FETCH_DEADLINE": "300"}
    )
    (image,) = write_images(service.images, 1)
    client = ScanClient(settings_for(service))
    with held_origin() as origin:
        worker = service.start_worker("--concurrency=4")
        bulk = client.submit([origin.url(f"bulk{i}") for i in range(8)], client_ref="backfill")
        _until(lambda: origin.arrived >= 4, "4 bulk fetches")
        urgent = client.submit([str(image)], client_ref="urgent", priority=9)
        assert urgent.wait(120)["done"] == 1, "the interactive image waited for a bulk job's thread"
        assert not origin.release.is_set()
        assert origin.arrived == 4, f"{origin.arrived} bulk jobs took threads; 4 may"
        assert wait_for(service, lambda c: c.get("done", 0) == 1, 10).get("running", 0) == 4
        origin.release.set()
        assert bulk.wait(180)["done"] == 8
        assert origin.arrived == 8
    assert "concurrency: 5 (thread)" in worker.text()  # 4 for both lanes + 1 reserved
