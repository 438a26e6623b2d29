"""Provenance reading's cost per file, against the per-file cost every source already pays (its sha256).

``python -m bench.provenance [--pairs 5] [--n 300] [--json PATH]``

Files, made in memory: a 1024x768 photo-like JPEG (~200 kB) and PNG without any declaration, the same
JPEG with EXIF Software, an XMP-declared PNG, and the JPEG with a C2PA manifest signed by a certificate
made here (needs ``cryptography``). For each file, ``--pairs`` pairs alternate A (``image_sha256``, the
baseline) and B (``read_provenance``), each timing ``--n`` calls in-process; per pair the CPU (process
time) and wall milliseconds per call. Printed: medians, min-max spread, and the B/A ratio. The target is
2 ms CPU for a file without a manifest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.fixtures.provenance import jpeg_with_software, png_with, signed_jpeg, xmp_packet
from worker.inference.images.decode import image_sha256
from worker.inference.provenance import ProvenancePolicy, read_provenance


def _photo(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _files() -> dict[str, bytes]:
    jpeg = _photo("JPEG")
    return {
        "jpeg, no declaration": jpeg,
        "png, no declaration": _photo("PNG"),
        "jpeg, EXIF Software": jpeg_with_software("GIMP 2.10"),
        "png, XMP declared": png_with(xmp_packet("trainedAlgorithmicMedia", "Generator")),
        "jpeg, C2PA signed": signed_jpeg("trainedAlgorithmicMedia", image=jpeg),
    }


def _per_call(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - cpu) * 1000 / n, (time.perf_counter() - wall) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    policy = ProvenancePolicy()
    print(f"load average {os.getloadavg()[0]:.1f} (2-core machine shared with other work)")
    print(
        f"{'file':24} {'bytes':>8} {'A sha256 cpu ms':>16} {'B provenance cpu ms':>20} {'B wall ms':>10} {'B/A':>6}"
    )
    report: dict[str, Any] = {}
    for name, data in _files().items():
        read_provenance(data, policy)  # warm: imports, the c2pa context
        a_cpu, b_cpu, b_wall = [], [], []
        for _ in range(args.pairs):
            a_cpu.append(_per_call(lambda d=data: image_sha256(d), args.n)[0])
            cpu, wall = _per_call(lambda d=data: read_provenance(d, policy), args.n)
            b_cpu.append(cpu)
            b_wall.append(wall)
        a, b = statistics.median(a_cpu), statistics.median(b_cpu)
        print(
            f"{name:24} {len(data):>8} {a:>9.3f} ({min(a_cpu):.3f}-{max(a_cpu):.3f})"
            f" {b:>9.3f} ({min(b_cpu):.3f}-{max(b_cpu):.3f}) {statistics.median(b_wall):>9.3f} {b / a:>6.2f}"
        )
        report[name] = {
            "bytes": len(data),
            "sha256_cpu_ms": a_cpu,
            "provenance_cpu_ms": b_cpu,
            "provenance_wall_ms": b_wall,
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
