"""Hostile sources mixed into a normal submission: each ends with its exact code, the canary on
127.0.0.1 and ::1 is never contacted, and the worker's memory stays bounded."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import scenarios


def test_hostile_sources_fail_with_their_codes_and_touch_nothing(
    fault_service: Service,  # noqa: F811
    tmp_path: Path,
) -> None:
    outcome, expected, stored = scenarios.hostile_sources(fault_service, tmp_path)
    report = outcome.report
    assert report.ok, report.summary()
    assert stored == expected
    assert report.done == sum(1 for code in expected.values() if code is None)
    assert outcome.notes["canary_hits"] == 0
    assert outcome.notes["rss_samples"] > 10  # type: ignore[operator]
    assert outcome.notes["peak_rss_mib"] * 1024 * 1024 < scenarios.RSS_BOUND  # type: ignore[operator]


def test_hostile_decodes_end_with_their_codes_in_bounded_memory(
    fault_service: Service,  # noqa: F811
) -> None:
    outcome, expected, stored = scenarios.hostile_decode(fault_service, full=False)
    assert outcome.report.ok, outcome.report.summary()
    assert stored == expected
    assert outcome.report.done == sum(1 for code in expected.values() if code is None)
    assert outcome.notes["peak_rss_mib"] * 1024 * 1024 < scenarios.RSS_BOUND  # type: ignore[operator]
