"""The review console's queue page with 100,000 verdicts in one tenant: p50/p99 of whole pages (auth cookie,
queries, template) through the ASGI app in process on a real Postgres, and, paired in the same run, the
queue query with its partial index (``ix_scan_jobs_review_queue``) against the same query with the tenant's
indexes on scan_jobs dropped inside a rolled-back transaction (A B A B pairs).

    python -m bench.console [--verdicts 100000] [--requests 200] [--pairs 3]

The machine is shared and loaded: read the ratios and the spread, not the absolute figures alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid

from sqlalchemy import text

from bench._service import fresh_postgres_url

TENANT = "bench"


def _fill(url: str, n: int, other: int) -> tuple[uuid.UUID, str]:
    """``n`` done jobs with verdicts in tenant ``bench`` (and ``other`` in the default tenant), newest
    one a second apart; a review key for ``bench``."""
    from db.migrate import upgrade
    from db.session import new_engine, new_session_factory
    from db.tenants import create_key, create_tenant
    from dfscan.tenants import DEFAULT_TENANT_ID

    upgrade(url)
    engine = new_engine(url)
    with new_session_factory(engine).begin() as s:
        tenant = create_tenant(s, TENANT)
        key = create_key(s, tenant.id, ("read", "review")).raw
        for tenant_id, count in ((tenant.id, n), (DEFAULT_TENANT_ID, other)):
            sub = uuid.uuid4()
            s.execute(
                text(
                    "INSERT INTO submissions (id, tenant_id, n_jobs, client_ref) VALUES (:id, :t, :n, 'bench')"
                ),
                {"id": sub, "t": tenant_id, "n": count},
            )
            s.execute(
                text(
                    """
                    INSERT INTO scan_jobs (id, submission_id, tenant_id, seq, source, client_ref, state, attempts,
                                           created_at, finished_at)
                    SELECT gen_random_uuid(), :sub, :t, i, 'upload:' || i || '.jpg',
                           CASE WHEN i % 10 = 0 THEN 'ref-' || (i % 100) END, 'done', 1,
                           now() - i * interval '1 second', now() - i * interval '1 second'
                    FROM generate_series(1, :n) AS i
                    """
                ),
                {"sub": sub, "t": tenant_id, "n": count},
            )
            s.execute(
                text(
                    """
                    INSERT INTO verdicts (job_id, label, fake_score, threshold, judged_on, model_version,
                                          image_sha256, image_format, width, height, media, created_at)
                    SELECT j.id, CASE WHEN r.p >= 0.5 THEN 'fake' ELSE 'real' END, r.p, 0.5, 'image',
                           CASE WHEN j.seq % 2 = 0 THEN 'vit@1' ELSE 'vit@2' END,
                           md5(j.id::text) || md5(j.seq::text), 'JPEG', 640, 480, 'image', j.created_at
                    FROM scan_jobs j CROSS JOIN LATERAL (SELECT random() * (0.999 + 0 * j.seq) AS p) r
                    WHERE j.submission_id = :sub
                    """
                ),
                {"sub": sub},
            )
        # Faces on a tenth, reviews on a twentieth (the queue shows both).
        s.execute(
            text(
                """
                INSERT INTO verdict_faces (job_id, seq, x, y, w, h, score, fake_score)
                SELECT j.id, 0, 10, 10, 100, 100, 0.99, 0.5 FROM scan_jobs j WHERE j.tenant_id = :t AND j.seq % 10 = 3
                """
            ),
            {"t": tenant.id},
        )
        s.execute(
            text(
                """
                INSERT INTO reviews (job_id, tenant_id, decision, created_at)
                SELECT j.id, j.tenant_id, 'real', now() FROM scan_jobs j WHERE j.tenant_id = :t AND j.seq % 20 = 7
                """
            ),
            {"t": tenant.id},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return tenant.id, key


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered), p99, ordered[-1]


def _pages(url: str, key: str, requests: int) -> dict[str, tuple[float, float, float, float]]:
    from fastapi.testclient import TestClient

    from dfscan.api.app import create_app
    from dfscan.settings import Settings

    app = create_app(Settings(_env_file=None, database_url=url, console_secret="bench-" + "x" * 26))  # type: ignore[call-arg]
    out: dict[str, tuple[float, float, float, float]] = {}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        form = client.get("/ui/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        signed = client.post(
            "/ui/login", data={"api_key": key, "csrf_token": token.group(1)}, follow_redirects=False
        )
        assert signed.status_code == 303, signed.text
        # A cursor deep in the queue: follow 'Older' links 20 times (row 1,000), then jump by id.
        deep = "/ui/queue"
        for _ in range(20):
            page = client.get(deep).text
            found = re.search(r'rel="next" href="([^"]+)"', page)
            assert found is not None
            deep = found.group(1).replace("&amp;", "&")
        cases = {
            "first page, all": "/ui/queue",
            "page 21 (keyset), all": deep,
            "first page, fake": "/ui/queue?label=fake",
            "first page, near threshold": "/ui/queue?label=near",
            "first page, client_ref": "/ui/queue?client_ref=ref-40",
            "first page, model vit@2": "/ui/queue?model_version=vit@2",
            "first page, not reviewed": "/ui/queue?state=unreviewed",
        }
        for name, path in cases.items():
            answer = client.get(path)
            assert answer.status_code == 200 and answer.text.count('class="row"') > 0, (
                name,
                answer.status_code,
            )
            samples = []
            cpu0 = time.process_time()
            for _ in range(requests):
                t0 = time.perf_counter()
                assert client.get(path).status_code == 200
                samples.append((time.perf_counter() - t0) * 1000)
            cpu_ms = (time.process_time() - cpu0) * 1000 / requests
            out[name] = (*_percentiles(samples), cpu_ms)
    return out


def _query_ms(url: str, tenant_id: uuid.UUID, *, with_index: bool, repeats: int = 30) -> float:
    from db import reviews
    from db.session import new_engine, new_session_factory

    engine = new_engine(url)
    try:
        with new_session_factory(engine)() as s:
            s.begin()
            if not with_index:  # neither the queue's index nor the tenant's (tenant_id, created_at) one
                s.execute(text("DROP INDEX ix_scan_jobs_review_queue"))
                s.execute(text("DROP INDEX ix_scan_jobs_tenant_id_created_at"))
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                reviews.queue(s, tenant_id, reviews.QueueFilters(), limit=50)
                samples.append((time.perf_counter() - t0) * 1000)
            s.rollback()  # the index comes back
        return statistics.median(samples)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--other", type=int, default=20_000, help="verdicts of another tenant beside them")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args(argv)
    with fresh_postgres_url() as url:
        t0 = time.perf_counter()
        tenant_id, key = _fill(url, args.verdicts, args.other)
        print(
            f"filled {args.verdicts:,} verdicts (+{args.other:,} in another tenant) in {time.perf_counter() - t0:.1f} s"
        )
        print(f"\nqueue page through the app ({args.requests} requests each, ms):")
        print(f"  {'case':32} {'p50':>8} {'p99':>8} {'max':>8} {'CPU/req':>8}")
        for name, (p50, p99, worst, cpu) in _pages(url, key, args.requests).items():
            verdict = "ok" if p99 <= 200 else "OVER 200 ms"
            print(f"  {name:32} {p50:8.1f} {p99:8.1f} {worst:8.1f} {cpu:8.1f}  {verdict}")
        print(
            f"\nqueue query, first page, median of 30 (ms), A = indexed, B = tenant indexes dropped; {args.pairs} pairs:"
        )
        ratios = []
        for pair in range(args.pairs):
            a = _query_ms(url, tenant_id, with_index=True)
            b = _query_ms(url, tenant_id, with_index=False)
            ratios.append(b / a)
            print(f"  pair {pair + 1}: A {a:7.2f}  B {b:7.2f}  B/A {b / a:5.1f}x")
        print(f"  B/A median {statistics.median(ratios):.1f}x (min {min(ratios):.1f}, max {max(ratios):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
