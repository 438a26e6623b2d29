"""Face detectors compared on a real face, and faces mode against whole-image mode.

``python -m bench.faces [--scenes 10] [--detectors mtcnn,mtcnn-full,dlib-hog,dlib-hog-up1,haar]
[--throughput-pairs 3] [--images 24] [--json PATH]``

1. **Detectors.** scikit-image's astronaut photo (it ships in the wheel) is pasted into generated
   1024x768 scenes (``tests/fixtures/faces.py``) with a face box 32, 48, 64, 128 and 256 px wide,
   ``--scenes`` scenes per size (random places and backgrounds); also at 128 px rotated by ±15° and ±30°,
   and stored sideways/upside down with an EXIF orientation (3, 6, 8) and decoded by dfscan's decoder
   (boxes must land on the upright face). False detections are counted on face-free images (generated
   noise, gradients, stripes, textures and 20 scikit-image samples without a face) and on the face scenes
   (boxes that match no face). ms per image is the mean over the 1024x768 scenes (wall, and CPU time of the process), torch on 2 threads.
   Candidates that are not installed are reported as such.
2. **Faces vs whole image** (``--throughput-pairs``, 0 to skip): a ViT-B/16-sized random checkpoint, the
   same ``--images`` 1-face JPEG scenes (face 96-256 px); whole-image mode decodes (JPEG draft), resizes
   and runs the model; faces mode decodes at full size, detects with MTCNN, crops (margin 0.3) and runs the
   model on the crops. Each measurement is a separate process (model load and warm-up not timed), run in
   alternating pairs A B A B ...; medians, spreads and CPU seconds are printed with the ratio. Target:
   faces/whole >= 0.8 on CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core import CACHE, random_vit_base
from tests.fixtures.faces import exif_jpeg, face_free_images, face_scene, matches
from worker.inference.faces.crops import Face, select_faces, square_crop
from worker.inference.images.decode import ImagePolicy, decode_image

SIZES = (32, 48, 64, 128, 256)
ANGLES = (-30, -15, 15, 30)
ORIENTATIONS = (3, 6, 8)
THREADS = 2

Detect = Callable[[Image.Image], list[Face]]


# --- candidates ----------------------------------------------------------------------------------------


def _mtcnn(side: int) -> tuple[Detect, str]:
    from worker.inference.faces.mtcnn import MtcnnDetector

    det = MtcnnDetector(torch.device("cpu"), detect_side=side)
    return (lambda img: det.detect([img])[0]), det.version


def _dlib(upsample: int) -> tuple[Detect, str]:
    import dlib  # dlib-bin

    hog = dlib.get_frontal_face_detector()

    def detect(img: Image.Image) -> list[Face]:
        rects, scores, _ = hog.run(np.asarray(img), upsample, 0.0)
        return [
            Face((r.left(), r.top(), r.width(), r.height()), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    return detect, f"dlib-bin {dlib.__version__} HOG, upsample {upsample}"


def _haar() -> tuple[Detect, str]:
    import cv2  # opencv-python-headless<5 (5.x no longer ships the cascades)

    cascade = cv2.CascadeClassifier(
        os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    )
    cv2.setNumThreads(THREADS)

    def detect(img: Image.Image) -> list[Face]:
        gray = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        return [Face((int(x), int(y), int(w), int(h)), 1.0) for x, y, w, h in found]

    return detect, f"OpenCV {cv2.__version__} Haar frontalface_default (1.1, 5 neighbours)"


CANDIDATES: dict[str, Callable[[], tuple[Detect, str]]] = {
    "mtcnn": lambda: _mtcnn(640),
    "mtcnn-480": lambda: _mtcnn(480),
    "mtcnn-full": lambda: _mtcnn(10_000),
    "dlib-hog": lambda: _dlib(0),
    "dlib-hog-up1": lambda: _dlib(1),
    "haar": _haar,
}


def bench_detector(detect: Detect, scenes: int) -> dict[str, object]:
    row: dict[str, object] = {}
    times: list[float] = []
    cpu: list[float] = []
    stray = 0

    def run(img: Image.Image) -> list[Face]:
        start, start_cpu = time.perf_counter(), time.process_time()
        found = detect(img)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        return found

    def recall(make: Callable[[int], tuple[Image.Image, list[tuple[int, int, int, int]]]]) -> float:
        nonlocal stray
        hits = 0
        for k in range(scenes):
            img, truth = make(k)
            found = run(img)
            hits += sum(any(matches(f.box, t) for f in found) for t in truth)
            stray += sum(not any(matches(f.box, t) for t in truth) for f in found)
        return hits / scenes

    run(face_scene(128, seed=999).image)  # warm-up, not counted
    times.clear()
    cpu.clear()
    for px in SIZES:
        row[f"{px}px"] = recall(lambda k, px=px: _scene(px, seed=100 * px + k))
    row["rotated"] = statistics.mean(
        recall(lambda k, a=a: _scene(128, seed=7000 + k, angle=a)) for a in ANGLES
    )

    def oriented(k: int, o: int) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
        scene = face_scene(128, seed=8000 + k)
        return decode_image(exif_jpeg(scene.image, o), ImagePolicy()), scene.truth

    row["exif"] = statistics.mean(recall(lambda k, o=o: oriented(k, o)) for o in ORIENTATIONS)
    ms = 1000 * statistics.mean(times)
    cpu_ms = 1000 * statistics.mean(cpu)
    row["stray_in_scenes"] = stray
    row["false_on_face_free"] = sum(len(run(img)) for _, img in face_free_images())
    row["ms_per_1024x768"] = ms
    row["cpu_ms_per_1024x768"] = cpu_ms
    return row


def _scene(px: int, *, seed: int, angle: float = 0.0) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    scene = face_scene(px, seed=seed, angle=angle)
    return scene.image, scene.truth


# --- faces mode vs whole-image mode ------------------------------------------------------------------


def _scene_jpegs(count: int) -> list[bytes]:
    out = []
    rng = np.random.default_rng(5)
    for k in range(count):
        buf = io.BytesIO()
        face_scene(int(rng.integers(96, 257)), seed=500 + k).image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def throughput_run(mode: str, images: int, batch: int, side: int = 640) -> dict[str, float]:
    """One measurement (run in its own process): img/s and CPU seconds of ``mode`` over the scenes."""
    from worker.inference.model.classifier import load_classifier
    from worker.inference.model.preprocess import load_pixels, to_tensor

    torch.set_num_threads(THREADS)
    detector = load_classifier(str(random_vit_base(CACHE / "vit-base-random")), device="cpu", threads=THREADS)
    cfg = detector.preprocess
    policy = ImagePolicy()
    datas = _scene_jpegs(images)
    faces_det = None
    if mode == "faces":
        from worker.inference.faces.mtcnn import MtcnnDetector

        faces_det = MtcnnDetector(torch.device("cpu"), detect_side=side)

    def inputs(chunk: list[bytes]) -> tuple[list[torch.Tensor], int]:
        if faces_det is None:
            return [load_pixels(d, cfg, policy)[0] for d in chunk], 0
        decoded = [decode_image(d, policy) for d in chunk]
        found = faces_det.detect(decoded)
        tensors, faces = [], 0
        for img, fs in zip(decoded, found, strict=True):
            chosen = select_faces(fs, 8, 32)
            faces += len(chosen)
            tensors += [to_tensor(square_crop(img, f, 0.3), cfg) for f in chosen] or [to_tensor(img, cfg)]
        return tensors, faces

    def one_pass(data: list[bytes]) -> int:
        faces = 0
        for start in range(0, len(data), batch):
            tensors, n = inputs(data[start : start + batch])
            faces += n
            for s in range(0, len(tensors), batch):
                detector.predict(torch.stack(tensors[s : s + batch]))
        return faces

    one_pass(datas[:batch])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    faces = one_pass(datas)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"img_per_s": images / wall, "wall_s": wall, "cpu_s": cpu, "faces": faces}


def throughput(pairs: int, images: int, batch: int, side: int = 640) -> dict[str, object]:
    results: dict[str, list[dict[str, float]]] = {"image": [], "faces": []}
    for _ in range(pairs):
        for mode in ("image", "faces"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.faces",
                    "--run-mode",
                    mode,
                    "--images",
                    str(images),
                    "--batch",
                    str(batch),
                    "--detect-side",
                    str(side),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {m: statistics.median(r["img_per_s"] for r in rs) for m, rs in results.items()}
    return {"runs": results, "median_img_per_s": med, "ratio": med["faces"] / med["image"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--detectors", default="mtcnn,mtcnn-480,mtcnn-full,dlib-hog,dlib-hog-up1,haar")
    parser.add_argument("--throughput-pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--detect-side", type=int, default=640, help="MTCNN's detect_side in faces mode")
    parser.add_argument("--run-mode", choices=("image", "faces"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_mode:
        print(json.dumps(throughput_run(args.run_mode, args.images, args.batch, args.detect_side)))
        return 0
    torch.set_num_threads(THREADS)
    report: dict[str, object] = {"detectors": {}}
    header = [
        "detector",
        *(f"{px}px" for px in SIZES),
        "rotated ±15/30",
        "EXIF 3/6/8",
        "stray boxes",
        "false on 30 face-free",
        "ms/img (CPU ms)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in [n for n in args.detectors.split(",") if n]:
        try:
            detect, version = CANDIDATES[name]()
        except ImportError as exc:
            print(f"| {name} | not installed: {exc} |")
            continue
        row = bench_detector(detect, args.scenes)
        report["detectors"][name] = {"version": version, **row}  # type: ignore[index]
        cells = [f"{row[f'{px}px']:.0%}" for px in SIZES]
        cells += [
            f"{row['rotated']:.0%}",
            f"{row['exif']:.0%}",
            str(row["stray_in_scenes"]),
            str(row["false_on_face_free"]),
        ]
        cells.append(f"{row['ms_per_1024x768']:.0f} ({row['cpu_ms_per_1024x768']:.0f})")
        print(f"| {version} | " + " | ".join(cells) + " |", flush=True)
    if args.throughput_pairs:
        t = throughput(args.throughput_pairs, args.images, args.batch, args.detect_side)
        report["throughput"] = t
        print(f"\nfaces mode: MTCNN detect_side={args.detect_side}")
        print("\n| mode | runs img/s | median img/s | CPU s per run |")
        print("|---|---|---|---|")
        for mode, runs in t["runs"].items():  # type: ignore[union-attr]
            rates = ", ".join(f"{r['img_per_s']:.2f}" for r in runs)
            cpus = ", ".join(f"{r['cpu_s']:.1f}" for r in runs)
            print(f"| {mode} | {rates} | {t['median_img_per_s'][mode]:.2f} | {cpus} |")  # type: ignore[index]
        print(
            f"\nfaces / whole image = {t['ratio']:.2f} (target >= 0.8: {'PASS' if t['ratio'] >= 0.8 else 'FAIL'})"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
