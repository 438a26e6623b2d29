"""The face detector's cost per image, bounded: MTCNN on an adversarial texture and on real photos of people.

``python -m bench.face_cost [--photos DIR] [--steps 150] [--repeats 3] [--save-texture PATH] [--json PATH]``

1. **The texture.** A 640x640 image made by gradient ascent on MTCNN's P-net (its public weights, as the
   detector loads them): the P-net's face probability, averaged over every window of every pyramid level
   the detector runs (levels resampled by area averaging, as the detector's BOX filter does), is pushed up
   with Adam for ``--steps`` steps. It is built in memory each run and never written to the repository
   (``--save-texture`` writes a copy elsewhere, to look at).
2. **Real photos of people**, from packages: scikit-image's astronaut and camera (in its wheel), and every
   image in ``--photos`` (default: the ``tests/test_images`` of face_recognition's sdist, fetched by hand:
   ``pip download --no-deps --no-binary :all: face_recognition==1.3.0`` and untar it; missing: skipped),
   plus a crowd: a 640x480 mosaic of 80 real faces from scikit-image's ``lfw_subset`` (48 px each).
3. **Before and after**: the cascade with the caps off (each set to 10^9) and with the defaults of
   ``worker/inference/faces/mtcnn.py`` (``MAX_LEVEL_CANDIDATES``, ``MAX_RNET_INPUTS``, ``MAX_ONET_INPUTS``).
   Per image: CPU seconds of one ``detect`` call (the median of ``--repeats``; torch on 1 thread), the most
   P-net candidates on one pyramid level, the R-net and O-net inputs, and the faces found. The caps must
   leave every real photo's faces as they were (the table says so per image).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

UNCAPPED = 10**9
DEFAULT_PHOTOS = Path("/tmp/face_recognition-1.3.0/tests/test_images")


def adversarial_texture(
    pnet: torch.nn.Module, *, side: int = 640, steps: int = 150, seed: int = 0
) -> Image.Image:
    """Gradient ascent on the P-net's face probability over every window of the detector's pyramid."""
    from worker.inference.faces import mtcnn as face_mtcnn

    torch.manual_seed(seed)
    logits = torch.randn(1, 3, side, side) * 0.5
    logits.requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    scales: list[float] = []
    scale, minl = 12.0 / face_mtcnn.MIN_FACE, side * 12.0 / face_mtcnn.MIN_FACE
    while minl >= 12:
        scales.append(scale)
        scale *= face_mtcnn.PYRAMID_FACTOR
        minl *= face_mtcnn.PYRAMID_FACTOR
    pnet = pnet.float().to(memory_format=torch.contiguous_format)
    for p in pnet.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        optimiser.zero_grad()
        image = torch.tanh(logits)  # the nets' input range, -1..1
        loss = torch.zeros(())
        for s in scales:
            size = int(side * s + 1)
            level = F.interpolate(image, size=(size, size), mode="area")
            _, probs = pnet(level)
            # every window's log-odds of "face" pushed past a margin over the 0.6 threshold
            odds = torch.log(probs[:, 1] + 1e-6) - torch.log(probs[:, 0] + 1e-6)
            loss = loss + F.softplus(3.0 - odds).mean()
        loss.backward()
        optimiser.step()
    pixels = ((torch.tanh(logits)[0].permute(1, 2, 0).detach().numpy() + 1) * 127.5).round().clip(0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def real_photos(photos: Path) -> list[tuple[str, Image.Image]]:
    from skimage import data

    found = [
        ("astronaut", Image.fromarray(data.astronaut())),
        ("camera", Image.fromarray(data.camera()).convert("RGB")),
    ]
    if photos.is_dir():
        for path in sorted(photos.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                found.append((path.name, Image.open(path).convert("RGB")))
    faces = data.lfw_subset()[:80]  # 25x25 grey faces, real people
    mosaic = Image.new("RGB", (640, 480), (128, 128, 128))
    for k, face in enumerate(faces):
        tile = (
            Image.fromarray((face * 255).astype(np.uint8))
            .convert("RGB")
            .resize((48, 48), Image.Resampling.BICUBIC)
        )
        mosaic.paste(tile, ((k % 10) * 64 + 8, (k // 10) * 60 + 6))
    found.append(("lfw_mosaic_80", mosaic))
    return found


def measure(detector: Any, image: Image.Image, repeats: int) -> dict[str, Any]:
    """CPU seconds of one detect call (median), the work each stage saw, and the faces found."""

    counts: dict[str, int] = {"level_max": 0, "rnet": 0, "onet": 0}
    pnet = detector._pnet
    refine = detector._refine

    def counting_pnet(*args: Any, **kwargs: Any) -> list[np.ndarray]:
        found: list[np.ndarray] = pnet(*args, **kwargs)
        counts["level_max"] = max([counts["level_max"], *(len(boxes) for boxes in found)])
        return found

    def counting_refine(smalls: Any, boxes: np.ndarray, net: Any, size: int, *rest: Any) -> np.ndarray:
        counts["rnet" if size == 24 else "onet"] = len(boxes)
        return refine(smalls, boxes, net, size, *rest)

    detector._pnet = counting_pnet
    detector._refine = counting_refine
    try:
        times, faces = [], []
        for _ in range(repeats):
            before = time.process_time()
            faces = detector.detect([image])[0]
            times.append(time.process_time() - before)
    finally:
        del detector._pnet
        del detector._refine
    return {"cpu_s": statistics.median(times), **counts, "faces": [f.box for f in faces]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-texture", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from worker.inference.faces.mtcnn import MtcnnDetector

    before = MtcnnDetector(
        torch.device("cpu"), max_level_candidates=UNCAPPED, max_rnet_inputs=UNCAPPED, max_onet_inputs=UNCAPPED
    )
    after = MtcnnDetector(torch.device("cpu"))
    started = time.perf_counter()
    texture = adversarial_texture(MtcnnDetector(torch.device("cpu")).pnet, steps=args.steps)
    print(f"texture: {args.steps} steps of gradient ascent in {time.perf_counter() - started:.0f} s")
    if args.save_texture:
        texture.save(args.save_texture)
    images = [("adversarial_texture", texture), *real_photos(args.photos)]
    rows: list[dict[str, Any]] = []
    header = f"{'image':24} {'size':>9} | {'CPU s before':>12} {'after':>7} | {'level max':>9} {'R-net in':>8} {'O-net in':>8} | {'faces before':>12} {'after':>5} same"
    print(header)
    print("-" * len(header))
    for name, image in images:
        b = measure(before, image, args.repeats)
        a = measure(after, image, args.repeats)
        same = _same(b["faces"], a["faces"])
        rows.append({"image": name, "size": image.size, "before": b, "after": a, "same_faces": same})
        print(
            f"{name[:24]:24} {image.width:>4}x{image.height:<4} | {b['cpu_s']:>12.3f} {a['cpu_s']:>7.3f} | "
            f"{b['level_max']:>9} {b['rnet']:>8} {b['onet']:>8} | {len(b['faces']):>12} {len(a['faces']):>5} {same}"
        )
    # The bound itself: every window passes every stage (thresholds 0), so each cap is reached.
    from worker.inference.faces import mtcnn as face_mtcnn

    thresholds = face_mtcnn.THRESHOLDS
    face_mtcnn.THRESHOLDS = (0.0, 0.0, 0.0)
    try:
        forced_before = measure(before, texture, 1)
        forced = measure(after, texture, args.repeats)
    finally:
        face_mtcnn.THRESHOLDS = thresholds
    rows.append({"image": "forced_upper_bound", "before": forced_before, "after": forced})
    print(
        f"{'forced (thresholds 0)':24} {texture.width:>4}x{texture.height:<4} | {forced_before['cpu_s']:>12.3f} "
        f"{forced['cpu_s']:>7.3f} | {forced_before['level_max']:>9} {forced_before['rnet']:>8} "
        f"{forced_before['onet']:>8} | (after: {forced['rnet']} R-net, {forced['onet']} O-net inputs)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=list))
    return 0


def _same(first: list[Any], second: list[Any]) -> bool:
    return sorted(map(tuple, first)) == sorted(map(tuple, second))


if __name__ == "__main__":
    raise SystemExit(main())
