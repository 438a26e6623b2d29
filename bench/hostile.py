"""Hostile decode costs: per-file wall time and code, peak RSS with 16 in flight, and what the protection
costs normal images.

    python -m bench.hostile                      # full-size corpus (builds in ~15 s), 3 pairs
    python -m bench.hostile --quick              # the unit tests' small corpus, 1 pair
    python -m bench.hostile --baseline-ref b223d17   # also time main's decoder (no checks) on normal images

Every measurement runs in a fresh process (``python bench/hostile.py _MODE ...``) on files written once:

1. **Per file**: wall and CPU seconds and the code of each hostile file through ``load_pixels`` with a
   ``shortest_edge`` + centre-crop checkpoint config (the one the aspect-ratio attack needs), in the
   calling thread (``checks``) and in the decode pool (``pool``). Target: every file ends with its
   expected code within 5 s wall.
2. **16 in flight**: 16 threads start 16 hostile files at once (the costliest that decode, then the
   rest), as a worker's decode threads would; the peak RSS of the process (and of the decode children).
   Target: < 1.5 GiB.
3. **Normal images**: 48 photo-like JPEGs (256x256 to 1024x768) through ``load_pixels`` on 4 threads,
   3 rounds, in paired alternating whole-process runs (A B [C] A B [C] ...): ``checks`` (this tree, the
   default), ``pool`` (DFSCAN_DECODE_PROCESSES=2) and, with ``--baseline-ref``, ``main`` (that commit's
   decoder, extracted with ``git archive``). Medians of images/s and of CPU seconds (the process and its
   decode children), the ratio to the reference, and the spread. Target: <= 5% cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
CONFIG = {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
FILE_TARGET_S = 5.0
RSS_TARGET = 1.5 * 1024 * MiB
COST_TARGET = 0.05


# --- measurement processes (import only worker.inference, so a baseline tree can run them) -----------


def _policy(mode: str) -> Any:
    from worker.inference.images.decode import ImagePolicy

    return ImagePolicy(decode_processes=2) if mode == "pool" else ImagePolicy()


def _children_cpu() -> float:
    import psutil

    return sum(sum(c.cpu_times()[:2]) for c in psutil.Process().children(recursive=True))


def _children_rss() -> int:
    import psutil

    return max((c.memory_info().rss for c in psutil.Process().children(recursive=True)), default=0)


def _one(data: bytes, policy: Any) -> str:
    from dfscan.exceptions import DfscanError
    from worker.inference.model.preprocess import PreprocessConfig, load_pixels

    try:
        load_pixels(data, PreprocessConfig.from_dict(CONFIG), policy)
    except DfscanError as exc:
        return exc.code
    return "ok"


def measure_files(directory: Path, mode: str) -> list[dict[str, Any]]:
    policy = _policy(mode)
    manifest = json.loads((directory / "manifest.json").read_text())
    _one((directory / manifest["normal"][0]).read_bytes(), policy)  # imports, and the pool's children
    rows = []
    for name in manifest["hostile"]:
        data = (directory / name).read_bytes()
        wall, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
        code = _one(data, policy)
        rows.append(
            {
                "name": name,
                "code": code,
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu + _children_cpu() - child,
            }
        )
    return rows


def measure_flight(directory: Path, mode: str) -> dict[str, Any]:
    policy = _policy(mode)
    manifest = json.loads((directory / "manifest.json").read_text())
    names = manifest["flight"]
    blobs = [(directory / name).read_bytes() for name in names]
    if mode == "pool":
        _one((directory / manifest["normal"][0]).read_bytes(), policy)  # start the children first
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    barrier = threading.Barrier(len(blobs))
    codes: dict[str, str] = {}
    peak_children = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_children
        while not stop.wait(0.05):
            peak_children = max(peak_children, _children_rss())

    def run(name: str, data: bytes) -> None:
        barrier.wait()
        codes[name] = _one(data, policy)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n, b)) for n, b in zip(names, blobs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before": base,
        "peak_child_rss": peak_children,
        "seconds": time.perf_counter() - started,
        "codes": codes,
    }


def measure_throughput(directory: Path, mode: str) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    policy = _policy(mode)
    manifest = json.loads((directory / "manifest.json").read_text())
    blobs = [(directory / name).read_bytes() for name in manifest["normal"]]
    _one(blobs[0], policy)  # warm-up: imports, and the pool's children
    wall, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            codes = list(pool.map(lambda d: _one(d, policy), blobs))
    assert set(codes) == {"ok"}, codes
    seconds = time.perf_counter() - wall
    return {
        "images_per_s": 3 * len(blobs) / seconds,
        "cpu": time.process_time() - cpu + _children_cpu() - child,
    }


# --- orchestration ----------------------------------------------------------------------------


def build(directory: Path, *, full: bool) -> None:
    from bench.images import write_images
    from tests.fixtures.hostile import hostile_cases

    cases = hostile_cases(full=full)
    for name, case in cases.items():
        (directory / name).write_bytes(case.data)
    normal = [p.name for p in write_images(directory / "normal", 48)]
    decodes = [n for n, c in cases.items() if c.code is None and "scans" not in n]
    refused = [n for n, c in cases.items() if c.code is not None]
    flight = (decodes + refused)[:16]
    manifest = {
        "hostile": list(cases),
        "expected": {n: c.code or "ok" for n, c in cases.items()},
        "sizes": {n: len(c.data) for n, c in cases.items()},
        "normal": [f"normal/{n}" for n in normal],
        "flight": flight,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _child(what: str, directory: Path, mode: str, tree: Path) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), what, str(directory), mode],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "worker", "dfscan"], check=True, capture_output=True
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus, one pair")
    parser.add_argument(
        "--pairs", type=int, help="alternating throughput runs per variant (3; 1 with --quick)"
    )
    parser.add_argument("--baseline-ref", default="", help="git ref whose decoder is the 'main' baseline")
    parser.add_argument("--parts", default="files,flight,throughput", help="which measurements to run")
    parser.add_argument(
        "--no-pool", action="store_true", help="leave the decode pool out of the throughput runs"
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    pairs = args.pairs or (1 if args.quick else 3)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dfscan-hostile-") as tmp:
        directory = Path(tmp) / "files"
        directory.mkdir()
        started = time.perf_counter()
        build(directory, full=not args.quick)
        manifest = json.loads((directory / "manifest.json").read_text())
        print(
            f"corpus built in {time.perf_counter() - started:.1f} s: {len(manifest['hostile'])} hostile files\n"
        )

        if "files" in parts:
            _print_files(directory, manifest, failures)
        if "flight" in parts:
            _print_flight(directory, manifest, failures)
        if "throughput" in parts:
            _print_throughput(directory, Path(tmp), args, pairs)
    print("\nFAILED: " + ", ".join(failures) if failures else "\nall hostile files within target")
    return 1 if failures else 0


def _print_files(directory: Path, manifest: dict[str, Any], failures: list[str]) -> None:
    files = {mode: _child("_files", directory, mode, ROOT) for mode in ("checks", "pool")}
    print(f"{'file':28} {'bytes':>10} {'code':18} {'checks s':>8} {'cpu s':>6} {'pool s':>7} {'cpu s':>6}")
    for here, there in zip(files["checks"], files["pool"], strict=True):
        name = here["name"]
        want = manifest["expected"][name]
        mark = "" if here["code"] == there["code"] == want else f"  WRONG (want {want}, pool {there['code']})"
        if mark or max(here["wall"], there["wall"]) > FILE_TARGET_S:
            failures.append(name)
        print(
            f"{name:28} {manifest['sizes'][name]:>10} {here['code']:18} {here['wall']:8.3f} "
            f"{here['cpu']:6.2f} {there['wall']:7.3f} {there['cpu']:6.2f}{mark}"
        )
    slowest = {m: max(rows, key=lambda r: r["wall"]) for m, rows in files.items()}
    for mode, row in slowest.items():
        print(
            f"longest per file ({mode}): {row['wall']:.2f} s wall ({row['name']}), target {FILE_TARGET_S:g} s"
        )


def _print_flight(directory: Path, manifest: dict[str, Any], failures: list[str]) -> None:
    print("\n16 hostile files in flight at once, one process (threads):")
    for mode in ("checks", "pool"):
        flight = _child("_flight", directory, mode, ROOT)
        wrong = {n: c for n, c in flight["codes"].items() if c != manifest["expected"][n]}
        if wrong or flight["peak_rss"] >= RSS_TARGET:
            failures.append(f"flight {mode}")
        extra = f", largest decode child {flight['peak_child_rss'] / MiB:.0f} MiB" if mode == "pool" else ""
        print(
            f"  {mode:6}: peak RSS {flight['peak_rss'] / MiB:.0f} MiB (before: {flight['rss_before'] / MiB:.0f} MiB)"
            f"{extra}, all done in {flight['seconds']:.1f} s, wrong codes {wrong or 'none'}"
        )


def _print_throughput(directory: Path, tmp: Path, args: argparse.Namespace, pairs: int) -> None:
    variants = ["checks"] if args.no_pool else ["checks", "pool"]
    trees = {"checks": ROOT, "pool": ROOT}
    if args.baseline_ref:
        variants.insert(0, "main")
        trees["main"] = _baseline_tree(args.baseline_ref, tmp / "baseline")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for i in range(pairs):
        for variant in variants if i % 2 == 0 else variants[::-1]:  # A B A B ..., order flipped each round
            mode = "checks" if variant == "main" else variant
            runs[variant].append(_child("_throughput", directory, mode, trees[variant]))
    reference = "main" if args.baseline_ref else "checks"
    ref_rate = statistics.median(r["images_per_s"] for r in runs[reference])
    ref_cpu = statistics.median(r["cpu"] for r in runs[reference])
    print(
        f"\nnormal images (48 JPEGs x 3 rounds, 4 threads), {pairs} alternating runs each; ratios vs {reference}:"
    )
    print(f"{'variant':8} {'img/s':>7} {'spread':>13} {'ratio':>6} {'cpu s':>6} {'cpu ratio':>9}")
    for variant in variants:
        rates = [r["images_per_s"] for r in runs[variant]]
        cpus = [r["cpu"] for r in runs[variant]]
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        print(
            f"{variant:8} {rate:7.1f} {min(rates):6.1f}-{max(rates):<6.1f} {rate / ref_rate:6.3f} "
            f"{cpu:6.2f} {cpu / ref_cpu:9.3f}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1].startswith("_"):
        what, folder, run_mode = sys.argv[1:]
        sys.path[0] = os.getcwd()  # the tree under test, not bench/ (whose module names are generic)
        fn = {"_files": measure_files, "_flight": measure_flight, "_throughput": measure_throughput}[what]
        print(json.dumps(fn(Path(folder), run_mode)))
    else:
        raise SystemExit(main())
