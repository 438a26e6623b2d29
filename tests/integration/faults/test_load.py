"""Hostile media of every kind in flight in one worker with faces on: every job final, failed ones with
their codes (2 of each kind here; ``make faults`` runs 16 and holds the peak RSS to 1.5 GiB)."""

from __future__ import annotations

from tests.fixtures.faults import fault_service  # noqa: F401
from tests.fixtures.service import Service
from tests.integration.faults import load_scenarios, scenarios


def test_hostile_media_of_every_kind_end_final_with_their_codes(
    fault_service: Service,  # noqa: F811
) -> None:
    outcome = load_scenarios.hostile_load(fault_service, per_kind=2)
    report = outcome.report
    assert report.ok, report.summary()
    assert report.submitted == 8
    assert report.done == 4, outcome.notes  # the crowd and the big JPEGs are judged
    # The 1 x 40,000,000 PNGs are refused before decoding: Pillow's row pointers alone (8 bytes a row,
    # for the decoded image and its RGB copy) are over the decode memory budget.
    assert outcome.notes["tall_png_codes"] == {"TOO_LARGE": 2}, outcome.notes
    assert report.failed == 4 and outcome.notes["clips_wrong_codes"] == 0, outcome.notes
    assert outcome.notes["rss_bound_mib"] == scenarios.RSS_BOUND // 2**20 and outcome.notes["peak_rss_mib"]
