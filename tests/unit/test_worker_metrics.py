"""The worker's metric hooks, without a worker: outcome counting, the batcher's callback, stages."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import torch
from prometheus_client import REGISTRY

from worker import metrics
from worker.inference.model.batcher import DynamicBatcher


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_settled_outcomes_are_counted_by_status_code_and_lane() -> None:
    before = sample("dfscan_jobs_total", outcome="failed", error_code="TOO_LARGE", lane="lane-a")
    done = sample("dfscan_jobs_total", outcome="done", error_code="", lane="lane-a")
    metrics.count_settled({"job_id": "x", "status": "failed", "error_code": "TOO_LARGE"}, "lane-a")
    metrics.count_settled(
        {
            "status": "done",
            "jobs": {
                "a": {"status": "done"},
                "b": "skipped",
                "c": {"status": "retrying", "error_code": "FETCH_FAILED"},
            },
        },
        "lane-a",
    )
    metrics.count_settled({"job_id": "y", "status": "skipped"}, "lane-a")
    assert sample("dfscan_jobs_total", outcome="failed", error_code="TOO_LARGE", lane="lane-a") == before + 1
    assert sample("dfscan_jobs_total", outcome="done", error_code="", lane="lane-a") == done + 1
    assert sample("dfscan_jobs_total", outcome="retrying", error_code="FETCH_FAILED", lane="lane-a") >= 1


def test_tracked_counts_in_flight_jobs_and_the_lane_of_the_message() -> None:
    seen: list[float] = []

    @metrics.tracked
    def process(task: object, rt: object, job_ids: tuple[str, ...]) -> dict[str, object]:
        seen.append(sample("dfscan_jobs_in_flight"))
        return {"job_id": job_ids[0], "status": "done"}

    done = sample("dfscan_jobs_total", outcome="done", error_code="", lane="inference.interactive")
    task = SimpleNamespace(request=SimpleNamespace(delivery_info={"routing_key": "inference.interactive"}))
    process(task, None, ("j1", "j2"))
    assert seen == [2.0] and sample("dfscan_jobs_in_flight") == 0
    assert (
        sample("dfscan_jobs_total", outcome="done", error_code="", lane="inference.interactive") == done + 1
    )


def test_the_lane_label_is_bounded_whatever_routing_keys_clients_choose() -> None:
    def series() -> set[str]:
        return {
            sample.labels["lane"]
            for metric in REGISTRY.collect()
            if metric.name == "dfscan_jobs"
            for sample in metric.samples
        }

    before = sample("dfscan_jobs_total", outcome="done", error_code="", lane="other")
    for n in range(20):
        task = SimpleNamespace(request=SimpleNamespace(delivery_info={"routing_key": f"client-key-{n}"}))
        metrics.count_settled({"job_id": "x", "status": "done"}, metrics.lane_of(task))
    assert sample("dfscan_jobs_total", outcome="done", error_code="", lane="other") == before + 20
    assert not any(lane.startswith("client-key") for lane in series())
    assert series() <= {*metrics.LANES, "other", "lane-a"}  # lane-a: the test above passes a lane itself
    for lane in metrics.LANES:
        task = SimpleNamespace(request=SimpleNamespace(delivery_info={"routing_key": lane}))
        assert metrics.lane_of(task) == lane


def test_jobs_of_a_rejected_message_count_as_failed_bad_message_in_its_lane() -> None:
    task = SimpleNamespace(request=SimpleNamespace(delivery_info={"routing_key": "training"}))
    metrics.count_rejected(task, 0)  # a rejected message that named no job (or only final ones)
    assert sample("dfscan_jobs_total", outcome="failed", error_code="BAD_MESSAGE", lane="training") == 0
    metrics.count_rejected(task, 2)
    other = sample("dfscan_jobs_total", outcome="failed", error_code="BAD_MESSAGE", lane="other")
    metrics.count_rejected(SimpleNamespace(request=SimpleNamespace(delivery_info=None)), 1)
    assert sample("dfscan_jobs_total", outcome="failed", error_code="BAD_MESSAGE", lane="training") == 2
    assert sample("dfscan_jobs_total", outcome="failed", error_code="BAD_MESSAGE", lane="other") == other + 1


def test_the_batcher_reports_each_batch_size_and_a_failing_hook_fails_nothing() -> None:
    sizes: list[int] = []
    batcher = DynamicBatcher(
        lambda x: [0.5] * len(x), max_batch=4, max_wait=0.05, on_batch=lambda n, s: sizes.append(n)
    )
    futures = [batcher.submit(torch.zeros(3, 2, 2)) for _ in range(6)]
    assert [f.result(5) for f in futures] == [0.5] * 6
    batcher.close(5)
    assert sum(sizes) == 6 and max(sizes) <= 4

    def broken(n: int, s: float) -> None:
        raise RuntimeError("metrics down")

    other = DynamicBatcher(lambda x: [0.1] * len(x), max_batch=2, max_wait=0.0, on_batch=broken)
    assert other.submit(torch.zeros(3, 2, 2)).result(5) == 0.1
    other.close(5)


def test_model_batches_feed_inputs_batches_and_the_size_histogram() -> None:
    inputs, batches = sample("dfscan_model_inputs_total"), sample("dfscan_model_batches_total")
    metrics.model_batch(8, 0.03)
    metrics.model_batch(3, 0.01)
    assert sample("dfscan_model_inputs_total") == inputs + 11
    assert sample("dfscan_model_batches_total") == batches + 2
    assert sample("dfscan_model_batch_size_bucket", le="4.0") >= 1


def test_stages_come_from_judgements_claims_and_timed_blocks() -> None:
    def count(stage: str) -> float:
        return sample("dfscan_stage_seconds_count", stage=stage)

    before = {stage: count(stage) for stage in metrics.STAGES}
    waited = sample("dfscan_stage_seconds_sum", stage="queue_wait")
    judged = SimpleNamespace(fetch_ms=5.0, decode_ms=2.0, infer_ms=30.0, cached=False)
    cached = SimpleNamespace(fetch_ms=5.0, decode_ms=0.0, infer_ms=0.0, cached=True)
    failed = SimpleNamespace(done=False, fetch_ms=5.0, decode_ms=1.0, infer_ms=0.0, cached=False)
    metrics.observe_outcomes([judged, cached, ValueError("bad image"), failed])
    now = datetime.now(timezone.utc)
    metrics.observe_claims(
        [SimpleNamespace(queued_at=now - timedelta(seconds=2)), SimpleNamespace(queued_at=None)], now
    )
    with metrics.stage("db_write"):
        time.sleep(0.001)
    assert count("fetch") == before["fetch"] + 2
    assert count("decode") == before["decode"] + 1 and count("infer") == before["infer"] + 1
    assert count("detect") == before["detect"]  # no detect_ms: nothing observed
    assert count("queue_wait") == before["queue_wait"] + 1
    assert count("db_write") == before["db_write"] + 1
    assert 2.0 <= sample("dfscan_stage_seconds_sum", stage="queue_wait") - waited < 3.0


def test_detect_is_observed_only_when_a_face_detector_ran() -> None:
    from dfscan.verdicts import Verdict

    def count() -> float:
        return sample("dfscan_stage_seconds_count", stage="detect")

    before, total = count(), sample("dfscan_stage_seconds_sum", stage="detect")
    on_faces = Verdict(source="a", status="done", fetch_ms=1.0, decode_ms=1.0, detect_ms=12.0, infer_ms=3.0)
    whole = Verdict(source="b", status="done", fetch_ms=1.0, decode_ms=1.0, infer_ms=3.0)  # detect_ms 0
    metrics.observe_outcomes([on_faces, whole])
    assert count() == before + 1
    assert abs(sample("dfscan_stage_seconds_sum", stage="detect") - total - 0.012) < 1e-9
