"""What the console's previews cost the worker (docs/benchmarks.md): decode + the model's resize + PDQ (what
a worker does for every image) with and without the JPEG preview made from the same decoded pixels, in
alternating whole-process runs (A B A B ...), and the bytes a preview and a frame thumbnail weigh.

Usage: ``PYTHONPATH=. python -m bench.previews [--pairs 3] [--images 24]``

Each run decodes the same photo-like JPEGs (bench/images.py, 256x256 to 1024x768) three times over
(``decode_resized_hashed``, no draft) in a fresh interpreter; it prints CPU ms (process time) and wall ms
per image. The difference of the medians is the preview's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one(previews: bool, count: int) -> dict[str, float]:
    from bench.images import write_images
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.images.resizing import decode_resized_hashed
    from worker.inference.model.preprocess import PreprocessConfig

    spec = PreprocessConfig.from_dict({}).resize
    policy = ImagePolicy(previews=previews)
    with tempfile.TemporaryDirectory() as tmp:
        datas = [p.read_bytes() for p in write_images(Path(tmp), count, seed=3)]
    decode_resized_hashed(datas[0], policy, spec, None)  # warm
    cpu, wall = time.process_time(), time.perf_counter()
    sizes = []
    for _ in range(3):
        for data in datas:
            out = decode_resized_hashed(data, policy, spec, None)
            if out[4] is not None:
                sizes.append(len(out[4]))
    n = 3 * len(datas)
    return {
        "cpu_ms": (time.process_time() - cpu) * 1000 / n,
        "wall_ms": (time.perf_counter() - wall) * 1000 / n,
        "preview_bytes_mean": statistics.mean(sizes) if sizes else 0.0,
        "preview_bytes_max": max(sizes) if sizes else 0.0,
    }


def _thumb_bytes(count: int) -> tuple[float, int]:
    from PIL import Image

    from bench.images import write_images
    from worker.inference.images.previews import THUMB_SIDE, preview_jpeg

    with tempfile.TemporaryDirectory() as tmp:
        sizes = []
        for path in write_images(Path(tmp), count, seed=5):
            with Image.open(path) as im:
                sizes.append(len(preview_jpeg(im.convert("RGB"), THUMB_SIDE) or b""))
    return statistics.mean(sizes), max(sizes)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one == "on", args.images)))
        return
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.pairs):
        for arm in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.previews", "--one", arm, "--images", str(args.images)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"## previews, ms per image ({args.images} JPEGs 256x256-1024x768, {args.pairs} pairs, load {os.getloadavg()[0]:.1f})"
    )
    for arm in ("off", "on"):
        cpu = [r["cpu_ms"] for r in runs[arm]]
        wall = [r["wall_ms"] for r in runs[arm]]
        print(f"previews {arm:3}: cpu {_spread(cpu)}  wall {_spread(wall)}")
    extra = [b["cpu_ms"] - a["cpu_ms"] for a, b in zip(runs["off"], runs["on"], strict=True)]
    print(f"preview cpu per image (on - off, per pair): {_spread(extra)}")
    print(
        f"preview bytes: mean {runs['on'][0]['preview_bytes_mean']:.0f}, max {runs['on'][0]['preview_bytes_max']:.0f}"
    )
    from worker.inference.images.previews import THUMB_SIDE

    mean, top = _thumb_bytes(args.images)
    print(f"frame thumbnail ({THUMB_SIDE} px) bytes: mean {mean:.0f}, max {top}")


if __name__ == "__main__":
    main()
