"""The cost of ``--explain`` per region: a Judge with explanations against the same Judge without, paired.

``python -m bench.explain [--pairs 3] [--images 4] [--size base|tiny] [--threads 1]``

The checkpoint is a ViT image classifier of the shipped model's shape (``--size base``: ViT-B/16 at
224 px, random weights made here, served by torch in float32: the cost of a forward and a backward pass
does not depend on the weights). Faces off and provenance off, so each image is one region and the
difference is the heatmap (one forward and one backward pass on the judging thread). Each pair judges
``--images`` photo-like 1024x768 JPEGs with A (no explanation) then B (explain), fresh Judges per arm.
Printed per arm: CPU seconds (process time) and wall seconds per image, medians with min-max, B/A.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.images import write_images
from bench.second_model import _checkpoint
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.sources.read import SourcePolicy


def _arm(model: Classifier, explain: bool, images: list[Path], root: Path) -> tuple[float, float]:
    judge = Judge(model, sources=SourcePolicy(allowed_roots=(root,)), images=ImagePolicy(), explain=explain)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for path in images:
            verdict = judge.judge(str(path))
            assert verdict.done and (verdict.explanation is not None) == explain, verdict.error
        return (time.process_time() - cpu) / len(images), (time.perf_counter() - wall) / len(images)
    finally:
        judge.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = load_classifier(str(_checkpoint(root / "model", args.size, 1)))
        images = write_images(root / "images", args.images, seed=0)
        _arm(model, True, images[:1], root)  # warm-up
        results: dict[str, list[tuple[float, float]]] = {"A no explanation": [], "B --explain": []}
        for _ in range(args.pairs):
            results["A no explanation"].append(_arm(model, False, images, root))
            results["B --explain"].append(_arm(model, True, images, root))
    print(
        f"load average {os.getloadavg()[0]:.1f}; ViT {args.size}; torch threads {args.threads}; "
        f"{args.images} images x {args.pairs} pairs; one region per image"
    )
    medians = {}
    for name, runs in results.items():
        cpu = [c for c, _ in runs]
        wall = [w for _, w in runs]
        medians[name] = statistics.median(cpu)
        print(
            f"{name:18} cpu s/image {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})"
            f"  wall s/image {statistics.median(wall):.3f} ({min(wall):.3f}-{max(wall):.3f})"
        )
    print(
        f"B/A cpu {medians['B --explain'] / medians['A no explanation']:.2f}; "
        f"heatmap cpu s/region {medians['B --explain'] - medians['A no explanation']:.3f}"
    )


if __name__ == "__main__":
    main()
