"""Fine-tune a ViT deepfake classifier with Hugging Face ``Trainer``: the seed model's recipe, resumable,
cancellable, and saved with everything needed to rebuild and audit it.

Defaults are the seed model's (google/vit-base-patch16-224-in21k fine-tuned with AdamW, lr 1e-6, batch
32, up to 100 epochs, cross-entropy, rotation/sharpness/resized-crop augmentation). Each epoch is
evaluated and checkpointed under ``output_dir/checkpoints``; the best checkpoint by
``metric_for_best_model`` is restored at the end and early stopping ends a run that stops improving.

The label order is dfscan's (0 = Real, 1 = Fake). A base checkpoint that already has Real/Fake classes
(by name, any order) keeps its head, with rows reordered to that order, so fine-tuning continues from
what it knows; any other base (in21k, cat/dog, ...) gets a freshly initialised two-class head.

Output when training finishes: ``output_dir/model`` (weights, config, image processor and
``dfscan_training.json``) and ``output_dir/report`` (metrics on the test split). A cancelled run
returns ``TrainResult(cancelled=True)``: a checkpoint is saved at the step where it stopped (resume
with ``resume=True``) and no model is published; the caller turns that into CancelledError if it wants.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from dfscan.exceptions import LabelMappingError, TrainingDataError
from worker.inference.faces.crops import load_face_detector
from worker.inference.model.labels import fake_real_indices
from worker.inference.model.preprocess import PreprocessConfig
from worker.training.augment import AugmentConfig
from worker.training.data import ID2LABEL, LABEL2ID, Example, LabelledData
from worker.training.dataset import ImageDataset
from worker.training.faces import FaceCropConfig, face_examples
from worker.training.metrics import evaluate_scores

log = logging.getLogger(__name__)

MANIFEST = "dfscan_training.json"
_LOWER_IS_BETTER = frozenset({"loss", "eer"})


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Defaults reproduce the seed model; tests pass small values."""

    base_model: str
    output_dir: Path
    base_revision: str | None = None
    learning_rate: float = 1e-6
    train_batch_size: int = 32
    eval_batch_size: int = 32
    num_epochs: float = 100
    weight_decay: float = 0.0
    early_stopping_patience: int | None = 5  # epochs without improvement; None = run every epoch
    metric_for_best_model: str = "roc_auc"  # threshold-free, so it does not depend on 0.5 being right
    save_total_limit: int = 2  # the latest and the best checkpoint survive
    seed: int = 42
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    target_fpr: float = 0.05  # the threshold recommended is the lowest with FPR <= this on validation
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    logging_steps: int = 10
    # Train on face crops made as serving makes them (worker/training/faces.py); None: whole images.
    faces: FaceCropConfig | None = None


@dataclass
class TrainHooks:
    """How a run talks to its caller. ``should_cancel`` is called once per optimisation step, so keep it
    cheap (a flag, or a rate-limited database read)."""

    on_progress: Callable[[dict[str, Any]], None] = lambda _event: None
    should_cancel: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    model_dir: Path | None  # None when cancelled
    cancelled: bool
    global_step: int
    epoch: float
    best_checkpoint: str | None
    train_losses: list[float]  # every logged training loss, in order
    metrics: dict[str, Any]  # {"validation": evaluate_scores(...), "test": ...}; empty when cancelled
    threshold: float | None  # validation threshold at target_fpr
    undecodable: int  # images skipped while training (beyond data.unreadable)
    # With cfg.faces: the crop settings, the detector's version and per split the crops made and the
    # images without a face (skipped); serving reads this from the registry to judge on faces.
    faces: dict[str, Any] | None = None


def fine_tune(
    cfg: TrainConfig, data: LabelledData, *, hooks: TrainHooks | None = None, resume: bool = False
) -> TrainResult:
    """Train, keep the best epoch, evaluate it on the test split and publish it to ``output_dir/model``.

    ``resume=True`` continues from the last checkpoint in ``output_dir/checkpoints`` (a fresh start if there
    is none); ``resume=False`` removes old checkpoints first.
    """
    hooks = hooks or TrainHooks()
    output_dir = Path(cfg.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    last = _prepare_output(cfg, data, ckpt_dir, resume)
    faces = None
    if cfg.faces is not None:
        data, faces = face_data(cfg.faces, data, device=cfg.device)

    preprocess = PreprocessConfig.from_pretrained(cfg.base_model, revision=cfg.base_revision)
    train_ds = ImageDataset(data.train, preprocess, augment_cfg=cfg.augment, seed=cfg.seed)
    val_ds = ImageDataset(data.validation, preprocess, seed=cfg.seed)
    model = load_base_model(cfg.base_model, revision=cfg.base_revision)
    reporter = _HooksCallback(hooks)
    callbacks: list[TrainerCallback] = [reporter]
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = _Trainer(
        model=model,
        args=_training_args(cfg, ckpt_dir),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        compute_metrics=lambda pred: _trainer_metrics(pred.label_ids, pred.predictions, cfg.target_fpr),
        callbacks=callbacks,
    )
    log.info("training %s on %s (resume from %s)", cfg.base_model, data.counts(), last)
    output = trainer.train(resume_from_checkpoint=last)
    state = trainer.state
    common: dict[str, Any] = {
        "output_dir": output_dir,
        "global_step": state.global_step,
        "epoch": float(state.epoch or 0.0),
        "best_checkpoint": state.best_model_checkpoint,
        "train_losses": reporter.losses,
    }
    if reporter.cancelled:
        log.info("training cancelled at step %d; resume from %s", state.global_step, ckpt_dir)
        hooks.on_progress({"event": "cancelled", "step": state.global_step, "epoch": common["epoch"]})
        failed = len(train_ds.failed | val_ds.failed)
        return TrainResult(
            model_dir=None,
            cancelled=True,
            metrics={},
            threshold=None,
            undecodable=failed,
            faces=faces,
            **common,
        )

    test_ds = ImageDataset(data.test, preprocess, seed=cfg.seed)
    y_val, p_val = _scores(trainer, val_ds)
    y_test, p_test = _scores(trainer, test_ds)
    metrics = {
        "validation": evaluate_scores(y_val, p_val, target_fpr=cfg.target_fpr),
        "test": evaluate_scores(y_test, p_test, target_fpr=cfg.target_fpr),
    }
    threshold = metrics["validation"]["threshold_at_fpr"]
    model_dir = output_dir / "model"
    trainer.save_model(str(model_dir))
    AutoImageProcessor.from_pretrained(cfg.base_model, revision=cfg.base_revision).save_pretrained(model_dir)
    from worker.training.report import write_report  # matplotlib only once there is something to plot

    write_report(metrics["test"], output_dir / "report", y_true=y_test, p_fake=p_test)
    failed = len(train_ds.failed | val_ds.failed | test_ds.failed)
    manifest = _manifest(cfg, data, metrics, threshold, state, output.training_loss, failed)
    manifest["faces"] = faces
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    hooks.on_progress(
        {"event": "done", "step": state.global_step, "epoch": common["epoch"], "metrics": metrics}
    )
    return TrainResult(
        model_dir=model_dir,
        cancelled=False,
        metrics=metrics,
        threshold=threshold,
        undecodable=failed,
        faces=faces,
        **common,
    )


def face_data(
    faces: FaceCropConfig, data: LabelledData, *, device: str = "auto"
) -> tuple[LabelledData, dict[str, Any]]:
    """Every split as the largest face crop of each image (images without a face skipped and counted).

    Raises TrainingDataError when a split is left without both classes."""
    target = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    detector = load_face_detector(faces.detector, target)
    splits: dict[str, list[Example]] = {}
    info: dict[str, Any] = {
        **faces.to_params(detector.version),
        "crops": {},
        "no_face": {},
        "undecodable": {},
    }
    for name, examples in data.splits.items():
        crops = face_examples(examples, detector, faces, largest_only=True)
        have = {e.label for e in crops.examples}
        if have != set(ID2LABEL):
            raise TrainingDataError(
                f"{data.source} {name} split: after face cropping only classes "
                f"{sorted(ID2LABEL[i] for i in have)} remain ({len(crops.no_face)} of {len(examples)} images "
                f"had no face of at least {faces.min_face_px} px); train without --faces or add face images"
            )
        splits[name] = crops.examples
        info["crops"][name] = len(crops.examples)
        info["no_face"][name] = len(crops.no_face)
        info["undecodable"][name] = len(crops.undecodable)
    log.info("training on face crops: %s, no face: %s", info["crops"], info["no_face"])
    return replace(data, splits=splits), info


def load_base_model(base: str, *, revision: str | None = None) -> PreTrainedModel:
    """Load ``base`` as a two-class (0 = Real, 1 = Fake) classifier; see the module doc for the head rule."""
    config = AutoConfig.from_pretrained(base, revision=revision)
    try:
        fake_index, real_index = fake_real_indices(config.id2label)
    except LabelMappingError:
        log.info("base %s has no Real/Fake head (%s); starting a new two-class head", base, config.id2label)
        model = AutoModelForImageClassification.from_pretrained(
            base,
            revision=revision,
            num_labels=2,
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            ignore_mismatched_sizes=True,
        )
        head = getattr(model, "classifier", None)
        if isinstance(head, torch.nn.Linear):  # a same-shaped head of other classes must not carry over
            with torch.no_grad():
                torch.nn.init.trunc_normal_(head.weight, std=getattr(model.config, "initializer_range", 0.02))
                head.bias.zero_()
        return model
    model = AutoModelForImageClassification.from_pretrained(base, revision=revision)
    head = model.classifier
    order = [real_index, fake_index]
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        head.bias.copy_(head.bias[order].clone())
    model.config.id2label = dict(ID2LABEL)
    model.config.label2id = dict(LABEL2ID)
    log.info("base %s already classifies Real/Fake; head reordered from %s", base, config.id2label)
    return model


# --- internals -------------------------------------------------------------------------------------


def _load_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Copy a checkpoint's weights into ``model`` through ``from_pretrained`` (strictly).

    Trainer's own loading reads the safetensors file into ``load_state_dict`` directly, which skips the
    key renaming transformers applies when checkpoints are saved in the legacy layout: it reports every key
    missing and silently keeps the current weights (seen with transformers 5.24 and ViT).
    """
    source = AutoModelForImageClassification.from_pretrained(checkpoint)
    model.load_state_dict(source.state_dict(), strict=True)


class _Trainer(Trainer):
    """Trainer whose resume and best-model restore really load the weights (see :func:`_load_weights`)."""

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        target = model if model is not None else self.model
        assert target is not None, "Trainer has no model to resume into"
        _load_weights(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        log.info("restoring the best checkpoint %s (%s)", best, self.state.best_metric)
        assert self.model is not None, "Trainer has no model to restore into"
        _load_weights(self.model, str(best))


class _HooksCallback(TrainerCallback):
    def __init__(self, hooks: TrainHooks) -> None:
        self.hooks = hooks
        self.cancelled = False
        self.losses: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.cancelled and self.hooks.should_cancel():
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True  # so a resume starts here, not at the last epoch

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.cancelled:
            control.should_evaluate = False  # a cancel should not wait for a full evaluation

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.hooks.on_progress(
                {
                    "event": "log",
                    "epoch": float(state.epoch or 0.0),
                    "step": state.global_step,
                    "max_steps": state.max_steps,
                    "loss": float(logs["loss"]),
                    "learning_rate": logs.get("learning_rate"),
                }
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        self.hooks.on_progress(
            {
                "event": "evaluate",
                "epoch": float(state.epoch or 0.0),
                "step": state.global_step,
                "max_steps": state.max_steps,
                "metrics": dict(metrics or {}),
            }
        )


def _prepare_output(cfg: TrainConfig, data: LabelledData, ckpt_dir: Path, resume: bool) -> str | None:
    """Check (resume) or reset (fresh run) the checkpoint folder; return the checkpoint to resume from."""
    run_file = Path(cfg.output_dir) / "run.json"
    last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    if last is not None and run_file.is_file():
        before = json.loads(run_file.read_text())
        if before.get("data_fingerprint") != data.fingerprint or before.get("base_model") != cfg.base_model:
            raise TrainingDataError(
                f"cannot resume {ckpt_dir}: it was trained on base {before.get('base_model')} with data "
                f"{before.get('data_fingerprint')}, this run has {cfg.base_model} with data {data.fingerprint}; "
                "use a new output folder or train without resume"
            )
    if not resume and ckpt_dir.exists():
        log.warning("not resuming: removing old checkpoints in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(
        json.dumps(
            {"base_model": cfg.base_model, "data_fingerprint": data.fingerprint, "source": data.source}
        )
    )
    return last


def _training_args(cfg: TrainConfig, ckpt_dir: Path) -> TrainingArguments:
    use_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=cfg.num_epochs,
        weight_decay=cfg.weight_decay,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=cfg.metric_for_best_model not in _LOWER_IS_BETTER,
        report_to="none",
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        seed=cfg.seed,
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def _softmax_fake(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e[:, 1] / e.sum(axis=1))


def _trainer_metrics(labels: Any, logits: Any, target_fpr: float) -> dict[str, float]:
    """Flat float metrics for the Trainer (it prefixes ``eval_``); undefined values become NaN."""
    m = evaluate_scores(np.asarray(labels), _softmax_fake(np.asarray(logits)), target_fpr=target_fpr)

    def num(x: float | None) -> float:
        return math.nan if x is None else float(x)

    return {
        "accuracy": m["accuracy"],
        "roc_auc": num(m["roc_auc"]),
        "average_precision": num(m["average_precision"]),
        "eer": num(m["eer"]),
        "f1": m["per_class"]["Fake"]["f1"],
        "macro_f1": m["macro_avg"]["f1"],
        "tpr_at_fpr": num(m["tpr_at_fpr"]),
    }


def _scores(trainer: Trainer, dataset: ImageDataset) -> tuple[list[int], list[float]]:
    out = trainer.predict(dataset)  # type: ignore[arg-type]
    logits = np.asarray(out.predictions)
    return [int(v) for v in np.asarray(out.label_ids)], _softmax_fake(logits).tolist()


def _manifest(
    cfg: TrainConfig,
    data: LabelledData,
    metrics: dict[str, Any],
    threshold: float | None,
    state: Any,
    training_loss: float,
    undecodable: int,
) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    hyper = {k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "base_model", "base_revision")}
    return {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": cfg.base_model,
        "base_revision": cfg.base_revision,
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        "data": {
            "source": data.source,
            "fingerprint": data.fingerprint,
            "counts": data.counts(),
            "carved_splits": list(data.carved),
            "unreadable_skipped": data.unreadable,
            "undecodable_during_training": undecodable,
        },
        "hyperparameters": {**hyper, "optimizer": "adamw_torch", "loss": "cross_entropy"},
        "training": {
            "global_step": state.global_step,
            "epochs": state.epoch,
            "best_checkpoint": state.best_model_checkpoint,
            "best_metric": state.best_metric,
            "final_training_loss": training_loss,
            "log_history": state.log_history,
        },
        "threshold": {"target_fpr": cfg.target_fpr, "at_target_fpr_on_validation": threshold, "default": 0.5},
        "metrics": metrics,
        "libraries": {
            "python": platform.python_version(),
            **{
                pkg: version(pkg)
                for pkg in ("torch", "transformers", "pillow", "numpy", "datasets", "accelerate")
            },
        },
    }
