"""The `dfscan.train` task: one fine-tuning run on the `training` queue, in a training worker.

The run's row is the truth. The message is acknowledged on receipt (a run lasts hours, far past any
Redis visibility timeout); a worker that dies mid-run leaves its row `running` with a stale
heartbeat, and the sweeper re-sends it: the next training worker claims it and resumes from the
last epoch checkpoint. Progress goes to the row and, as `task-progress` events, to Flower.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Task

from db import registry, training
from dfscan.exceptions import DfscanError, MaxAttemptsError, TrainingFailedError
from dfscan.queueing import TRAIN_TASK
from worker.app import app, training_runtime

log = logging.getLogger(__name__)

_CANCEL_POLL = 2.0  # seconds between two reads of the cancel flag


@app.task(name=TRAIN_TASK, bind=True, acks_late=False, max_retries=None)
def train(self: Task, run_id: str) -> dict[str, Any]:
    rt = training_runtime()
    settings = rt.settings
    rid = uuid.UUID(str(run_id))
    with rt.sessions.begin() as session:
        run = training.claim_run(session, rid, worker=rt.name, lease_seconds=settings.lease_seconds)
        if run is None:
            return {"status": "skipped", "run_id": run_id}
        if run.attempts > settings.max_attempts:
            training.finish_run(
                session,
                rid,
                state="failed",
                error_code=MaxAttemptsError.code,
                error_message=f"the run was started {run.attempts} times; the limit is {settings.max_attempts}",
            )
            return {"status": "failed", "run_id": run_id, "error_code": MaxAttemptsError.code}
        data_path, base_model = run.data_path, run.base_model
        params = dict(run.params or {})
        output_dir = Path(run.output_dir or settings.model_store / "runs" / rid.hex)
    extra = {"run_id": run_id}
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rt, rid, stop, settings.lease_seconds / 4), daemon=True)
    beat.start()
    try:
        return _run(self, rt, rid, data_path, base_model, params, output_dir)
    except DfscanError as exc:
        log.warning("training run failed %s: %s", exc.code, exc.message, extra=extra)
        _finish(rt, rid, state="failed", error_code=exc.code, error_message=exc.message)
        return {"status": "failed", "run_id": run_id, "error_code": exc.code}
    except Exception as exc:
        log.exception("training run crashed", extra=extra)
        _finish(rt, rid, state="failed", error_code=TrainingFailedError.code, error_message=repr(exc)[:2000])
        return {"status": "failed", "run_id": run_id, "error_code": TrainingFailedError.code}
    finally:
        stop.set()


def _run(
    task: Task,
    rt: Any,
    rid: uuid.UUID,
    data_path: str,
    base_model: str,
    params: dict[str, Any],
    output_dir: Path,
) -> dict[str, Any]:
    # The training core is imported here: an inference worker never loads Trainer and datasets.
    from worker.inference.model.classifier import load_classifier
    from worker.training.data import load_labelled_data
    from worker.training.evaluate import calibrate, evaluate_model
    from worker.training.faces import FaceCropConfig
    from worker.training.report import write_report
    from worker.training.train import TrainConfig, TrainHooks, fine_tune

    settings = rt.settings
    data = load_labelled_data(Path(data_path), seed=int(params.get("seed", 42)))
    cfg = TrainConfig(
        base_model=base_model,
        output_dir=output_dir,
        learning_rate=float(params.get("lr", 1e-6)),
        train_batch_size=int(params.get("batch_size", 32)),
        eval_batch_size=int(params.get("batch_size", 32)),
        num_epochs=float(params.get("epochs", 100)),
        early_stopping_patience=params.get("patience", 5),
        seed=int(params.get("seed", 42)),
        target_fpr=float(params.get("target_fpr", settings.target_fpr)),
        device=settings.device,
        faces=FaceCropConfig(**params["faces"]) if params.get("faces") else None,
    )
    last_poll = [0.0, False]

    def should_cancel() -> bool:
        now = time.monotonic()
        if now - float(last_poll[0]) >= _CANCEL_POLL:
            with rt.sessions() as session:
                last_poll[1] = training.is_cancel_requested(session, rid)
            last_poll[0] = now
        return bool(last_poll[1])

    def on_progress(event: dict[str, Any]) -> None:
        progress = {k: v for k, v in event.items() if k != "metrics"}
        if "metrics" in event:
            progress["metrics"] = _headline(event["metrics"])
        with rt.sessions.begin() as session:
            training.update_progress(session, rid, progress)
        task.send_event("task-progress", run_id=str(rid), **progress)

    result = fine_tune(
        cfg, data, hooks=TrainHooks(on_progress=on_progress, should_cancel=should_cancel), resume=True
    )
    if result.cancelled:
        _finish(
            rt, rid, state="cancelled", error_message=f"cancelled by an operator at step {result.global_step}"
        )
        return {"status": "cancelled", "run_id": str(rid)}
    assert result.model_dir is not None
    published = Path(settings.model_store) / f"dfscan-{rid.hex[:12]}"
    if published.exists():
        shutil.rmtree(published)
    shutil.copytree(result.model_dir, published)
    # Load the new checkpoint through the serving path: it must work there, and its version string
    # is exactly what verdicts will record.
    version = load_classifier(str(published), device="cpu").version
    # The threshold it serves with is measured on the serving road (the factory's detector, faces
    # policy and Judge under these settings), on the validation split: not the trainer's own
    # predictions, which judge one face crop or the whole image outside that road.
    threshold, calibration = calibrate(
        str(published),
        data.validation,
        split="validation",
        target_fpr=cfg.target_fpr,
        trained_on=result.faces,
        settings=settings,
    )
    report = evaluate_model(
        str(published), data.test, target_fpr=cfg.target_fpr, trained_on=result.faces, settings=settings
    )
    metrics = {**result.metrics, "test_serving": report, "calibration": calibration}
    write_report(report, output_dir / "report", y_true=report.pop("y_true"), p_fake=report.pop("p_fake"))
    with rt.sessions.begin() as session:
        if registry.get_version(session, version) is None:
            registry.register_version(
                session,
                version,
                source=str(published),
                base_model=base_model,
                path=str(published.resolve()),
                training_run_id=rid,
                data_fingerprint=data.fingerprint,
                # params["faces"] (crop settings and the detector's version) tells serving that this
                # version judges face crops.
                params={**params, "faces": result.faces} if result.faces else params,
                metrics=metrics,
                threshold=threshold,
                calibration=calibration,
            )
        training.finish_run(
            session,
            rid,
            state="done",
            metrics=result.metrics,
            report_path=str((output_dir / "report").resolve()),
            model_version=version,
        )
    log.info(
        "training run %s registered %s", rid, version, extra={"run_id": str(rid), "model_version": version}
    )
    return {"status": "done", "run_id": str(rid), "model_version": version}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth showing while a run goes (the full report is stored at the end)."""
    keep = ("accuracy", "roc_auc", "average_precision", "eer", "f1", "loss", "eval_loss", "eval_roc_auc")
    flat = metrics.get("validation", metrics)
    return {k: flat[k] for k in keep if k in flat and not isinstance(flat[k], (dict, list))}


def _finish(rt: Any, rid: uuid.UUID, **fields: Any) -> None:
    with rt.sessions.begin() as session:
        training.finish_run(session, rid, **fields)


def _heartbeat(rt: Any, rid: uuid.UUID, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with rt.sessions.begin() as session:
                if not training.heartbeat(session, rid):
                    return
        except Exception as exc:  # the database may be briefly down; the lease is generous
            log.warning("training heartbeat failed: %s", exc)
