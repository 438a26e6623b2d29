"""The GPU check: one command on a bare CUDA host, no network, at most ~8 minutes; one JSON and one table.

On a machine with network (this repository's checkout), put dfscan's wheel and the dependencies a bare
CUDA host lacks into a folder that travels with the checkout (``.whl/`` is ignored by git)::

    python bench/gpu.py --fetch-wheels .whl

On the GPU host (Python 3.12 with torch, transformers and Pillow; nothing is downloaded)::

    python bench/gpu.py --wheels .whl --out bench/out/gpu

Steps, each timed and recorded (a step that fails is recorded with its error and the others still run;
a step that would pass ``--budget-s`` is skipped and says so):

1. **install**: ``pip install --no-index --no-deps --target`` the wheels of ``--wheels``; every later step
   imports dfscan from there (the scans run ``python -m dfscan.cli.main`` with that ``PYTHONPATH``).
2. **ceiling**: a random-init ViT-B/16 (``ViTConfig()`` defaults, 224 px; no hub download) forward in
   img/s by batch size in bf16 and fp16 autocast and fp32.
3. **processes**: N processes (1, 2, 4) each running that forward loop at once on the one GPU (under
   CUDA MPS where its daemon runs, else time-sliced), total img/s against one process at N times the batch:
   whether N workers per GPU or one model owner feeds it better.
4. **scan**: ``dfscan scan`` end to end on ``--images`` generated photo-sized JPEGs (640x480 to 1024x768,
   photo-like, no real faces), the same checkpoint, faces auto and off, batch ``--batch`` (default: what
   ``dfscan worker`` picks for this GPU); img/s, wall and CPU seconds of the scan process.
5. **numerics**: the same 256 images' p(fake) in bf16 (fp16 where the GPU has no native bf16) and fp32:
   max and mean |Δp|, against ``PRECISION_TOLERANCE`` (whether DFSCAN_SHARE_CACHE_ACROSS_PRECISION may be set).
6. **memory**: peak GPU memory of one worker's model and face detector at the scan's batch size
   (``torch.cuda.max_memory_reserved``; what each worker process on a shared GPU needs).
7. **compile** (last: its compilations take the longest): bf16 img/s at the scan's batch size eager, under
   ``torch.compile`` and under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), the numbers
   that decide whether serving should compile; a CPU cannot measure them.

``--dry-run`` runs every step on the CPU at small sizes (a tiny ViT, 16 images, batch sizes 1 and 2, fp32
only, no torch.compile); CUDA-only measurements are recorded as skipped. The test suite runs it, so the
script is not broken when a GPU shows up. Not measured here: GPU JPEG decoding (nvJPEG needs torchvision,
which a bare host lacks).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# What a bare CUDA host already has (and whose wheels are too large to carry): never downloaded.
HOST_HAS = {"torch", "transformers", "pillow", "numpy", "safetensors", "huggingface-hub", "tokenizers"}
# dfscan's own imports for `dfscan scan` beyond those: the base dependencies and the worker extra's small
# ones (onnx and onnxruntime are not needed on CUDA, where the runtime is torch).
SKIP_EXTRAS = {"onnx", "onnxruntime"}
TOTAL_BUDGET_S = 480.0


def fetch_wheels(folder: Path) -> list[Path]:
    """dfscan's wheel and, for CPython 3.12 on x86-64 Linux, every dependency the host lacks (the versions
    installed here), into ``folder``. Needs network; run it where the checkout is."""
    from importlib.metadata import PackageNotFoundError, distribution, requires

    from packaging.requirements import Requirement

    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(folder),
            str(REPO),
        ],
        check=True,
    )
    wanted: dict[str, str] = {}
    todo = [Requirement(r) for r in requires("dfscan") or []]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if req.marker and not req.marker.evaluate({"extra": "worker"}):
            continue
        if name in HOST_HAS or name in SKIP_EXTRAS or name in wanted or name == "dfscan":
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        wanted[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or [] if "extra ==" not in r or "redis" in r]
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)]
    platforms += ["--platform=manylinux2014_x86_64", "--platform=any"]
    for name, version in sorted(wanted.items()):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
             "--implementation=cp", *platforms, "-d", str(folder), f"{name}=={version}"],
            check=True,
        )  # fmt: skip
    return sorted(folder.glob("*.whl"))


# --- steps ------------------------------------------------------------------------------------------------


class Run:
    """The report being built: each step's result or error, and the time budget."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.steps: dict[str, Any] = {}

    def step(self, name: str, estimate_s: float, fn: Callable[[], Any]) -> Any:
        left = self.budget_s - (time.monotonic() - self.started)
        if estimate_s > left:
            self.steps[name] = {"skipped": f"needs ~{estimate_s:.0f} s, {left:.0f} s of the budget left"}
            return None
        began = time.monotonic()
        print(f"[{time.monotonic() - self.started:6.1f} s] {name} ...", flush=True)
        try:
            result = fn()
        except Exception as exc:  # recorded: the other steps still run
            self.steps[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
            print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
            return None
        self.steps[name] = {"seconds": round(time.monotonic() - began, 1), **result}
        return result


def install(wheels: Path, target: Path) -> dict[str, Any]:
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not any(Path(f).name.startswith("dfscan-") for f in files):
        raise RuntimeError(f"no dfscan wheel in {wheels}; run `python bench/gpu.py --fetch-wheels {wheels}`")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(target), *files],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH", "")]))
    found = subprocess.run(
        [sys.executable, "-c", "import dfscan, worker.inference.judge; print(dfscan.__file__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"wheels": [Path(f).name for f in files], "dfscan": found}


def vit(tiny: bool) -> Any:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    labels = {0: "Real", 1: "Fake"}
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = ViTConfig(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}, **(small if tiny else {}))  # type: ignore[arg-type]  # fmt: skip
    return ViTForImageClassification(config).eval()


def forward_rate(model: Any, device: str, batch: int, dtype: str, seconds: float) -> float:
    """img/s of ``model`` on random pixels: warm-up, then as many forwards as fit in ``seconds``."""
    import torch

    x = torch.randn(batch, 3, 224, 224, device=device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def once() -> None:
        with torch.inference_mode():
            if amp is not None:
                with torch.autocast(device, dtype=amp):
                    model(pixel_values=x)
            else:
                model(pixel_values=x)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        once()
    sync()
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or n < 2:
        once()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - began)


def ceiling(cuda: bool, dry: bool) -> dict[str, Any]:
    import torch

    device = "cuda" if cuda else "cpu"
    model = vit(tiny=dry).to(device)
    dtypes = ["bf16", "fp16", "fp32"] if cuda else ["fp32"]
    batches = [1, 2] if dry else [1, 8, 32, 64, 128, 256, 512]
    rates: dict[str, dict[int, float]] = {}
    for dtype in dtypes:
        rates[dtype] = {}
        for batch in batches:
            try:
                rates[dtype][batch] = round(forward_rate(model, device, batch, dtype, 0.3 if dry else 2.0), 1)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
    return {"img_per_s": rates}


def compiled(cuda: bool, batch: int) -> dict[str, Any]:
    """bf16 img/s at ``batch`` eager, under ``torch.compile`` and under CUDA graphs (reduce-overhead)."""
    import torch

    if not cuda:
        return {"skipped": "CUDA only (torch.compile and CUDA graphs are measured on a GPU)"}
    model = vit(tiny=False).to("cuda")
    out: dict[str, Any] = {"batch": batch, "eager": round(forward_rate(model, "cuda", batch, "bf16", 3.0), 1)}
    for mode in ("default", "reduce-overhead"):  # reduce-overhead: CUDA graphs
        try:
            out[mode] = round(forward_rate(torch.compile(model, mode=mode), "cuda", batch, "bf16", 3.0), 1)
        except Exception as exc:  # an Inductor failure is a result too
            out[mode] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def _loop(device: str, batch: int, seconds: float, tiny: bool, queue: Any) -> None:
    queue.put(
        forward_rate(vit(tiny).to(device), device, batch, "bf16" if device == "cuda" else "fp32", seconds)
    )


def processes(cuda: bool, dry: bool) -> dict[str, Any]:
    """Total img/s of N processes sharing the device against one process at N x the batch."""
    device = "cuda" if cuda else "cpu"
    batch, seconds = (2, 0.5) if dry else (64, 5.0)
    # spawn: CUDA does not survive a fork, and neither does the OpenMP pool the CPU forwards above started.
    ctx = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {"mps_daemon": _mps_running(), "batch_per_process": batch}
    for n in (2,) if dry else (1, 2, 4):
        queue = ctx.Queue()
        procs = [ctx.Process(target=_loop, args=(device, batch, seconds, dry, queue)) for _ in range(n)]
        for p in procs:
            p.start()
        rates = [queue.get(timeout=300) for _ in procs]
        for p in procs:
            p.join()
        out[f"{n}_processes_img_per_s"] = round(sum(rates), 1)
        queue = ctx.Queue()
        one = ctx.Process(target=_loop, args=(device, batch * n, seconds, dry, queue))
        one.start()
        out[f"1_process_batch_{batch * n}_img_per_s"] = round(queue.get(timeout=300), 1)
        one.join()
    return out


def _mps_running() -> bool:
    try:
        return b"nvidia-cuda-mps" in subprocess.run(["ps", "-e", "-o", "comm"], capture_output=True).stdout
    except OSError:
        return False


def photo(width: int, height: int, seed: int) -> Any:
    """A photo-like JPEG's pixels (smooth background, a skin-coloured oval, sensor noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = np.clip(
        1.5 - np.hypot((xx - width / 2) / (width * 0.22), (yy - height / 2) / (height * 0.3)), 0, 1
    )
    skin = rng.uniform([150, 100, 80], [235, 190, 160]).astype(np.float32)
    image = base * (1 - inside[..., None]) + skin * inside[..., None] + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _write_one(args: tuple[Path, int, int, int]) -> None:
    path, width, height, seed = args
    photo(width, height, seed).save(path, format="JPEG", quality=90)


def write_images(folder: Path, count: int, dry: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(320, 240), (256, 192)] if dry else [(1024, 768), (800, 600), (640, 480), (768, 1024)]
    jobs = [(folder / f"img-{i:05d}.jpg", *sizes[i % len(sizes)], i) for i in range(count)]
    if dry:  # a few small images: no pool to start
        for job in jobs:
            _write_one(job)
        return [job[0] for job in jobs]
    with multiprocessing.get_context("spawn").Pool(max(1, min(16, os.cpu_count() or 1))) as pool:
        pool.map(_write_one, jobs, chunksize=16)
    return [job[0] for job in jobs]


def save_checkpoint(folder: Path, dry: bool) -> Path:
    """The random ViT (ViT-B/16, or the dry run's tiny one) with a 224 px image processor, saved for dfscan."""
    try:
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:  # transformers before the Pil/Fast split
        from transformers import ViTImageProcessor as Processor  # type: ignore[assignment]

    vit(tiny=dry).save_pretrained(folder)
    Processor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def scan(model: Path, images: Path, count: int, cuda: bool, batch: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"images": count, "batch": batch}
    for faces in ("off", "auto"):
        env = {
            **os.environ,
            "DFSCAN_DATABASE_URL": f"sqlite:///{tmp / f'scan-{faces}.db'}",
            "DFSCAN_DEVICE": "cuda" if cuda else "cpu",
            "DFSCAN_RUNTIME": "torch",  # what auto picks on CUDA; on a CPU it skips the one-off ONNX export
            "HF_HUB_OFFLINE": "1",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dfscan.cli.main", "scan", str(images), "--model", str(model),
             "--faces", faces, "--batch-size", str(batch), "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
        )  # fmt: skip
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode not in (0, 1) or len(rows) != count:
            raise RuntimeError(f"dfscan scan --faces {faces} exit {done.returncode}: {done.stderr[-1500:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        out[f"faces_{faces}"] = {
            "img_per_s": round(count / wall, 1),
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "cpu_ms_per_image": round(cpu / count * 1000, 2),
            "done": sum(1 for r in rows if r.get("status") == "done"),
            "model_version": rows[0].get("model_version"),
        }
    return out


def numerics(model: Path, paths: list[Path], cuda: bool) -> dict[str, Any]:
    import torch

    from worker.inference.images.decode import ImagePolicy
    from worker.inference.model.classifier import PRECISION_TOLERANCE, load_classifier, resolve_precision
    from worker.inference.model.preprocess import load_pixels

    device = "cuda" if cuda else "cpu"
    low = resolve_precision("auto", torch.device(device))
    reference = load_classifier(str(model), device=device, runtime="torch", precision="fp32")
    other = load_classifier(str(model), device=device, runtime="torch", precision=low) if cuda else reference
    pixels = torch.stack([load_pixels(p.read_bytes(), reference.preprocess, ImagePolicy())[0] for p in paths])
    a = torch.tensor(reference.predict(pixels), dtype=torch.float64)
    b = torch.tensor(other.predict(pixels), dtype=torch.float64)
    delta = (a - b).abs()
    return {
        "compared": f"{other.precision} vs fp32" if cuda else "skipped: fp32 only on CPU (the code path ran)",
        "images": len(paths),
        "max_abs_dp": float(delta.max()),
        "mean_abs_dp": float(delta.mean()),
        "tolerance": PRECISION_TOLERANCE,
        "within_tolerance": bool(delta.max() <= PRECISION_TOLERANCE),
        "versions": [reference.version, other.version],
    }


def memory(model: Path, cuda: bool, batch: int) -> dict[str, Any]:
    import torch

    from worker.inference.faces.crops import load_face_detector
    from worker.inference.model.classifier import load_classifier

    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clf = load_classifier(str(model), device=device, runtime="torch")
    detector = load_face_detector("mtcnn", device, 2)
    height, width = clf.preprocess.size
    clf.predict(torch.rand(batch, 3, height, width) * 2 - 1)
    side = (320, 240) if not cuda else (1024, 768)
    detector.detect([photo(*side, k) for k in range(min(batch, 32))])
    if not cuda:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"gpu": "skipped: no CUDA (the code path ran)", "process_peak_rss_mib": round(rss)}
    return {
        "batch": batch,
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
    }


def table(report: dict[str, Any]) -> str:
    lines = [f"# dfscan GPU check: {report['device']}", ""]
    for name, result in report["steps"].items():
        lines.append(f"## {name}")
        for key, value in result.items():
            if key != "trace":
                lines.append(f"- {key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetch-wheels", type=Path, help="download the wheels into this folder and stop")
    parser.add_argument("--wheels", type=Path, help="install dfscan from the wheels in this folder first")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=None, help="scan batch (default: dfscan worker's pick)")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S)
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU at small sizes")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        for path in fetch_wheels(args.fetch_wheels):
            print(path.name)
        return 0
    run = Run(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="dfscan-gpu-") as name:
        tmp = Path(name)
        if args.wheels:
            run.step("install", 60, lambda: install(args.wheels, tmp / "site"))
        import torch

        cuda = torch.cuda.is_available() and not args.dry_run
        device = (
            torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or 'x86-64'}, dry run)"
        )
        batch = args.batch
        if batch is None:
            from worker.inference.hardware import probe, serving_defaults

            batch = serving_defaults(probe("auto" if cuda else "cpu")).get("batch_size", 8 if cuda else 4)
        count = 16 if args.dry_run else args.images
        run.step("ceiling", 20 if args.dry_run else 120, lambda: ceiling(cuda, args.dry_run))
        run.step("processes", 20 if args.dry_run else 70, lambda: processes(cuda, args.dry_run))
        model = save_checkpoint(tmp / "model", args.dry_run)
        paths = write_images(tmp / "images", count, args.dry_run)
        run.step(
            "scan", 30 if args.dry_run else 150, lambda: scan(model, tmp / "images", count, cuda, batch, tmp)
        )
        run.step("numerics", 10 if args.dry_run else 30, lambda: numerics(model, paths[:256], cuda))
        run.step("memory", 10 if args.dry_run else 20, lambda: memory(model, cuda, batch))
        run.step("compile", 1 if args.dry_run else 120, lambda: compiled(cuda, batch))
    report = {
        "device": device,
        "cuda": cuda,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "total_s": round(time.monotonic() - run.started, 1),
        "steps": run.steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu.md").write_text(table(report))
    print(table(report))
    failed = [name for name, result in run.steps.items() if "error" in result]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
