"""Crowd recall: how many faces of a crowd scene the detector finds and the default settings judge, by
face size and by the number of faces in the scene.

``python -m bench.crowds [--seeds 2] [--json PATH]``

No package ships a group photograph with face boxes, so the crowds are composed, from real photographs
only and with known boxes (nothing committed, nothing fetched: all of it is in scikit-image's wheel):

- **faces**: the 100 faces of scikit-image's ``lfw_subset`` (Labeled Faces in the Wild, greyscale 25x25
  crops of real people, different people, poses and lighting; ``tests/fixtures/faces.lfw_crowd`` and
  ``bench/real_faces.py`` use them as mosaics) and the astronaut's head (``tests/fixtures/faces.paste_face``,
  colour). Each LFW face is pasted through a feathered oval mask, so it sits in the scene without a
  tile edge; its truth box is the crop (eyebrows to chin, as the crops were cut).
- **backgrounds**: face-free scikit-image photographs (``rocket``, ``coffee``, ``chelsea``, ``brick``),
  resized to the scene.
- **scenes**: N faces (4 to 49) of one size S (16 to 96 px) on a jittered grid, faces at least half a face
  apart, one scene per (N, S, seed); and "perspective" scenes, rows of faces shrinking from front to back
  as in a stand of spectators.

A face counts as **found** when a detection's centre lies in its box and its side is 0.5x-2x the box's
(``bench/real_faces.match``), and as **judged** when that detection is among the faces the default
settings choose (``DFSCAN_MAX_FACES``, ``DFSCAN_MIN_FACE_PX``, ``DFSCAN_MIN_FACE_SCORE``, landmark sanity:
``worker.inference.faces.screen.choose_faces``). False hits: detections matching no face.

Limits: the faces are frontal-ish, cropped tight and greyscale (LFW); real crowds also have profiles,
occlusion, motion blur and dark scenes, so these figures are an upper bound of real crowd recall.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from bench.real_faces import match
from dfscan.settings import Settings
from tests.fixtures.faces import paste_face, sample
from worker.inference.faces.crops import Face, load_face_detector
from worker.inference.faces.screen import choose_faces

SIZES = (16, 20, 24, 32, 48, 64, 96)
COUNTS = (4, 9, 16, 25, 36, 49)
BACKGROUNDS = ("rocket", "coffee", "chelsea", "brick")
THREADS = 2
Box = tuple[int, int, int, int]


def defaults() -> dict[str, float]:
    """The face settings' defaults, as written in dfscan/settings.py (not the environment)."""
    fields = Settings.model_fields
    return {
        "max_faces": fields["max_faces"].default,
        "min_face_px": fields["min_face_px"].default,
        "min_face_score": fields["min_face_score"].default,
    }


@dataclass
class Crowd:
    name: str
    count: int
    image: Image.Image
    truth: list[Box]
    sides: list[int]


@lru_cache(maxsize=1)
def _lfw() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray((tile * 255).astype(np.uint8)).convert("RGB") for tile in data.lfw_subset()[:100]]


@lru_cache(maxsize=8)
def _oval(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, side - 1, side - 1), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1, side // 16)))


def _background(width: int, height: int, k: int) -> Image.Image:
    return sample(BACKGROUNDS[k % len(BACKGROUNDS)]).resize((width, height), Image.Resampling.LANCZOS)


def _paste(scene: Image.Image, k: int, center: tuple[float, float], side: int) -> Box:
    """Face ``k`` (the astronaut every 10th, else an LFW face) with its box ``side`` px wide at ``center``."""
    if k % 10 == 9:
        return paste_face(scene, center, side)
    face = _lfw()[k % 100]
    # The LFW crop is the face; a margin of 15% of hair and cheeks, faded out by the oval.
    outer = round(side * 1.3)
    tile = face.resize((outer, outer), Image.Resampling.BICUBIC)
    left, top = round(center[0] - outer / 2), round(center[1] - outer / 2)
    scene.paste(tile, (left, top), _oval(outer))
    return (round(center[0] - side / 2), round(center[1] - side / 2), side, side)


def grid_crowd(count: int, side: int, seed: int) -> Crowd:
    """``count`` faces of ``side`` px on a jittered grid over a real background."""
    rng = np.random.default_rng(seed * 1000 + count * 7 + side)
    cols = math.ceil(math.sqrt(count * 4 / 3))
    rows = math.ceil(count / cols)
    step = side * 2
    width, height = max(640, cols * step + side), max(480, rows * step + side)
    scene = _background(width, height, seed + count)
    truth: list[Box] = []
    first = int(rng.integers(100))
    for k in range(count):
        cx = side + (k % cols) * step + float(rng.uniform(-0.2, 0.2)) * side
        cy = side + (k // cols) * step + float(rng.uniform(-0.2, 0.2)) * side
        truth.append(_paste(scene, first + k, (cx, cy), side))
    return Crowd(f"grid-{count}x{side}-s{seed}", count, scene, truth, [side] * count)


def perspective_crowd(seed: int, *, rows: int = 6, front: int = 96, back: int = 16) -> Crowd:
    """Rows of faces shrinking from ``front`` px (bottom) to ``back`` px (top), as a stand seen from the field."""
    rng = np.random.default_rng(10_000 + seed)
    width = 1600
    sizes = [round(front * (back / front) ** (r / (rows - 1))) for r in range(rows)]  # front row first
    height = sum(round(s * 2.1) for s in sizes) + front
    scene = _background(width, height, seed)
    truth: list[Box] = []
    sides: list[int] = []
    y = height - front // 2 - sizes[0]
    k = int(rng.integers(100))
    for side in sizes:
        step = side * 1.9
        x = side * 1.2 + float(rng.uniform(0, side))
        while x < width - side:
            truth.append(_paste(scene, k, (x, y), side))
            sides.append(side)
            k += 1
            x += step
        y -= round(side * 2.1)
    return Crowd(f"perspective-s{seed}", len(truth), scene, truth, sides)


def _bucket(side: int) -> int:
    return max(s for s in SIZES if s <= side) if side >= SIZES[0] else SIZES[0]


def run(seeds: int) -> dict[str, object]:
    torch.set_num_threads(THREADS)
    mtcnn = load_face_detector("mtcnn", "cpu", THREADS)
    rules = defaults()
    crowds = [grid_crowd(n, s, seed) for seed in range(seeds) for n in COUNTS for s in SIZES]
    crowds += [perspective_crowd(seed) for seed in range(seeds)]
    by_size: dict[int, dict[str, int]] = {}
    by_count: dict[int, dict[str, int]] = {}
    perspective = {"faces": 0, "found": 0, "judged": 0, "false": 0, "over_cap": 0}
    skipped: dict[str, int] = {}  # detections the defaults did not judge, by reason (every scene)
    started, cpu = time.perf_counter(), time.process_time()
    for crowd in crowds:
        found = mtcnn.detect([crowd.image])[0]
        choice = choose_faces(
            found,
            max_faces=int(rules["max_faces"]),
            min_face_px=int(rules["min_face_px"]),
            min_score=float(rules["min_face_score"]),
        )
        hits, false = match(found, crowd.truth)
        judged, _ = match(choice.chosen, crowd.truth)
        hit_boxes = _matched_truth(hits, crowd.truth)
        judged_boxes = _matched_truth(judged, crowd.truth)
        if crowd.name.startswith("perspective"):
            perspective["faces"] += crowd.count
            perspective["found"] += len(hit_boxes)
            perspective["judged"] += len(judged_boxes)
            perspective["false"] += len(false)
            perspective["over_cap"] += choice.counts.skipped.get("over_cap", 0)
        for reason, n in choice.counts.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        grid = not crowd.name.startswith("perspective")
        if grid:
            by_count.setdefault(crowd.count, {"faces": 0, "found": 0, "judged": 0, "false": 0})
            by_count[crowd.count]["false"] += len(false)
        for i, side in enumerate(crowd.sides):
            rows = [by_size.setdefault(_bucket(side), {"faces": 0, "found": 0, "judged": 0})]
            if grid:
                rows.append(by_count[crowd.count])
            for row in rows:
                row["faces"] += 1
                row["found"] += int(i in hit_boxes)
                row["judged"] += int(i in judged_boxes)
    return {
        "defaults": rules,
        "scenes": len(crowds),
        "faces": sum(c.count for c in crowds),
        "by_size": by_size,
        "by_count": by_count,
        "perspective": perspective,
        "skipped": skipped,
        "detector_wall_s": round(time.perf_counter() - started, 1),
        "detector_cpu_s": round(time.process_time() - cpu, 1),
    }


def _matched_truth(faces: list[Face], truth: list[Box]) -> set[int]:
    """The indices of the truth boxes ``faces`` (already matched one to one) fall on."""
    from bench.real_faces import hit

    used: set[int] = set()
    for face in sorted(faces, key=lambda f: -f.score):
        k = next((i for i, box in enumerate(truth) if i not in used and hit(face, box)), None)
        if k is not None:
            used.add(k)
    return used


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def table(result: dict[str, object]) -> str:
    lines = [
        "| face size (px) | faces | found by the detector | judged with the defaults |",
        "|---|---|---|---|",
    ]
    for side, row in sorted(result["by_size"].items()):  # type: ignore[attr-defined]
        lines.append(
            f"| {side} | {row['faces']} | {_pct(row['found'], row['faces'])} | {_pct(row['judged'], row['faces'])} |"
        )
    lines += ["", "| faces in the scene | faces | found | judged | false hits |", "|---|---|---|---|---|"]
    for count, row in sorted(result["by_count"].items()):  # type: ignore[attr-defined]
        lines.append(
            f"| {count} | {row['faces']} | {_pct(row['found'], row['faces'])} | "
            f"{_pct(row['judged'], row['faces'])} | {row.get('false', 0)} |"
        )
    p = result["perspective"]
    lines += [
        "",
        f"perspective scenes: {p['faces']} faces (96 px to 16 px), found {_pct(p['found'], p['faces'])}, "  # type: ignore[index]
        f"judged {_pct(p['judged'], p['faces'])}, over the cap {p['over_cap']}, false hits {p['false']}",  # type: ignore[index]
    ]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped"].items()))  # type: ignore[attr-defined]
    lines.append(f"detections not judged, by reason: {reasons}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="scenes per (count, size)")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--save", type=str, default=None, help="write each scene as a JPEG into this folder")
    args = parser.parse_args(argv)
    result = run(args.seeds)
    if args.save:
        from pathlib import Path

        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for crowd in [grid_crowd(25, 32, 0), perspective_crowd(0)]:
            crowd.image.save(out / f"{crowd.name}.jpg", quality=90)
    print(table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
