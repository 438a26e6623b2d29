"""The extra CPU of faces auto on small face-free JPEGs: this tree's detector against a baseline tree's.

``python -m bench.face_batch --baseline REF [--candidate REF] [--pairs 3] [--images 240] [--size 128x96] [--threads 8]
[--json PATH]``

Each ``REF`` is a git revision of this repository (its tree is exported with ``git archive`` into a temporary
folder) or a folder holding a dfscan source tree. Each measurement is a separate process importing one
tree: the tests' tiny ViT (the model costs next to nothing), ``--images`` generated photo-like JPEGs of
``--size`` (no faces), judged through :func:`worker.inference.judge.judge_stream` on ``--threads`` task
threads with the detector's micro-batcher of ``--threads`` (the road ``dfscan scan`` and the worker take),
once with faces off and once with faces auto (MTCNN on CPU, torch on 1 thread). A warm-up on other images
is not timed. The process's CPU seconds (all threads) of the timed part are read with
``time.process_time``; the extra CPU of faces per image is (auto - off) / images.

Runs alternate baseline and this tree, A B A B, ``--pairs`` times; medians, spreads and the ratio are
printed. The CPU time of a process does not count other processes' work, so a loaded machine inflates it
less than wall time; both are printed.
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

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from pathlib import Path
from worker.inference.faces.crops import FacePolicy, load_face_detector
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge, judge_stream
from worker.inference.model.classifier import load_classifier
from worker.inference.sources.read import SourcePolicy

model, folder, faces, threads = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
classifier = load_classifier(model, device="cpu", runtime="torch", threads=1)
policy = None
if faces != "off":
    policy = FacePolicy(mode=faces, detector=load_face_detector("mtcnn", "cpu", 1))
judge = Judge(classifier, sources=SourcePolicy(allowed_roots=(folder,)), images=ImagePolicy(),
              batch_size=threads, faces=policy)
warm = sorted(str(p) for p in folder.glob("warm-*.jpg"))
timed = sorted(str(p) for p in folder.glob("img-*.jpg"))
for v in judge_stream(judge, warm, threads=threads):
    assert v.status == "done", v
cpu, wall = time.process_time(), time.perf_counter()
verdicts = list(judge_stream(judge, timed, threads=threads))
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
assert len(verdicts) == len(timed) and all(v.status == "done" for v in verdicts)
judged_on = sorted({v.judged_on for v in verdicts})
faces_batcher = judge._face_batcher
stats = faces_batcher.stats if faces_batcher is not None else None
per_batch = stats.items / stats.batches if stats is not None and stats.batches else 0.0
judge.close()
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "images": len(timed), "judged_on": judged_on,
                  "detector_batch": per_batch}))
"""


def _tree(ref: str, tmp: Path, name: str) -> Path:
    """A folder holding the dfscan source tree of ``ref`` (a folder, or a git revision exported here)."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    out = tmp / name
    out.mkdir()
    archive = subprocess.run(["git", "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _measure(tree: Path, model: Path, images: Path, faces: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(images), faces, str(threads)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision or source folder to compare with")
    parser.add_argument(
        "--candidate",
        default=str(Path(__file__).resolve().parent.parent),
        help="revision or folder (default: this checkout)",
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", default="128x96")
    parser.add_argument("--threads", type=int, default=8, help="task threads and detector batch size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    here = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(here))
    from bench._service import save_tiny_vit, write_small_images

    with tempfile.TemporaryDirectory(prefix="dfscan-face-batch-") as name:
        tmp = Path(name)
        baseline = _tree(args.baseline, tmp, "baseline")
        candidate = _tree(args.candidate, tmp, "candidate")
        model = save_tiny_vit(tmp / "model")
        images = tmp / "images"
        write_small_images(images, 2 * args.threads, size=(width, height), prefix="warm", seed=1)
        write_small_images(images, args.images, size=(width, height), prefix="img", seed=2)
        runs: dict[str, list[dict[str, float]]] = {}
        started = time.perf_counter()
        load = os.getloadavg()[0]
        for pair in range(args.pairs):
            for label, tree in (("baseline", baseline), ("this tree", candidate)):
                for faces in ("off", "auto"):
                    result = _measure(tree, model, images, faces, args.threads)
                    runs.setdefault(f"{label} {faces}", []).append(result)
                    print(
                        f"pair {pair + 1} {label:9s} faces {faces:4s}: {result['cpu_s']:.2f} CPU s, "
                        f"{result['wall_s']:.2f} s wall, judged on {result['judged_on']}, "
                        f"{result['detector_batch']:.1f} images per detector batch",
                        flush=True,
                    )
        n = args.images
        extra = {
            label: [
                (auto["cpu_s"] - off["cpu_s"]) / n * 1000.0
                for off, auto in zip(runs[f"{label} off"], runs[f"{label} auto"], strict=True)
            ]
            for label in ("baseline", "this tree")
        }
        per_image = {key: [r["cpu_s"] / n * 1000.0 for r in values] for key, values in runs.items()}
        print(
            f"\n{n} face-free {args.size} JPEGs, {args.threads} threads, {args.pairs} pairs, load average "
            f"{load:.1f} at the start on {os.cpu_count()} cores, {time.perf_counter() - started:.0f} s"
        )
        for key, values in per_image.items():
            print(f"  {key:18s} CPU ms/image {_spread(values)}")
        for label, values in extra.items():
            print(f"  {label:9s} faces auto extra CPU ms/image {_spread(values)}")
        ratios = [b / a for a, b in zip(extra["baseline"], extra["this tree"], strict=True) if a > 0]
        print(f"  ratio this tree / baseline (per pair) {_spread(ratios)}")
        if args.json:
            args.json.write_text(
                json.dumps({"runs": runs, "extra_ms": extra, "ratios": ratios, "load": load}, indent=2)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
