"""Whole-process benchmark: ``dfscan scan FOLDER`` vs the seed's ``pipeline("image-classification")``.

``python -m bench.scan_vs_seed [--pairs 3] [--images 96] [--startup-pairs 3] [--cold] [--json PATH]``

What a user runs, start-up included, with default settings and no opt-in flags:

- **A** (baseline): a fresh ``python`` process running the seed's documented usage,
  ``transformers.pipeline("image-classification", model=DIR, device="cpu")`` called on the folder's
  files with ``batch_size=32``, writing the fake-class score of every image;
- **B**: ``python -m dfscan.cli.main scan FOLDER --format json`` on a fresh SQLite database per run.

Runs alternate A B A B ... (``--pairs`` pairs) so that both see the same machine load; wall seconds
(``time.perf_counter`` around the process) and CPU seconds (user + system of the child, from
``resource.getrusage(RUSAGE_CHILDREN)`` deltas) are measured per run. The table gives medians, the
min-max spread, and the median and range of the per-pair ratios A/B (> 1 means dfscan is faster).
Every B run's p(fake) is checked against A's fake-class score, image by image (``|dp| <= 1e-5``).

A second set of pairs scans a folder with one small image: the fixed start-up cost of each.

The inputs are made once into a cache directory (``--cache``): ``--images`` photo-like JPEGs of mixed
sizes (320x240 up to 4000x3000) and a randomly initialised ViT-B/16 Real/Fake checkpoint (86 M
parameters, the size of the public deepfake checkpoints) saved with ``save_pretrained``. Both sides run
with ``HF_HUB_OFFLINE=1`` and ``XDG_CACHE_HOME`` pointing into the cache directory, so dfscan's own
caches (the ONNX export, the weight digest) live there; ``--cold`` empties them first and reports
that first run (which builds them) on its own line, outside the medians.

This module's top level imports only the standard library: the driver's own imports are not timed
anyway (children only), but the seed side (``--seed-run``) starts with this module and must not pay
for anything the seed would not import.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "dfscan-bench" / "scan-vs-seed"
MODEL_DIR = Path(tempfile.gettempdir()) / "dfscan-bench" / "vit-base-patch16-224-random-real-fake"
TARGET = 1.2  # dfscan / seed, wall and CPU
MAX_DP = 1e-5
SIZES = [
    (320, 240),
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 960),
    (1600, 1200),
    (1920, 1080),
    (2048, 1536),
    (3000, 2000),
    (4000, 3000),
    (768, 1024),
    (1080, 1920),
]
ROOT = Path(__file__).resolve().parent.parent


# --- the seed side (runs in its own process) ---------------------------------------------------------


def seed_run(model: Path, folder: Path, out: Path, batch_size: int) -> None:
    """The seed's usage: a transformers image-classification pipeline over the folder's files."""
    import warnings

    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torchvision not installed, falling back to the PIL processor"
        classifier = pipeline("image-classification", model=str(model), device="cpu")
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    outputs = classifier(files, batch_size=batch_size)
    scores = {
        Path(f).name: next(o["score"] for o in output if o["label"].lower() == "fake")
        for f, output in zip(files, outputs, strict=True)
    }
    out.write_text(json.dumps(scores))


# --- inputs -----------------------------------------------------------------------------------------


def make_inputs(cache: Path, count: int) -> tuple[Path, Path, Path]:
    """The model directory, the image folder and a one-image folder, made once."""
    sys.path.insert(0, str(ROOT))
    from bench.core import random_vit_base
    from bench.images import photo_like

    model = random_vit_base(MODEL_DIR)
    images = cache / f"images-{count}"
    if len(list(images.glob("*.jpg"))) != count:
        import numpy as np

        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            width, height = SIZES[i % len(SIZES)]
            photo_like(width, height, rng).save(images / f"img-{i:03d}-{width}x{height}.jpg", quality=90)
    one = cache / "one-image"
    if not (one / "one.jpg").exists():
        one.mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted(images.glob("img-000-*.jpg"))[0], one / "one.jpg")
    return model, images, one


# --- timing -----------------------------------------------------------------------------------------


@dataclass
class Run:
    side: str  # "seed" | "dfscan"
    wall: float
    cpu: float
    scores: dict[str, float] = field(default_factory=dict, repr=False)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(cmd: list[str], env: dict[str, str], stdout_path: Path) -> tuple[float, float]:
    cpu0, t0 = _children_cpu(), time.perf_counter()
    with stdout_path.open("wb") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.PIPE, cwd=ROOT, check=False)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    return wall, cpu


def run_seed(model: Path, folder: Path, work: Path, env: dict[str, str], batch_size: int) -> Run:
    out = work / "seed-scores.json"
    cmd = [sys.executable, "-m", "bench.scan_vs_seed", "--seed-run", str(model), str(folder), str(out)]
    cmd += ["--seed-batch-size", str(batch_size)]
    wall, cpu = timed_process(cmd, env, work / "seed.out")
    return Run("seed", wall, cpu, json.loads(out.read_text()))


def run_dfscan(model: Path, folder: Path, work: Path, env: dict[str, str], n: int) -> Run:
    db = work / f"dfscan-{n}.db"
    db.unlink(missing_ok=True)
    env = {**env, "DFSCAN_MODEL": str(model), "DFSCAN_DATABASE_URL": f"sqlite:///{db}"}
    stdout = work / "dfscan.out"
    cmd = [sys.executable, "-m", "dfscan.cli.main", "scan", str(folder), "--format", "json"]
    wall, cpu = timed_process(cmd, env, stdout)
    rows = [json.loads(line) for line in stdout.read_text().splitlines() if line.strip()]
    failed = [r for r in rows if r.get("status") != "done"]
    if failed:
        raise SystemExit(f"dfscan failed on {len(failed)} images: {failed[:2]}")
    db.unlink(missing_ok=True)
    return Run("dfscan", wall, cpu, {Path(r["source"]).name: float(r["fake_score"]) for r in rows})


def max_dp(seed: Run, ours: Run) -> float:
    if set(seed.scores) != set(ours.scores):
        raise SystemExit(f"different images: seed {len(seed.scores)}, dfscan {len(ours.scores)}")
    return max(abs(seed.scores[k] - ours.scores[k]) for k in seed.scores)


def pairs(
    label: str, n: int, model: Path, folder: Path, work: Path, env: dict[str, str], batch: int
) -> dict[str, object]:
    runs: list[tuple[Run, Run]] = []
    for i in range(n):
        a = run_seed(model, folder, work, env, batch)
        b = run_dfscan(model, folder, work, env, i)
        runs.append((a, b))
        print(
            f"  {label} pair {i + 1}/{n}: seed {a.wall:.1f}s wall {a.cpu:.1f}s cpu | "
            f"dfscan {b.wall:.1f}s wall {b.cpu:.1f}s cpu | max|dp| {max_dp(a, b):.1e}",
            file=sys.stderr,
            flush=True,
        )
    return summarise(label, runs)


def summarise(label: str, runs: list[tuple[Run, Run]]) -> dict[str, object]:
    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "label": label,
        "pairs": len(runs),
        "images": len(runs[0][0].scores),
        "seed_wall": stats([a.wall for a, _ in runs]),
        "dfscan_wall": stats([b.wall for _, b in runs]),
        "seed_cpu": stats([a.cpu for a, _ in runs]),
        "dfscan_cpu": stats([b.cpu for _, b in runs]),
        "wall_ratio": stats([a.wall / b.wall for a, b in runs]),
        "cpu_ratio": stats([a.cpu / b.cpu for a, b in runs]),
        "max_dp": max(max_dp(a, b) for a, b in runs),
    }


def print_report(results: list[dict[str, object]], first: Run | None, model: Path) -> bool:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def cell(s: object) -> str:
        assert isinstance(s, dict)
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    table = Table(title=f"dfscan scan vs seed pipeline, whole process, {os.cpu_count()} cores ({model.name})")
    for column in ("set", "pairs", "images", "side", "wall s", "cpu s"):
        table.add_column(column)
    ratios = Table(title=f"seed / dfscan per pair: median (min-max); target >= {TARGET}, max|dp| <= {MAX_DP}")
    for column in ("set", "wall ratio", "cpu ratio", "max |dp|", "result"):
        ratios.add_column(column)
    ok = True
    for r in results:
        for side in ("seed", "dfscan"):
            table.add_row(
                str(r["label"]),
                str(r["pairs"]),
                str(r["images"]),
                side,
                cell(r[f"{side}_wall"]),
                cell(r[f"{side}_cpu"]),
            )
        wall_med = r["wall_ratio"]["median"]  # type: ignore[index]
        cpu_med = r["cpu_ratio"]["median"]  # type: ignore[index]
        passed = wall_med >= TARGET and cpu_med >= TARGET and float(r["max_dp"]) <= MAX_DP  # type: ignore[arg-type]
        if r["label"] == "folder":
            ok = ok and passed
        ratios.add_row(
            str(r["label"]),
            cell(r["wall_ratio"]),
            cell(r["cpu_ratio"]),
            f"{r['max_dp']:.1e}",
            ("[green]PASS[/]" if passed else "[red]FAIL[/]") if r["label"] == "folder" else "(info)",
        )
    if first is not None:
        table.add_row(
            "first run, cold caches",
            "1",
            str(len(first.scores)),
            "dfscan",
            f"{first.wall:.2f}",
            f"{first.cpu:.2f}",
        )
    console.print(table)
    console.print(ratios)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scan_vs_seed", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="A B pairs on the folder (default 3)")
    parser.add_argument("--startup-pairs", type=int, default=3, help="A B pairs on one image (0: skip)")
    parser.add_argument("--images", type=int, default=96, help="JPEGs in the folder (default 96)")
    parser.add_argument("--seed-batch-size", type=int, default=32, help="the pipeline's batch_size")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"inputs and caches (default {CACHE})")
    parser.add_argument("--cold", action="store_true", help="empty dfscan's caches; time the first run alone")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument(
        "--seed-run", nargs=3, type=Path, metavar=("MODEL", "FOLDER", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.seed_run:
        model, folder, out = args.seed_run
        seed_run(model, folder, out, args.seed_batch_size)
        return 0

    model, images, one = make_inputs(args.cache, args.images)
    xdg = args.cache / "xdg-cache"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(xdg),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in [k for k in env if k.startswith("DFSCAN_")]:
        del env[key]  # default settings only
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-") as tmp:
        work = Path(tmp)
        first: Run | None = None
        if args.cold:
            shutil.rmtree(xdg / "dfscan", ignore_errors=True)
            first = run_dfscan(model, one, work, env, -1)
            print(f"  first run (cold caches): {first.wall:.1f}s wall {first.cpu:.1f}s cpu", file=sys.stderr)
        else:  # warm dfscan's caches (and the OS page cache for both sides), untimed
            run_dfscan(model, one, work, env, -1)
        run_seed(model, one, work, env, args.seed_batch_size)
        results = [pairs("folder", args.pairs, model, images, work, env, args.seed_batch_size)]
        if args.startup_pairs:
            results.append(
                pairs("one image", args.startup_pairs, model, one, work, env, args.seed_batch_size)
            )
    ok = print_report(results, first, model)
    if args.json:
        payload = {
            "results": results,
            "first_run": None if first is None else {"wall": first.wall, "cpu": first.cpu},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
