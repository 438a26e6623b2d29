"""A video judged on faces against the same video judged whole: what the detection stage costs.

``python -m bench.video_faces [--pairs 3] [--frames 16] [--model base|tiny]``

A 640x360 H.264 clip (``tests/fixtures/faces.face_clip``: scikit-image's astronaut face, 110 px, in every
frame) is judged through :class:`worker.inference.judge.Judge` (the real path: sampling, detection on the
face micro-batcher, crops to the model batcher, aggregation) with faces off and with faces ``auto``
(MTCNN on the sampled frames). Each measurement is its own process (model and detector load and a
warm-up video not timed), run in alternating pairs off, auto, off, auto ...; medians and spreads of
wall and CPU seconds per video, the verdict's ``detect_ms`` and ``infer_ms``, and the ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.core import CACHE, random_vit_base

THREADS = 2


def one_run(mode: str, frames: int, model: str) -> dict[str, float]:
    from tests.fixtures.faces import face_clip
    from tests.fixtures.models import REAL_FAKE, save_tiny_vit
    from worker.inference.faces.crops import FacePolicy, load_face_detector
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.judge import Judge
    from worker.inference.model.classifier import load_classifier
    from worker.inference.sources.read import SourcePolicy
    from worker.inference.video.decode import VideoPolicy

    torch.set_num_threads(THREADS)
    if model == "base":
        path = random_vit_base(CACHE / "vit-base-random")
    else:
        path = CACHE / "vit-tiny-random"
        if not (path / "config.json").exists():
            save_tiny_vit(path, REAL_FAKE, seed=3)
    detector = load_classifier(str(path), device="cpu", threads=THREADS)
    faces = None
    if mode == "auto":
        faces = FacePolicy("auto", load_face_detector("mtcnn", "cpu", THREADS))
    judge = Judge(
        detector,
        sources=SourcePolicy(),
        images=ImagePolicy(),
        videos=VideoPolicy(frames=frames),
        batch_size=8,
        faces=faces,
    )
    data, _ = face_clip([True] * frames, size=(640, 360), face_px=110, seed=5)
    try:
        judge.judge_bytes(data)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        verdict = judge.judge_bytes(data)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        judge.close()
    assert verdict.done, verdict.error
    n_faces = sum(len(f.faces) for f in verdict.frames or ())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "detect_ms": verdict.detect_ms,
        "infer_ms": verdict.infer_ms,
        "decode_ms": verdict.decode_ms,
        "faces": n_faces,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--model", choices=("base", "tiny"), default="base")
    parser.add_argument("--run-mode", choices=("off", "auto"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.run_mode:
        print(json.dumps(one_run(args.run_mode, args.frames, args.model)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {"off": [], "auto": []}
    for _ in range(args.pairs):
        for mode in ("off", "auto"):
            cmd = [sys.executable, "-m", "bench.video_faces", "--run-mode", mode]
            cmd += ["--frames", str(args.frames), "--model", args.model]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.frames} frames, 640x360, ViT-{args.model}, {args.pairs} pairs (off, auto alternated)")
    print("| faces | wall s/video median (min-max) | CPU s median (min-max) | detect ms | infer ms | faces |")
    print("|---|---|---|---|---|---|")
    for mode, rs in runs.items():

        def stat(key: str, rs: list[dict[str, float]] = rs) -> str:
            values = [r[key] for r in rs]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        det = statistics.median(r["detect_ms"] for r in rs)
        inf = statistics.median(r["infer_ms"] for r in rs)
        print(
            f"| {mode} | {stat('wall_s')} | {stat('cpu_s')} | {det:.0f} | {inf:.0f} | {rs[0]['faces']:.0f} |"
        )
    wall = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu_s"] for r in rs) for m, rs in runs.items()}
    print(f"auto/off: wall {wall['auto'] / wall['off']:.2f}x, CPU {cpu['auto'] / cpu['off']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
