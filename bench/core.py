"""In-process benchmark: the seed's ``transformers.pipeline`` vs dfscan's ``scan()`` vs the bare forward.

``python -m bench.core [--images N] [--model DIR] [--batch-size 8] [--json PATH]``

One run, the same JPEGs and the same checkpoint for every variant:

1. the seed's documented usage, ``pipeline("image-classification", model=DIR)`` on file paths, with
   batch_size 1 and 32 (the baseline);
2. dfscan end to end: ``scan()`` reads, decodes, preprocesses and runs the model, decode overlapped
   with the forward;
3. dfscan model only: ``Classifier.predict`` on tensors made beforehand (the ceiling for 2);
4. optionally the same forward with dynamic int8 (``--int8``);
5. optionally the ONNX Runtime backend (``--onnx``, ``DFSCAN_RUNTIME=onnx``): end to end and model
   only in fp32, and model only with ONNX Runtime's dynamic int8 (with ``--int8``). The first run
   exports the checkpoint to ONNX under the cache directory; the export is not timed.

Targets: end-to-end >= 0.9 x model-only (decode is hidden behind compute) and end-to-end >= 1.0 x
the best seed pipeline. Without ``--model`` a randomly initialised ViT-B/16 (224 px, 86 M
parameters: the size of the public deepfake checkpoints) is saved once to a cache directory; speed
does not depend on the weights. The last column compares every variant with the torch fp32 forward,
and a last table how far each other model-only variant's scores are from its, on the same tensors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench.images import write_images
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, judge_stream
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import load_pixels
from worker.inference.sources.read import SourcePolicy

logger = logging.getLogger(__name__)

CACHE = Path(tempfile.gettempdir()) / "dfscan-bench"
E2E_VS_MODEL_TARGET = 0.9
E2E_VS_PIPELINE_TARGET = 1.0


@dataclass
class Variant:
    name: str
    images: int
    seconds: float
    # p(fake) per image in input order (model-only variants), to compare runtimes on the same tensors.
    scores: list[float] = field(default_factory=list, repr=False)

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def random_vit_base(directory: Path) -> Path:
    """Save a seeded random ViT-B/16 Real/Fake classifier with its image processor (once)."""
    if (directory / "config.json").exists() and (directory / "preprocessor_config.json").exists():
        return directory
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(id2label={0: "Real", 1: "Fake"}, label2id={"Real": 0, "Fake": 1})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


def timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    count = run()
    return count, time.perf_counter() - started


def bench_seed_pipeline(model_dir: Path, paths: list[Path], batch_size: int, warm: int) -> Variant:
    """The seed's usage: a transformers image-classification pipeline on file paths."""
    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchvision not installed, falling back to the PIL processor"
        classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    files = [str(p) for p in paths]
    classifier(files[:warm], batch_size=batch_size)

    def run() -> int:
        outputs = classifier(files, batch_size=batch_size)
        assert len(outputs) == len(files), "the pipeline must return one output per image"
        return len(outputs)

    count, seconds = timed(run)
    return Variant(f"seed pipeline(), batch_size={batch_size}", count, seconds)


def bench_scan(
    detector: Classifier, paths: list[Path], batch_size: int, workers: int, runtime: str = "torch"
) -> Variant:
    """dfscan end to end: read + decode + preprocess (overlapped) + forward."""
    judge = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(paths[0].parent,)),
        images=ImagePolicy(),
        batch_size=batch_size,
    )
    items = [str(p) for p in paths]

    def run(subset: list[str]) -> int:
        results = list(judge_stream(judge, subset, threads=workers))
        failed = [r for r in results if r.status != "done"]
        assert len(results) == len(subset) and not failed, f"scan failed items: {failed[:3]}"
        return len(results)

    run(items[:batch_size])
    judge._memo.clear()  # the warm-up's scores must not answer the timed run
    count, seconds = timed(lambda: run(items))
    judge.close()
    suffix = "" if runtime == "torch" else f" ({runtime})"
    return Variant(f"dfscan scan() end to end{suffix}, batch {batch_size}", count, seconds)


def bench_model_only(detector: Classifier, paths: list[Path], batch_size: int, label: str) -> Variant:
    """The forward alone on tensors prepared beforehand: the ceiling for scan()."""
    tensors = [load_pixels(p.read_bytes(), detector.preprocess, ImagePolicy())[0] for p in paths]
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    detector.predict(batches[0])

    scores: list[float] = []

    def run() -> int:
        scores.clear()
        for batch in batches:
            scores.extend(detector.predict(batch))
        return len(scores)

    count, seconds = timed(run)
    return Variant(f"{label}, batch {batch_size}", count, seconds, scores)


def bench_onnx(model_dir: Path, paths: list[Path], args: argparse.Namespace, cores: int) -> list[Variant]:
    """The ONNX Runtime backend: end to end and model only in fp32, and model only in int8."""
    cache = CACHE / "onnx"
    detector = load_classifier(str(model_dir), device="cpu", threads=cores, runtime="onnx", onnx_cache=cache)
    variants = [
        bench_scan(detector, paths, args.batch_size, args.workers, "onnx"),
        bench_model_only(detector, paths, args.batch_size, "dfscan model only (onnx fp32)"),
    ]
    del detector
    if args.int8:
        int8 = load_classifier(
            str(model_dir), device="cpu", int8=True, threads=cores, runtime="onnx", onnx_cache=cache
        )
        variants.append(bench_model_only(int8, paths, args.batch_size, "dfscan model only (onnx int8)"))
    return variants


def score_agreement(reference: Variant, others: list[Variant]) -> list[dict[str, object]]:
    """How far each variant's p(fake) is from the reference's, image by image.

    A random ViT-B puts every image near one score, so agreement is counted at the reference's median
    (which image sits above it), not at 0.5, where it would be trivially 100%.
    """
    ref = torch.tensor(reference.scores, dtype=torch.float64)
    median = ref.median()
    rows: list[dict[str, object]] = []
    for v in others:
        got = torch.tensor(v.scores, dtype=torch.float64)
        rows.append(
            {
                "variant": v.name,
                "max_abs_diff": (got - ref).abs().max().item(),
                "median_agreement": ((got >= median) == (ref >= median)).double().mean().item(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="JPEGs to scan per variant (default 64)")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a random ViT-B/16)")
    parser.add_argument("--batch-size", type=int, default=8, help="dfscan batch size (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="scan() decode threads (default 2)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True, help="also time int8")
    parser.add_argument(
        "--onnx", action=argparse.BooleanOptionalAction, default=True, help="also time the onnx runtime"
    )
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    console = Console()
    model_dir = args.model or random_vit_base(CACHE / "vit-base-patch16-224-random-real-fake")
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-") as tmp:
        paths = write_images(Path(tmp) / "images", args.images, seed=0)
        console.print(f"{len(paths)} JPEGs, checkpoint {model_dir}, {cores} cores, torch {torch.__version__}")
        detector = load_classifier(str(model_dir), device="cpu", threads=cores)
        variants = [
            bench_seed_pipeline(model_dir, paths, 1, warm=2),
            bench_seed_pipeline(model_dir, paths, 32, warm=min(32, len(paths))),
            bench_scan(detector, paths, args.batch_size, args.workers),
            bench_model_only(detector, paths, args.batch_size, "dfscan model only (fp32)"),
        ]
        if args.int8:
            int8 = load_classifier(str(model_dir), device="cpu", int8=True, threads=cores)
            variants.append(bench_model_only(int8, paths, args.batch_size, "dfscan model only (int8)"))
            del int8
        if args.onnx:
            variants.extend(bench_onnx(model_dir, paths, args, cores))

    seed_best = max(variants[0].img_per_s, variants[1].img_per_s)
    e2e, model_only = variants[2].img_per_s, variants[3].img_per_s
    checks = [
        ("end to end / model only", e2e / model_only, E2E_VS_MODEL_TARGET),
        ("end to end / best seed pipeline", e2e / seed_best, E2E_VS_PIPELINE_TARGET),
    ]
    table = Table(title=f"dfscan core benchmark ({detector.version}, {platform.processor() or 'cpu'})")
    table.add_column("variant")
    table.add_column("images", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("img/s", justify="right")
    table.add_column("x best seed", justify="right")
    table.add_column("x torch fp32 model only", justify="right")
    for v in variants:
        table.add_row(
            v.name,
            str(v.images),
            f"{v.seconds:.1f}",
            f"{v.img_per_s:.2f}",
            f"{v.img_per_s / seed_best:.2f}",
            f"{v.img_per_s / model_only:.2f}",
        )
    console.print(table)
    ratios = Table(title="targets")
    for column in ("ratio", "value", "target", "result"):
        ratios.add_column(column)
    for name, value, target in checks:
        verdict = "[green]PASS[/]" if value >= target else "[red]FAIL[/]"
        ratios.add_row(name, f"{value:.2f}", f">= {target}", verdict)
    console.print(ratios)
    agreement = score_agreement(variants[3], [v for v in variants[4:] if v.scores])
    if agreement:
        same = Table(title="scores vs torch fp32 model only (same tensors)")
        for column in ("variant", "max |delta p(fake)|", "same side of the fp32 median"):
            same.add_column(column)
        for row in agreement:
            same.add_row(str(row["variant"]), f"{row['max_abs_diff']:.2e}", f"{row['median_agreement']:.1%}")
        console.print(same)
    if args.json:
        report = {
            "model_version": detector.version,
            "images": len(paths),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "threads": cores,
            "torch": torch.__version__,
            "variants": [
                {"name": v.name, "images": v.images, "seconds": v.seconds, "img_per_s": v.img_per_s}
                for v in variants
            ],
            "agreement": agreement,
            "checks": [
                {"name": n, "value": value, "target": target, "pass": value >= target}
                for n, value, target in checks
            ],
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(value >= target for _, value, target in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
