"""Run every fault scenario and print the README table: scenario x submitted/done/failed/lost/duplicated.

    python -m bench.faults                  # every scenario, the 30 s Postgres outage included
    python -m bench.faults --quick          # the fast suite's variants only (5 s outage, no repeated kills)
    python -m bench.faults --markdown faults.md

The scenarios are the functions the pytest suite calls (tests/integration/faults/scenarios.py), each on a
fresh Postgres database and a flushed Redis database (``DFSCAN_TEST_REDIS_DB``, default 11). A scenario
whose own assertions fail is still a row, marked FAILED with the reason; the exit status is 1 when any
row is not ok (a loss, a duplicate, a wrong code, a canary hit, or a failed assertion).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.faults import service_context
from tests.fixtures.service import Service
from tests.integration.faults import load_scenarios, scenarios, webhook_scenarios
from tests.integration.faults.scenarios import Outcome

COLUMNS = ("scenario", "submitted", "done", "failed", "lost", "duplicated", "seconds", "notes")


def _hostile(svc: Service) -> Outcome:
    outcome, expected, stored = scenarios.hostile_sources(svc, svc.tmp)
    wrong = {
        source: (code, stored.get(source)) for source, code in expected.items() if stored.get(source) != code
    }
    outcome.notes["wrong_codes"] = len(wrong)
    peak = outcome.notes["peak_rss_mib"]
    assert isinstance(peak, int)
    if wrong or outcome.notes["canary_hits"] or peak * 2**20 >= scenarios.RSS_BOUND:
        raise AssertionError(f"hostile sources: wrong codes {wrong}, notes {outcome.notes}")
    return outcome


def _hostile_decode(svc: Service) -> Outcome:
    outcome, expected, stored = scenarios.hostile_decode(svc)
    wrong = {
        source: (code, stored.get(source)) for source, code in expected.items() if stored.get(source) != code
    }
    outcome.notes["wrong_codes"] = len(wrong)
    peak = outcome.notes["peak_rss_mib"]
    assert isinstance(peak, int)
    if wrong or peak * 2**20 >= scenarios.RSS_BOUND:
        raise AssertionError(f"hostile decode: wrong codes {wrong}, notes {outcome.notes}")
    return outcome


def _slow_job(svc: Service) -> Outcome:
    outcome = scenarios.slow_job_vs_lease(svc)
    if outcome.notes["requests"] != 1 or outcome.notes["attempts"] != 1:
        raise AssertionError(f"slow job judged more than once: {outcome.notes}")
    return outcome


def all_scenarios(quick: bool) -> list[tuple[str, Callable[[Service], Outcome]]]:
    runs: list[tuple[str, Callable[[Service], Outcome]]] = [
        ("SIGKILL while buffering", scenarios.kill_while_buffering),
        ("SIGKILL while the model runs", scenarios.kill_mid_model),
        ("SIGTERM under load", scenarios.sigterm_under_load),
        ("PostgreSQL stopped 5 s", lambda svc: scenarios.postgres_outage(svc, 5)),
        ("Redis restarted", scenarios.redis_restart),
        ("Redis db flushed", scenarios.redis_flush),
        ("same message delivered 3x", scenarios.duplicate_delivery),
        ("malformed messages", scenarios.malformed_messages),
        ("hostile sources", _hostile),
        ("hostile decode costs (16 threads)", _hostile_decode),
        ("slow job vs lease", _slow_job),
        ("bulk backlog vs sweeper", scenarios.bulk_backlog_vs_sweeper),
        *load_scenarios.ROWS,
    ]
    runs.extend(webhook_scenarios.SCENARIOS)
    if not quick:
        runs.insert(3, ("2 workers, one SIGKILLed 3x", scenarios.one_of_two_killed_repeatedly))
        runs.insert(5, ("PostgreSQL stopped 30 s", lambda svc: scenarios.postgres_outage(svc, 30)))
    return runs


def run_one(name: str, scenario: Callable[[Service], Outcome]) -> dict[str, object]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dfscan-faults-") as tmp, service_context(Path(tmp)) as svc:
        try:
            outcome = scenario(svc)
        except AssertionError as exc:
            return {
                "scenario": name,
                "seconds": round(time.monotonic() - started),
                "notes": f"FAILED: {exc}"[:300],
            }
        row = outcome.row()
        row["scenario"] = name
        row["seconds"] = round(time.monotonic() - started)
        if not outcome.report.ok:
            row["notes"] = f"NOT OK: {outcome.report.summary()}; {row['notes']}"
        return row


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow scenarios")
    parser.add_argument("--only", default="", help="run scenarios whose name contains this text")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name, scenario in all_scenarios(args.quick):
        if args.only.lower() in name.lower():
            rows.append(run_one(name, scenario))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    bad = [r for r in rows if str(r.get("notes", "")).startswith(("FAILED", "NOT OK"))]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
