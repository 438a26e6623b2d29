"""Peak memory of faces mode: the full-size image held while its faces are found, inside the decode budget.

    python -m bench.road_memory [--images 8] [--side 6000x4000] [--decode-memory-mib 256]

Judges ``--images`` large PNGs on as many threads at once with faces on, behind a face detector that
takes 1 s a batch (a busy detector), and prints the process's peak RSS in two runs, each in its own
process: ``road`` (the job's held image reserved from ``DFSCAN_DECODE_MEMORY`` until its crops are
made) and ``unreserved`` (the same road with the reservation switched off: what faces mode did before,
the decoded image held outside the budget while it waited for the detector).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _run(mode: str, images: int, side: tuple[int, int], decode_memory: int, model: str) -> dict[str, float]:
    from PIL import Image

    from worker.inference.budget import Budget
    from worker.inference.faces.crops import Face, FacePolicy
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.judge import Judge
    from worker.inference.model.classifier import load_classifier
    from worker.inference.sources.read import SourcePolicy

    class SlowFinder:
        version = "slow-1"

        def detect(self, batch: list[Image.Image]) -> list[list[Face]]:
            time.sleep(1.0)
            return [[Face((100, 100, 200, 200), 0.99)] for _ in batch]

    class Unreserved(Judge):
        def new_budget(self) -> Budget:
            return Budget(self.limits, memory=None)

    buf = io.BytesIO()
    Image.new("RGB", side, (120, 80, 60)).save(buf, "PNG", compress_level=1)
    data = [buf.getvalue()] * images
    cls = Judge if mode == "road" else Unreserved
    judge = cls(
        load_classifier(model),
        sources=SourcePolicy(),
        images=ImagePolicy(max_pixels=side[0] * side[1], decode_memory=decode_memory),
        faces=FacePolicy("auto", SlowFinder(), max_faces=1, min_face_px=8),  # type: ignore[arg-type]
        batch_size=images,
        batch_wait=0.5,
    )
    start = time.perf_counter()
    verdicts = []
    threads = [threading.Thread(target=lambda d=d: verdicts.append(judge.judge_bytes(d))) for d in data]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    judge.close()
    assert all(v.done for v in verdicts), [v.error for v in verdicts]
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", default="6000x4000")
    parser.add_argument("--decode-memory-mib", type=int, default=256)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.side.split("x"))
    memory = args.decode_memory_mib * 1024 * 1024
    if args.child:
        print(json.dumps(_run(args.child, args.images, (width, height), memory, args.model)))
        return
    from tests.fixtures.models import REAL_FAKE, save_tiny_vit

    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_vit(Path(tmp) / "m", REAL_FAKE))
        table = Table(
            title=f"{args.images} x {args.side} PNGs, faces on, decode memory {args.decode_memory_mib} MiB"
        )
        for column in ("mode", "peak RSS (MiB)", "seconds"):
            table.add_column(column)
        for mode in ("unreserved", "road"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.road_memory", "--child", mode, "--model", model]
                + ["--images", str(args.images), "--side", args.side]
                + ["--decode-memory-mib", str(args.decode_memory_mib)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            table.add_row(mode, f"{row['peak_rss_mib']:.0f}", f"{row['seconds']:.1f}")
        Console().print(table)


if __name__ == "__main__":
    main()
