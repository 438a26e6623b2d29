"""The second opinion's cost per image: a Judge with ``DFSCAN_SECOND_MODEL`` against the same Judge
without it, paired.

``python -m bench.second_model [--pairs 3] [--images 4] [--size base|tiny] [--threads 1]``

Both checkpoints are ViT image classifiers of the shipped model's shape (``--size base``: ViT-B/16 at
224 px, 86 M parameters, random weights made here: the cost of a forward pass does not depend on the
weights) saved to a temporary folder, so nothing is downloaded. Faces off and provenance off, so the
difference is the second model's preprocessing and forward pass. Each pair judges ``--images``
photo-like 1024x768 JPEGs with A (first model only) then B (first + second), each image once (fresh
Judges per arm: no memo). Printed per arm: CPU seconds (process time) and wall seconds per image,
medians with min-max, and the B/A ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from bench.images import write_images
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.sources.read import SourcePolicy

SIZES = {
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
    ),
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    ),
}


def _checkpoint(path: Path, size: str, seed: int) -> Path:
    torch.manual_seed(seed)
    shape = SIZES[size]
    config = ViTConfig(
        **shape, id2label={0: "Realism", 1: "Deepfake"}, label2id={"Realism": 0, "Deepfake": 1}
    )
    ViTForImageClassification(config).eval().save_pretrained(path)
    side = int(shape["image_size"])
    ViTImageProcessorPil(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    return path


def _arm(first: Classifier, second: Classifier | None, images: list[Path], root: Path) -> tuple[float, float]:
    judge = Judge(first, sources=SourcePolicy(allowed_roots=(root,)), images=ImagePolicy(), second=second)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for path in images:
            verdict = judge.judge(str(path))
            assert verdict.done and (second is None) == (verdict.second_opinion is None), verdict.error
        return (time.process_time() - cpu) / len(images), (time.perf_counter() - wall) / len(images)
    finally:
        judge.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = load_classifier(str(_checkpoint(root / "first", args.size, 1)))
        second = load_classifier(str(_checkpoint(root / "second", args.size, 2)))
        images = write_images(root / "images", args.images, seed=0)
        _arm(first, second, images[:1], root)  # warm-up
        results: dict[str, list[tuple[float, float]]] = {"A first only": [], "B first + second": []}
        for _ in range(args.pairs):
            results["A first only"].append(_arm(first, None, images, root))
            results["B first + second"].append(_arm(first, second, images, root))
    print(
        f"load average {os.getloadavg()[0]:.1f}; ViT {args.size}; torch threads {args.threads}; {args.images} images x {args.pairs} pairs"
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
    print(f"B/A cpu {medians['B first + second'] / medians['A first only']:.2f}")


if __name__ == "__main__":
    main()
