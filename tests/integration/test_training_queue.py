"""Training through the real queue: `dfscan train` -> Redis -> a training worker -> registry -> promote."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from producer.client import ScanClient
from tests.fixtures.datasets import write_split_folder
from tests.fixtures.service import Service
from tests.integration.test_service import settings_for


def train_status(svc: Service, run_id: str) -> dict[str, Any]:
    out = svc.cli("train", "status", run_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_run(svc: Service, run_id: str, predicate, timeout: float = 180) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    info = train_status(svc, run_id)
    while time.monotonic() < deadline:
        info = train_status(svc, run_id)
        if predicate(info):
            return info
        time.sleep(0.5)
    logs = "\n".join(w.text()[-3000:] for w in svc.workers)
    raise AssertionError(f"run {run_id} timed out in {info}\n{logs}")


def queue_run(svc: Service, data: Path, *extra: str) -> str:
    out = svc.cli(
        "train",
        "--data",
        str(data),
        "--base",
        str(svc.model_dir),
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        *extra,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_train_registers_a_version_that_promote_rolls_out_to_a_running_worker(service: Service) -> None:
    service.env["DFSCAN_MODEL_STORE"] = str(service.tmp / "store")
    # The least training that registers a version with a report: one epoch of 8 images a class.
    data = write_split_folder(service.tmp / "data", {"train": 8, "validation": 4, "test": 4})
    run_id = queue_run(service, data, "--epochs", "1")
    service.start_worker("--queues=training", "--name=trainer@test")
    info = wait_run(service, run_id, lambda i: i["state"] in ("done", "failed", "cancelled"))
    assert info["state"] == "done", info
    version = info["model_version"]
    assert version.startswith("dfscan-") and "@sha256:" in version
    assert info["progress"]["event"] == "done" and info["progress"]["epoch"] >= 1
    report = Path(info["report_path"])
    metrics = json.loads((report / "report.json").read_text())
    assert {"accuracy", "roc_auc", "average_precision", "eer", "confusion_matrix"} <= set(metrics)
    for png in ("confusion_matrix.png", "roc.png"):
        with Image.open(report / png) as img:
            assert img.format == "PNG" and img.width > 100

    listing = [json.loads(line) for line in service.cli("models", "list", "--json").stdout.splitlines()]
    assert [row["version"] for row in listing] == [version, "default"]  # the default model is listed last
    assert listing[0]["serving"] is False and listing[0]["threshold"] is not None
    assert listing[1]["serving"] is True and listing[0]["threshold_from"] == "version"
    # Its threshold was measured on the serving road (faces auto, the worker's default) on validation,
    # and the report was judged on that road too.
    calibration = listing[0]["calibration"]
    assert calibration["faces"] == "auto" and calibration["split"] == "validation"
    assert listing[0]["threshold"] == calibration["threshold"]
    assert metrics["road"]["faces"] == "auto" and "+faces:auto:" in metrics["model_version"]

    # A running inference worker serves the default model, then the promoted one without a restart.
    (service.images / "a.png").write_bytes(next((data / "test" / "fake").glob("*.png")).read_bytes())
    inference = service.start_worker("--name=scanner@test")
    client = ScanClient(settings_for(service))
    before = client.submit([str(service.images / "a.png")])
    before.wait(60)
    (old,) = before.results()
    assert old.model_version is not None and old.model_version.startswith("model@sha256:")

    promoted = service.cli("models", "promote", version)
    assert promoted.returncode == 0, promoted.stderr
    assert "1 running inference worker(s) told to reload" in promoted.stderr
    deadline = time.monotonic() + 60
    new = old
    while time.monotonic() < deadline:
        sub = client.submit([str(service.images / "a.png")])
        sub.wait(60)
        (new,) = sub.results()
        if _weights(new.model_version) == version:
            break
        time.sleep(0.5)
    # The verdict names the promoted weights (plus the face detector's settings, faces being on).
    assert _weights(new.model_version) == version, inference.text()[-3000:]
    assert new.threshold == listing[0]["threshold"], "the promoted version's threshold labels verdicts"
    registered = json.loads(service.cli("train", "status", run_id, "--json").stdout)
    assert registered["model_version"] == version
    assert inference.proc.poll() is None

    rolled = service.cli("models", "rollback")  # one promotion: back to the default model (DFSCAN_MODEL)
    assert rolled.returncode == 0 and "rolled back to the default model" in rolled.stderr, rolled.stderr
    again = service.cli("models", "rollback")
    assert again.returncode == 1 and again.stderr.startswith("error NOTHING_TO_ROLL_BACK: "), again.stderr


# slow (minutes of a training worker): the flag is tests/unit/test_db_queries.py (request_cancel,
# is_cancel_requested) and the loop stopping on it tests/unit/test_training_train.py (cancel and resume).
@pytest.mark.slow
def test_cancel_stops_a_running_run(service: Service) -> None:
    service.env["DFSCAN_MODEL_STORE"] = str(service.tmp / "store")
    data = write_split_folder(service.tmp / "data", {"train": 64, "validation": 8, "test": 8})
    run_id = queue_run(service, data, "--epochs", "200", "--patience", "200")
    service.start_worker("--queues=training")
    wait_run(service, run_id, lambda i: i["state"] == "running" and (i["progress"] or {}).get("step", 0) > 0)
    cancel = service.cli("train", "cancel", run_id)
    assert cancel.returncode == 0, cancel.stderr
    info = wait_run(service, run_id, lambda i: i["state"] != "running", timeout=60)
    assert info["state"] == "cancelled" and info["model_version"] is None
    assert service.cli("train", "cancel", run_id).returncode == 1


@pytest.mark.slow  # minutes; resume itself is in the default suite (test_training_train.py, fine_tune)
def test_a_killed_training_worker_is_resumed_from_its_checkpoint(service: Service) -> None:
    service.env["DFSCAN_MODEL_STORE"] = str(service.tmp / "store")
    service.env["DFSCAN_LEASE_SECONDS"] = "4"
    data = write_split_folder(service.tmp / "data", {"train": 48, "validation": 8, "test": 8})
    # Killed after epoch 1.5 of 6: enough left to resume from a checkpoint, not 28 epochs more to wait for.
    run_id = queue_run(service, data, "--epochs", "6", "--patience", "100")
    first = service.start_worker("--queues=training")
    wait_run(service, run_id, lambda i: (i["progress"] or {}).get("epoch", 0) >= 1.5)
    first.kill()
    killed_at = train_status(service, run_id)
    assert killed_at["state"] == "running"

    second = service.start_worker("--queues=training", "--sweeper")
    info = wait_run(service, run_id, lambda i: i["state"] in ("done", "failed"), timeout=240)
    assert info["state"] == "done", info
    assert info["attempts"] == 2
    assert "checkpoint-" in second.text() and "resume from" in second.text()


def _weights(model_version: str | None) -> str | None:
    """The weights part of a verdict's model version (``<weights>+faces:<detector settings>``)."""
    return None if model_version is None else model_version.split("+faces:")[0]
