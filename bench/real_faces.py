"""Face detection on real photographs: recall and false hits by face size, before and after the screens
(minimum detector score, landmark sanity) and the face-size floor; and what judging up to 32 faces of
one image costs.

``python -m bench.real_faces [--json PATH] [--cost-pairs 3]``

**Photographs** (nothing committed; fetched at run time into ``$TMPDIR/dfscan-bench/real_faces``):

- ``face_recognition`` 1.3.0's sdist (``pip download --no-deps --no-binary :all: face_recognition==1.3.0``):
  its ``tests/test_images`` portraits. Reference: its own tests, which assert the face boxes that dlib's
  HOG detector finds in ``obama.jpg``, ``obama_partial_face.jpg``, ``obama_partial_face2.jpg`` and
  ``32bit.png`` (one face each), and use ``obama2.jpg``, ``obama3.jpg`` and ``biden.jpg`` as one-person
  photos (one face each, no box published: counted for recall at native size only).
- scikit-image's data (in its wheel): ``lfw_subset`` (200 greyscale 25x25 crops of Labeled Faces in the
  Wild: the first 100 are faces, the other 100 non-faces, as its docs say) laid out as 10x10 mosaics
  with gaps, each tile scaled to the face size measured (a "crowd" of 100 real faces with known boxes:
  the tiles); ``astronaut`` (one face) and the scikit-image samples without a person
  (``tests/fixtures/faces.FACE_FREE_SAMPLES`` plus ``chelsea`` and the stereo motorcycle pair) for false hits.

**Recall by size**: each photo with a published box is resized so its face's shorter side is S px (16 to
96) and searched; the LFW mosaics are built at each S. A hit is a detection whose centre lies inside the
reference box and whose side is within 0.5x-2x of it. False hits: detections matching no reference box,
on the face-free samples, the non-face mosaic and the portraits.

**Limits of the reference**: ~8 portraits of 3 people plus 100 LFW faces (frontal, cropped, greyscale,
upscaled from 25 px); no group photo with published boxes is shipped by these packages, so recall in
real crowds (occlusion, profiles, dark scenes) is not measured here; the boxes of face_recognition are
dlib HOG's (tight, eyebrows to chin) and MTCNN's are taller, hence the loose match rule.

**Cost of many faces**: a ViT-B/16-sized random checkpoint judges 8 and 32 face crops of one image in
one batch, alternating (A B A B, ``--cost-pairs`` pairs), torch on 2 threads; medians, spread, CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core import CACHE
from tests.fixtures.faces import FACE_FREE_SAMPLES, sample
from worker.inference.faces.crops import Face, load_face_detector, select_faces
from worker.inference.faces.screen import choose_faces, plausible

HERE = CACHE / "real_faces"
FR = "face_recognition==1.3.0"
# face_recognition's tests: (top, right, bottom, left) as face_recognition.face_locations returns them.
FR_BOXES = {
    "obama.jpg": (142, 617, 409, 349),
    "obama_partial_face.jpg": (142, 191, 365, 0),
    "obama_partial_face2.jpg": (142, 551, 409, 349),
    "32bit.png": (290, None, 558, None),  # the tests assert top and bottom only
}
FR_ONE_FACE = ("obama2.jpg", "obama3.jpg", "biden.jpg")
SIZES = (16, 20, 24, 32, 48, 64, 96)
SCORES = (0.8, 0.85, 0.88, 0.9, 0.95)
# The faces judged before and after the defaults measured here (docs/faces-and-video.md).
BEFORE = {"max_faces": 8, "min_face_px": 32, "min_score": 0.0, "landmarks": False}
AFTER = {"max_faces": 16, "min_face_px": 24, "min_score": 0.9, "landmarks": True}
THREADS = 2

Box = tuple[int, int, int, int]


@dataclass
class Photo:
    name: str
    image: Image.Image
    truth: list[Box]  # (x, y, w, h); empty: no face
    faces: int  # faces in the photo (truth may list fewer: no published box)


def fetch_face_recognition() -> dict[str, Image.Image]:
    """face_recognition's test photographs, from its sdist (downloaded once into the bench cache)."""
    HERE.mkdir(parents=True, exist_ok=True)
    sdists = list(HERE.glob("face_recognition-1.3.0.tar.gz"))
    if not sdists:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "--no-build-isolation", FR, "-d", str(HERE)], check=True, capture_output=True)
        sdists = list(HERE.glob("face_recognition-1.3.0.tar.gz"))
    out: dict[str, Image.Image] = {}
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if "/tests/test_images/" in member.name and name.endswith((".jpg", ".png")):
                data = tar.extractfile(member)
                assert data is not None
                out[name] = Image.open(io.BytesIO(data.read())).convert("RGB")
    return out


def portraits() -> list[Photo]:
    photos = fetch_face_recognition()
    out: list[Photo] = []
    for name, (top, right, bottom, left) in FR_BOXES.items():
        image = photos[name]
        if right is None or left is None:  # only top and bottom published: a square centred on the face
            side = bottom - top
            left, right = image.width // 2 - side // 2, image.width // 2 + side // 2
        out.append(Photo(name, image, [(left, top, right - left, bottom - top)], 1))
    out.extend(Photo(name, photos[name], [], 1) for name in FR_ONE_FACE)
    return out


def lfw_mosaic(faces: bool, side: int) -> Photo:
    """10x10 LFW tiles (faces or non-faces) of ``side`` px, a tile's width apart."""
    from skimage import data

    tiles = data.lfw_subset()[:100] if faces else data.lfw_subset()[100:]
    step = side * 2
    canvas = Image.new("RGB", (step * 10 + side, step * 10 + side), (128, 128, 128))
    truth: list[Box] = []
    for k, tile in enumerate(tiles):
        img = (
            Image.fromarray((tile * 255).astype(np.uint8)).convert("RGB").resize((side, side), Image.BICUBIC)
        )
        x, y = side + (k % 10) * step - side // 2, side + (k // 10) * step - side // 2
        canvas.paste(img, (x, y))
        truth.append((x, y, side, side))
    return Photo(
        f"lfw-{'faces' if faces else 'nonfaces'}@{side}", canvas, truth if faces else [], 100 if faces else 0
    )


def resized(photo: Photo, side: int) -> Photo:
    x, y, w, h = photo.truth[0]
    scale = side / min(w, h)
    size = (max(1, round(photo.image.width * scale)), max(1, round(photo.image.height * scale)))
    box = (round(x * scale), round(y * scale), round(w * scale), round(h * scale))
    return Photo(f"{photo.name}@{side}", photo.image.resize(size, Image.LANCZOS), [box], 1)


def hit(face: Face, box: Box) -> bool:
    x, y, w, h = box
    fx, fy, fw, fh = face.box
    cx, cy = fx + fw / 2, fy + fh / 2
    ratio = min(fw, fh) / max(1, min(w, h))
    return x <= cx <= x + w and y <= cy <= y + h and 0.5 <= ratio <= 2.0


def match(faces: list[Face], truth: list[Box]) -> tuple[list[Face], list[Face]]:
    """(faces matching a distinct reference box, faces matching none)."""
    used: set[int] = set()
    good: list[Face] = []
    bad: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        k = next((i for i, box in enumerate(truth) if i not in used and hit(face, box)), None)
        if k is None:
            bad.append(face)
        else:
            used.add(k)
            good.append(face)
    return good, bad


def face_free() -> list[Photo]:
    from skimage import data

    photos = [Photo(n, sample(n), [], 0) for n in (*FACE_FREE_SAMPLES, "chelsea")]
    left, right, _ = data.stereo_motorcycle()
    photos += [
        Photo(f"motorcycle_{k}", Image.fromarray(a).convert("RGB"), [], 0)
        for k, a in (("left", left), ("right", right))
    ]
    return photos + [lfw_mosaic(False, s) for s in (24, 48)]


def detection(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(THREADS)
    mtcnn = load_face_detector("mtcnn", "cpu", THREADS)
    people = portraits()
    sized = [(s, resized(p, s)) for s in SIZES for p in people if p.truth]
    sized += [(s, lfw_mosaic(True, s)) for s in SIZES]
    native = [p for p in people] + [Photo("astronaut", sample("astronaut"), [], 1)]
    empty = face_free()
    started = time.process_time()
    found = {id(p): mtcnn.detect([p.image])[0] for _, p in sized}
    found.update({id(p): mtcnn.detect([p.image])[0] for p in native + empty})
    cpu = time.process_time() - started

    def screened(faces: list[Face], min_score: float, landmarks: bool) -> list[Face]:
        return [f for f in faces if f.score >= min_score and (not landmarks or plausible(f))]

    rules = [("detector", 0.0, False), ("landmarks", 0.0, True)] + [
        (f"score>={s:g}+landmarks", s, True) for s in SCORES
    ]
    by_size: dict[str, dict[int, dict[str, int]]] = {}
    false_hits: dict[str, dict[str, int]] = {}
    hit_scores: list[float] = []
    miss_scores: list[float] = []
    for rule, min_score, marks in rules:
        table: dict[int, dict[str, int]] = {}
        for side, photo in sized:
            good, bad = match(screened(found[id(photo)], min_score, marks), photo.truth)
            row = table.setdefault(side, {"faces": 0, "hits": 0, "false": 0})
            row["faces"] += len(photo.truth)
            row["hits"] += len(good)
            row["false"] += len(bad)
        by_size[rule] = table
        fh = {"face_free_images": len(empty), "false_on_face_free": 0, "native_faces": 0, "native_found": 0}
        fh["native_false"] = 0
        for p in empty:
            fh["false_on_face_free"] += len(screened(found[id(p)], min_score, marks))
        for p in native:  # published counts: anything beyond them is a false hit
            kept = len(screened(found[id(p)], min_score, marks))
            fh["native_faces"] += p.faces
            fh["native_found"] += min(p.faces, kept)
            fh["native_false"] += max(0, kept - p.faces)
        false_hits[rule] = fh
    for _, photo in sized:
        good, bad = match(found[id(photo)], photo.truth)
        hit_scores += [f.score for f in good]
        miss_scores += [f.score for f in bad]
    for p in empty:
        miss_scores += [f.score for f in found[id(p)]]
    judged = {name: judged_by_size(cfg, sized, found) for name, cfg in (("before", BEFORE), ("after", AFTER))}
    implausible_hits = sum(
        1 for side, photo in sized for f in match(found[id(photo)], photo.truth)[0] if not plausible(f)
    )
    return {
        "judged_by_size": judged,
        "by_size": by_size,
        "false_hits": false_hits,
        "hit_scores": _quantiles(hit_scores),
        "false_scores": sorted(round(s, 4) for s in miss_scores),
        "true_faces_failing_landmarks": implausible_hits,
        "detector_cpu_s": round(cpu, 1),
        "photos": len(sized) + len(native) + len(empty),
    }


def judged_by_size(
    cfg: dict[str, object], sized: list[tuple[int, Photo]], found: dict[int, list[Face]]
) -> dict[int, dict[str, int]]:
    """Per face size: reference faces, and how many of them the default rules judge (a hit that is
    chosen), and judged detections that match no reference face."""
    table: dict[int, dict[str, int]] = {}
    for side, photo in sized:
        faces = found[id(photo)]
        max_faces, min_px, min_score = int(cfg["max_faces"]), int(cfg["min_face_px"]), float(cfg["min_score"])  # type: ignore[call-overload]
        if cfg["landmarks"]:
            chosen = choose_faces(faces, max_faces=max_faces, min_face_px=min_px, min_score=min_score).chosen
        else:
            chosen = select_faces([f for f in faces if f.score >= min_score], max_faces, min_px)
        good, bad = match(chosen, photo.truth)
        row = table.setdefault(side, {"faces": 0, "judged": 0, "false": 0})
        row["faces"] += len(photo.truth)
        row["judged"] += len(good)
        row["false"] += len(bad)
    return table


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    qs = np.quantile(values, [0.0, 0.01, 0.05, 0.5])
    return {
        "n": len(values),
        "min": round(float(qs[0]), 4),
        "p1": round(float(qs[1]), 4),
        "p5": round(float(qs[2]), 4),
        "median": round(float(qs[3]), 4),
    }


def cost(pairs: int) -> dict[str, object]:
    """Judging 8 and 32 face crops of one image in one batch: a ViT-B/16-sized checkpoint, alternating."""
    from bench.core import random_vit_base
    from worker.inference.model.classifier import load_classifier

    torch.set_num_threads(THREADS)
    model = load_classifier(str(random_vit_base(CACHE / "vit-base")), device="cpu", threads=THREADS)
    side = 224  # ViT-B/16 input
    runs: dict[int, list[tuple[float, float]]] = {8: [], 16: [], 32: []}
    model.predict(torch.zeros(2, 3, side, side))  # warm
    for _ in range(pairs):
        for n in (8, 32, 16):
            x = torch.rand(n, 3, side, side)
            wall, cpu = time.perf_counter(), time.process_time()
            model.predict(x)
            runs[n].append((time.perf_counter() - wall, time.process_time() - cpu))
    out: dict[str, object] = {}
    for n, values in runs.items():
        walls = [w for w, _ in values]
        out[str(n)] = {
            "wall_s_median": round(statistics.median(walls), 2),
            "wall_s_min": round(min(walls), 2),
            "wall_s_max": round(max(walls), 2),
            "cpu_s_median": round(statistics.median(c for _, c in values), 2),
        }
    out["ratio_32_over_8"] = round(out["32"]["wall_s_median"] / out["8"]["wall_s_median"], 2)  # type: ignore[index]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cost-pairs", type=int, default=3, help="0 to skip the cost of many faces")
    args = parser.parse_args(argv)
    result = {"detection": detection(args)}
    if args.cost_pairs:
        result["cost"] = cost(args.cost_pairs)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
