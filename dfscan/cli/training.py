"""`dfscan train`, `dfscan evaluate` and `dfscan models`: fine-tuning runs, reports and the registry."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from db import registry, training
from db.session import new_engine, new_session_factory
from dfscan.exceptions import (
    BadArgumentError,
    CalibrationMismatchError,
    DfscanError,
    TrainingDataError,
    UnknownIdError,
)
from dfscan.ids import parse_id
from dfscan.settings import Settings, get_settings

train_app = typer.Typer(help="Fine-tuning runs on the training queue.")
models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
err = Console(stderr=True)


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    return new_session_factory(new_engine(settings.database_url))


def _run_id(text: str) -> uuid.UUID:
    return parse_id(text, "training run id")


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option(help="Image folder (one sub-folder per class) or save_to_disk dataset.")
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base checkpoint: hub id or local directory.")] = None,
    epochs: Annotated[float, typer.Option(help="Upper bound; early stopping usually ends sooner.")] = 100,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the seed used 1e-6).")] = 1e-6,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Train and eval batch size (the seed used 32).")
    ] = 32,
    seed: Annotated[int, typer.Option()] = 42,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without improvement before stopping.")] = 5,
    faces: Annotated[
        bool,
        typer.Option(
            "--faces",
            help="Train on face crops (MTCNN, DFSCAN_FACE_MARGIN, DFSCAN_MIN_FACE_PX), as serving "
            "crops them; images without a face are counted and skipped, and the version serves on faces.",
        ),
    ] = False,
) -> None:
    """Queue a fine-tuning run: `dfscan train --data PATH --base MODEL`; `dfscan worker --queues training` runs it."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None or base is None:
        raise BadArgumentError("give --data PATH and --base MODEL (or a subcommand: status, list, cancel)")
    if not data.exists():
        raise BadArgumentError(f"--data {data} does not exist")
    settings = get_settings()
    params: dict[str, Any] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "patience": patience,
    }
    if faces:
        params["faces"] = _face_crop_params(settings)
    with _sessions(settings).begin() as session:
        run = training.create_run(session, data_path=str(data.resolve()), base_model=base, params=params)
        run.output_dir = str((settings.model_store / "runs" / run.id.hex).resolve())
        run_id = run.id
    from dfscan.queueing import TRAIN_TASK, TRAINING_QUEUE, new_celery_app  # not on `dfscan scan`'s path

    new_celery_app(settings).send_task(
        TRAIN_TASK, kwargs={"run_id": str(run_id)}, queue=TRAINING_QUEUE, task_id=str(run_id)
    )
    err.print(f"training run {run_id} queued; follow it with `dfscan train status {run_id}`")
    print(run_id)


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "run_id": str(run.id),
        "state": run.state,
        "base_model": run.base_model,
        "data_path": run.data_path,
        "params": run.params,
        "progress": run.progress,
        "attempts": run.attempts,
        "model_version": run.model_version,
        "report_path": run.report_path,
        "error_code": run.error_code,
        "error": run.error_message,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


@train_app.command("status")
def train_status(
    run: Annotated[str, typer.Argument(help="Run id.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A run's state, progress (epoch, step, loss, eval metrics) and outcome."""
    run_id = _run_id(run)
    with _sessions(get_settings())() as session:
        row = training.get_run(session, run_id)
        if row is None:
            raise UnknownIdError(f"no training run {run_id}")
        info = _run_dict(row)
    if as_json:
        print(json.dumps(info, default=str))
        return
    for key, value in info.items():
        if value is not None:
            print(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict) else value}")


@train_app.command("list")
def train_list(limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Recent runs, newest first."""
    with _sessions(get_settings())() as session:
        rows = [_run_dict(run) for run in training.list_runs(session, limit=limit)]
    table = Table("run", "state", "base", "epoch", "model version", "error")
    for row in rows:
        progress = row["progress"] or {}
        table.add_row(
            row["run_id"],
            row["state"],
            row["base_model"],
            str(progress.get("epoch", "")),
            row["model_version"] or "",
            row["error_code"] or "",
        )
    Console().print(table)


@train_app.command("cancel")
def train_cancel(run: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """Stop a run: a queued run at once, a running one at its next step (a checkpoint is kept)."""
    run_id = _run_id(run)
    with _sessions(get_settings()).begin() as session:
        if training.get_run(session, run_id) is None:
            raise UnknownIdError(f"no training run {run_id}")
        asked = training.request_cancel(session, run_id)
    if not asked:
        err.print(f"run {run_id} is already finished")
        raise typer.Exit(1)
    err.print(f"cancel requested for {run}")


def evaluate(
    model: Annotated[str, typer.Option(help="Checkpoint: hub id or local directory.")],
    data: Annotated[Path, typer.Option(help="Labelled images (folder per class, or save_to_disk dataset).")],
    split: Annotated[
        str | None, typer.Option(help="Split to score (default: test if present, else all).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where report.json and the PNGs go.")] = Path("evaluation"),
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    threshold: Annotated[float, typer.Option(help="Threshold for the confusion matrix.")] = 0.5,
    faces: Annotated[
        str | None,
        typer.Option(
            "--faces",
            help="auto, require or off: what each image is judged on, as serving judges it (default "
            "DFSCAN_FACES, the serving setting, so the threshold is measured on the serving road); "
            "under require, images without a face are counted and skipped.",
        ),
    ] = None,
) -> None:
    """The seed's evaluation report (plus ROC-AUC, AP, EER, a threshold at DFSCAN_TARGET_FPR) for any
    checkpoint, judged on the serving road (faces mode, detector, margin, runtime: DFSCAN_*), which the
    report records under ``road``."""
    from worker.training.data import load_evaluation_data
    from worker.training.evaluate import evaluate_model
    from worker.training.report import format_classification_report, write_report

    settings = _with_faces(get_settings(), faces)
    try:
        examples = load_evaluation_data(data, split=split)
        split_name = next(iter(examples.splits))  # the named split, else test, else all
        metrics = evaluate_model(
            model,
            examples.split(split_name),
            batch_size=batch_size,
            threshold=threshold,
            target_fpr=settings.target_fpr,
            settings=settings,
        )
    except DfscanError as exc:
        from dfscan.cli.errors import fail

        raise fail(exc) from exc
    labels, scores = metrics.pop("y_true"), metrics.pop("p_fake")
    metrics["split"] = split_name
    paths = write_report(metrics, out, y_true=labels, p_fake=scores)
    print(format_classification_report(metrics))
    chosen = metrics.get("threshold_at_fpr")
    road = metrics["road"]
    err.print(
        f"model {metrics['model_version']} on {split_name} ({road['faces']} faces): ROC-AUC "
        f"{metrics.get('roc_auc')}, EER {metrics.get('eer')}, threshold at FPR<={settings.target_fpr}: "
        f"{chosen}; {metrics['skipped']} images skipped"
        + (f", {metrics['no_face']} without a face (skipped)" if road["faces"] == "require" else "")
    )
    err.print("report: " + ", ".join(str(p) for p in paths.values()))


def _with_faces(settings: Settings, faces: str | None) -> Settings:
    if faces is None:
        return settings
    if faces not in ("auto", "require", "off"):
        raise BadArgumentError(f"--faces must be auto, require or off, not {faces!r}")
    return settings.model_copy(update={"faces": faces})


def _face_crop_params(settings: Any) -> dict[str, Any]:
    """The serving face settings, as a training run's or an evaluation's crop settings."""
    return {
        "detector": settings.fixed("face_detector"),
        "margin": settings.face_margin,
        "min_face_px": settings.min_face_px,
        "max_faces": settings.max_faces,
        "min_score": settings.min_face_score,
    }


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
) -> None:
    """Registered versions and the default model (DFSCAN_MODEL), each with the threshold its verdicts
    use (p(fake) at or above it is 'fake'); the serving one is marked *."""
    settings = get_settings()
    with _sessions(settings)() as session:
        current = registry.current_version(session)
        rows = registry.list_versions(session)
        items: list[dict[str, Any]] = [
            {
                "version": row.version,
                "serving": current is not None and row.version == current.version,
                "path": row.path,
                "base_model": row.base_model,
                # A version registered without a threshold is judged with DFSCAN_THRESHOLD.
                "threshold": row.threshold if row.threshold is not None else settings.threshold,
                "threshold_from": "version" if row.threshold is not None else "DFSCAN_THRESHOLD",
                "calibration": row.calibration,
                "training_run_id": str(row.training_run_id) if row.training_run_id else None,
                "data_fingerprint": row.data_fingerprint,
                "metrics": row.metrics,
                "created_at": row.created_at.isoformat(),
            }
            for row in rows
        ]
    default: dict[str, Any] = {
        "version": "default",
        "serving": current is None,
        "path": settings.model,
        "base_model": None,
        "threshold": settings.threshold,
        "threshold_from": "DFSCAN_THRESHOLD",
        "calibration": None,
        "training_run_id": None,
        "data_fingerprint": None,
        "metrics": None,
        "created_at": None,
    }
    items.append(default)
    if as_json:
        for item in items:
            print(json.dumps(item))
        return
    table = Table("", "version", "base", "threshold", "test ROC-AUC", "created")
    for item in items:
        test = (item["metrics"] or {}).get("test", {})
        shown = f"{item['threshold']:.4f}" + (
            " (DFSCAN_THRESHOLD)" if item["threshold_from"] != "version" else ""
        )
        table.add_row(
            "*" if item["serving"] else "",
            f"default: DFSCAN_MODEL={item['path']}" if item is default else item["version"],
            item["base_model"] or "",
            shown,
            "" if test.get("roc_auc") is None else f"{test['roc_auc']:.4f}",
            (item["created_at"] or "")[:19],
        )
    Console(soft_wrap=True).print(table)


def _broadcast_reload(settings: Settings) -> None:
    from dfscan.queueing import RELOAD_COMMAND, new_celery_app  # not on `dfscan scan`'s path

    app = new_celery_app(settings)
    replies = app.control.broadcast(RELOAD_COMMAND, reply=True, timeout=2.0)
    reloading = [r for reply in replies for r in reply.values() if r.get("ok") == "reloading"]
    err.print(f"{len(reloading)} running inference worker(s) told to reload")


@models_app.command("promote")
def models_promote(
    version: Annotated[str | None, typer.Argument(help="A registered version.")] = None,
    default: Annotated[
        bool,
        typer.Option("--default", help="Serve the default model again (DFSCAN_MODEL, DFSCAN_THRESHOLD)."),
    ] = False,
) -> None:
    """Serve VERSION (or, --default, DFSCAN_MODEL): running inference workers switch without a restart
    (batches in flight finish first). UNKNOWN_ID (exit 1) for a version that is not registered."""
    if (version is None) == (not default):
        raise BadArgumentError("give a registered VERSION or --default (not both)")
    settings = get_settings()
    with _sessions(settings).begin() as session:
        if default:
            changed = registry.promote_default(session) is not None
        else:
            assert version is not None
            _check_calibration(session, settings, version)
            registry.promote(session, version)
    if default and not changed:
        err.print(f"the default model already serves ({settings.model})")
        return
    _broadcast_reload(settings)
    err.print(f"promoted {'the default model (' + settings.model + ')' if default else version}")


def _check_calibration(session: Any, settings: Settings, version: str) -> None:
    """CALIBRATION_MISMATCH when ``version``'s threshold was measured on another road than it would
    serve on under these settings (every recorded key that changes a score: ``dfscan.calibration.ROAD_KEYS``)."""
    from dfscan.calibration import describe, road_mismatch, serving_road

    row = registry.get_version(session, version)
    if row is None:
        return  # registry.promote answers UNKNOWN_ID
    serving = serving_road(settings, (row.params or {}).get("faces"))
    if not row.calibration:
        err.print(
            f"note: version {version} records no calibration road; its threshold "
            f"({row.threshold}) may not be measured on the serving road ({serving['faces']} faces); "
            f"`dfscan models calibrate {version} --data DIR` measures it there"
        )
        return
    mismatch = road_mismatch(row.calibration, serving)
    if mismatch:
        raise CalibrationMismatchError(
            f"version {version}'s threshold {row.threshold} was measured on another road than it would "
            f"serve on ({describe(mismatch)}); re-measure it on the serving road with "
            f"`dfscan models calibrate {version} --data DIR` (labelled images it was not trained on), "
            "or serve it with the settings it was calibrated under"
        )


@models_app.command("calibrate")
def models_calibrate(
    version: Annotated[str, typer.Argument(help="A registered version.")],
    data: Annotated[Path, typer.Option(help="Labelled images it was not trained on (folder per class).")],
    split: Annotated[
        str | None, typer.Option(help="Split to measure on (default: validation if present, else all).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
) -> None:
    """Measure VERSION's threshold (lowest with FPR <= DFSCAN_TARGET_FPR) on the serving road of these
    settings (DFSCAN_FACES, detector, margin, face limits, runtime) and store it, with the road, in the
    registry: the threshold it is then promoted and served with."""
    from worker.training.data import load_evaluation_data
    from worker.training.evaluate import calibrate

    settings = get_settings()
    sessions = _sessions(settings)
    with sessions() as session:
        row = registry.get_version(session, version)
        if row is None:
            raise UnknownIdError(f"model version {version!r} is not registered")
        ref, trained_on = row.path or row.source, (row.params or {}).get("faces")
    try:
        try:
            examples = load_evaluation_data(data, split=split or "validation")
        except TrainingDataError:
            if split is not None:
                raise
            examples = load_evaluation_data(data)
        split_name = next(iter(examples.splits))
        threshold, record = calibrate(
            ref,
            examples.split(split_name),
            split=split_name,
            target_fpr=settings.target_fpr,
            trained_on=trained_on,
            settings=settings,
            batch_size=batch_size,
        )
    except DfscanError as exc:
        from dfscan.cli.errors import fail

        raise fail(exc) from exc
    record["data"] = str(data.resolve())
    with sessions.begin() as session:
        registry.set_calibration(session, version, threshold, record)
    print(json.dumps(record))
    err.print(
        f"{version}: threshold {threshold} at FPR<={settings.target_fpr} on {record['n']} {split_name} "
        f"images judged on {record['faces']} faces; stored in the registry"
    )


@models_app.command("rollback")
def models_rollback() -> None:
    """Serve what served before the current model: an earlier version, or the default model (DFSCAN_MODEL)
    after the first promotion. NOTHING_TO_ROLL_BACK (exit 1) when the default already serves."""
    settings = get_settings()
    with _sessions(settings).begin() as session:
        row = registry.rollback(session)
        version = row.version
    _broadcast_reload(settings)
    err.print(
        f"rolled back to {version}" if version else f"rolled back to the default model ({settings.model})"
    )
