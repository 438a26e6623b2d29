"""Video benchmarks: how to sample frames, what a whole video job costs, and how to aggregate frame scores.

``python -m bench.video sampling [--pairs 3] [--gops 25,50,250]``
    Four ways to take 32 frames spread over a 60 s 720p H.264 clip (25 fps, CABAC and B-frames: x264
    ``veryfast``), one clip per keyframe interval (GOP, in frames), each way in its own process, the ways
    alternated round-robin ``--pairs`` times (medians, spread, CPU seconds):

    - ``exact_seeks``: for every target, seek to the keyframe before it and decode up to it;
    - ``straight``: decode every frame, keep the ones nearest the targets;
    - ``keyframes``: ``skip_frame=NONKEY``, decode every keyframe, keep the one nearest each target;
    - ``plan``: dfscan's ``sample_frames`` (keyframes that are close enough, merged exact runs otherwise).

    Besides seconds: frames decoded, distinct frames returned, and the mean distance in seconds between a
    returned frame and its target (0 for exact sampling).

``python -m bench.video job [--pairs 3] [--gop 50] [--model DIR]``
    A whole video job on CPU: index (demux), decode+scale (``sample_frames``), preprocess and the model (a
    random ViT-B/16, the size of the public checkpoints; or ``--model``) over the 32 frames in batches of
    8. Prints seconds per stage, sampled frames per second and whole-job seconds. Detection: none yet
    (whole frames, faces ``off``).

``python -m bench.video fairness [--pairs 3] [--gop 50] [--gap 1.5]``
    Fair sharing: the latency of single 640x480 JPEGs judged through ``Judge.judge_bytes`` (decode,
    preprocess, the model batcher; ViT-B/16, batch 8, CPU, ``--faces`` off or auto) at random times (exponential gaps,
    mean ``--gap`` s, the same times in every variant of a round), with no video and while a 32-frame video
    job (2 frames in flight) runs on another thread: frames batched with images as before priorities
    (``fifo``), and as background items with at most 2 or 1 (dfscan) per background batch. Each variant
    in its own process, alternated; the image latency's median, p90 and worst, and the video job's seconds.

``python -m bench.video aggregation [--trials 2000]``
    Flag rates at threshold 0.5 of several rules (mean, max, the DFDC winner's confident mean, the max of
    a 3- or 5-sample moving mean or median; dfscan's is the 5-median) on generated sequences of 32 frame scores: real frames ~ Beta(2, 8), fake
    frames ~ Beta(8, 2); clips all real, all real with one noisy frame at 0.95, a fake stretch of 3, 5 or
    8 samples (10-25% of the clip), and all fake.

Clips are generated once into ``$TMPDIR/dfscan-bench-video`` (about a minute each on two cores).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

CACHE = Path(tempfile.gettempdir()) / "dfscan-bench-video"
STRATEGIES = ("exact_seeks", "straight", "keyframes", "plan")
FRAMES = 32
console = Console()


def clip_path(gop: int) -> Path:
    """The cached 60 s 1280x720 25 fps H.264 clip with a keyframe every ``gop`` frames (made once)."""
    from tests.fixtures.videos import make_clip

    path = CACHE / f"gop{gop}.mp4"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        console.print(f"generating {path} (60 s 720p, GOP {gop}) ...")
        data = make_clip(width=1280, height=720, fps=25, seconds=60, gop=gop, options={"preset": "veryfast"})
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(path)
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- one strategy in this process (child) --------------------------------------------------------


def run_strategy(name: str, data: bytes) -> dict[str, float]:
    import av

    from worker.inference.video.container import index_packets, open_container
    from worker.inference.video.decode import (
        VideoPolicy,
        VideoReformatter,
        decode_cost,
        plan_runs,
        sample_frames,
        scaled_size,
    )
    from worker.inference.video.plan import targets as _targets_of
    from worker.inference.video.plan import tolerance as _tolerance

    policy = VideoPolicy(frames=FRAMES)
    wall, cpu = time.perf_counter(), _cpu()
    with open_container(data, policy) as container:
        stream = container.streams.video[0]
        index = index_packets(container, stream, policy, lambda what: None)
        picks = _targets_of(index, policy.frames, policy.fps, policy.max_samples)
        span = index.end - index.start
        targets = [index.start + (i + 0.5) * span / FRAMES for i in range(FRAMES)]
        tb = index.time_base
        reformatter = VideoReformatter()
        got: list[int] = []
        decoded = 0

        def keep(frame: av.VideoFrame) -> None:
            w, h = scaled_size(frame.width, frame.height, policy.frame_side)
            reformatter.reformat(frame, w, h, "rgb24", interpolation="AREA").to_ndarray()
            got.append(frame.pts or 0)

        if name == "exact_seeks":
            for j in picks:
                container.seek(index.pts[j], stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    decoded += 1
                    if (frame.pts or 0) >= index.pts[j]:
                        keep(frame)
                        break
        elif name == "straight":
            container.seek(index.start, stream=stream, backward=True)
            wanted = {index.pts[j] for j in picks}
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts in wanted:
                    keep(frame)
        elif name == "keyframes":
            container.seek(index.start, stream=stream, backward=True)
            stream.codec_context.skip_frame = "NONKEY"
            keys = [p for p, k in zip(index.pts, index.key, strict=True) if k]
            wanted = set()
            for t in targets:
                at = bisect.bisect_left(keys, t)
                near = [keys[i] for i in (at - 1, at) if 0 <= i < len(keys)]
                wanted.add(min(near, key=_distance_to(t)))
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts in wanted:
                    keep(frame)
            stream.codec_context.skip_frame = "DEFAULT"
        elif name == "plan":
            runs = plan_runs(index.pts, index.key, picks, tolerance=_tolerance(index, len(picks)))
            decoded = decode_cost(index.pts, runs)
        else:
            raise SystemExit(f"unknown strategy {name}")
    if name == "plan":
        wall, cpu = time.perf_counter(), _cpu()  # time sample_frames alone, index included
        got = [round(f.t / tb) + index.start for f in sample_frames(data, policy)]
    seconds, cpu_s = time.perf_counter() - wall, _cpu() - cpu
    distance = statistics.fmean(min(abs(g - t) for g in got) * float(tb) for t in targets) if got else -1.0
    return {
        "seconds": seconds,
        "cpu": cpu_s,
        "decoded": decoded,
        "frames": len(set(got)),
        "distance_s": distance,
    }


def _distance_to(target: float) -> Callable[[int], float]:
    return lambda p: abs(p - target)


# --- parent: alternate strategies in fresh processes ---------------------------------------------


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.video", *args], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def bench_sampling(pairs: int, gops: list[int]) -> None:
    table = Table(
        title=f"{FRAMES} frames from a 60 s 1280x720 25 fps H.264 clip, {pairs} rounds, median (min-max)"
    )
    for col in (
        "GOP",
        "strategy",
        "wall s",
        "CPU s",
        "frames decoded",
        "distinct frames",
        "mean |t-target| s",
        "x plan",
    ):
        table.add_column(col, justify="right")
    for gop in gops:
        path = clip_path(gop)
        results: dict[str, list[dict[str, float]]] = {s: [] for s in STRATEGIES}
        for r in range(pairs):
            order = STRATEGIES if r % 2 == 0 else tuple(reversed(STRATEGIES))
            for name in order:
                results[name].append(_child(["one", name, str(path)]))
        plan_wall = statistics.median(x["seconds"] for x in results["plan"])
        for name in STRATEGIES:
            rows = results[name]
            walls = [x["seconds"] for x in rows]
            table.add_row(
                str(gop),
                name,
                f"{statistics.median(walls):.3f} ({_spread(walls)})",
                f"{statistics.median(x['cpu'] for x in rows):.3f}",
                f"{rows[0]['decoded']:.0f}",
                f"{rows[0]['frames']:.0f}",
                f"{rows[0]['distance_s']:.3f}",
                f"{statistics.median(walls) / plan_wall:.2f}",
            )
    console.print(table)


# --- a whole job ----------------------------------------------------------------------------------


def run_job(path: Path, model: Path | None) -> dict[str, float]:
    import torch

    from bench.core import CACHE as CORE_CACHE
    from bench.core import random_vit_base
    from worker.inference.model.classifier import load_classifier
    from worker.inference.model.preprocess import to_tensor
    from worker.inference.video.container import index_packets, open_container
    from worker.inference.video.decode import VideoPolicy, sample_frames

    data = path.read_bytes()
    model_dir = model or random_vit_base(CORE_CACHE / "vit-base-random")
    detector = load_classifier(str(model_dir), device="cpu")
    detector.predict(torch.stack([to_tensor(np_image(224), detector.preprocess)] * 2))  # warm up
    policy = VideoPolicy(frames=FRAMES)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    t, c = time.perf_counter(), _cpu()
    with open_container(data, policy) as container:
        index_packets(container, container.streams.video[0], policy, lambda what: None)
    stages["index (demux)"], stages["index cpu"] = time.perf_counter() - t, _cpu() - c
    t, c = time.perf_counter(), _cpu()
    frames = list(sample_frames(data, policy))  # index again + decode + scale
    stages["sample (index+decode+scale)"], stages["sample cpu"] = time.perf_counter() - t, _cpu() - c
    t, c = time.perf_counter(), _cpu()
    tensors = [to_tensor(f.image, detector.preprocess) for f in frames]
    stages["preprocess"], stages["preprocess cpu"] = time.perf_counter() - t, _cpu() - c
    t, c = time.perf_counter(), _cpu()
    scores: list[float] = []
    for i in range(0, len(tensors), 8):
        scores.extend(detector.predict(torch.stack(tensors[i : i + 8])))
    stages["model"], stages["model cpu"] = time.perf_counter() - t, _cpu() - c
    stages["job"] = time.perf_counter() - start
    stages["frames"] = len(frames)
    return stages


def np_image(side: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8))


def bench_job(pairs: int, gop: int, model: Path | None) -> None:
    path = clip_path(gop)
    runs = [_child(["job", str(path)] + (["--model", str(model)] if model else [])) for _ in range(pairs)]
    table = Table(title=f"one video job, 60 s 720p H.264 (GOP {gop}), {FRAMES} frames, CPU, {pairs} runs")
    for col in ("stage", "wall s median (min-max)", "CPU s median"):
        table.add_column(col, justify="right")
    for stage in ("index (demux)", "sample (index+decode+scale)", "preprocess", "model"):
        walls = [r[stage] for r in runs]
        cpu_key = stage.split(" ")[0] + " cpu"
        table.add_row(
            stage,
            f"{statistics.median(walls):.3f} ({_spread(walls)})",
            f"{statistics.median(r[cpu_key] for r in runs):.3f}",
        )
    jobs = [r["job"] for r in runs]
    table.add_row("whole job", f"{statistics.median(jobs):.3f} ({_spread(jobs)})", "")
    console.print(table)
    frames = runs[0]["frames"]
    sample = statistics.median(r["sample (index+decode+scale)"] for r in runs)
    sample_cpu = statistics.median(r["sample cpu"] for r in runs)
    job_cpu = statistics.median(r["sample cpu"] + r["preprocess cpu"] + r["model cpu"] for r in runs)
    console.print(
        f"sampled frames per wall second: decode alone {frames / sample:.1f}, whole job {frames / statistics.median(jobs):.1f}; "
        f"per CPU second: decode alone {frames / sample_cpu:.1f}, whole job {frames / job_cpu:.1f} "
        f"(detection: none yet, whole frames)"
    )


# --- fair sharing ---------------------------------------------------------------------------------


# Variants: name -> (frames of the video in flight, how its inputs meet images in the model batcher).
# "fifo" is how dfscan shared the batcher before priorities (one queue, frames and images batched together);
# "priority N" is dfscan now: frames are BACKGROUND items, never in an image's batch on a CPU, at most N
# frames per background batch (dfscan's CPU default: 1).
FAIR_VARIANTS: dict[str, tuple[int, str]] = {
    "no video": (0, "-"),
    "video, fifo (before)": (2, "fifo"),
    "video, priority, background batch 2": (2, "priority 2"),
    "video, priority, background batch 1 (dfscan)": (2, "priority 1"),
}


def run_fairness(
    path: Path, in_flight: int, mode: str, gap: float, seed: int, faces: str = "off"
) -> dict[str, float]:
    """Latency of single 640x480 JPEGs judged (``Judge.judge_bytes``: decode, preprocess, model; the worker's
    runtime and threads from the default settings) at random
    times (exponential gaps, mean ``gap`` s) while one 32-frame video job runs on another thread (or none:
    ``in_flight`` 0). The same arrival times in every variant of a round (``seed``)."""
    import dataclasses
    import io
    import random
    import threading

    from bench.core import CACHE as CORE_CACHE
    from bench.core import random_vit_base
    from dfscan.settings import Settings
    from worker.inference.factory import new_classifier, new_judge
    from worker.inference.model.batcher import FOREGROUND

    settings = Settings(
        model=str(random_vit_base(CORE_CACHE / "vit-base-random")),
        device="cpu",
        faces=faces,
        video_frames=FRAMES,
    )
    detector = new_classifier(settings)  # the worker's: ONNX Runtime on a CPU (DFSCAN_RUNTIME=auto)
    judge = new_judge(settings, detector)
    judge.videos = dataclasses.replace(judge.videos, in_flight=max(1, in_flight))  # fixed at 2 in a worker
    if mode == "fifo":  # the batcher before priorities: frames queue with images, batched together
        judge.batcher.mix = True
        score = judge._score
        judge._score = lambda key, pixels, priority=FOREGROUND: score(key, pixels, FOREGROUND)  # type: ignore[method-assign]
    elif mode.startswith("priority"):
        judge.batcher.background_batch = int(mode.split()[1])
    from PIL import Image

    rng = np.random.default_rng(seed)
    jpegs = []  # distinct bytes: a repeat would be answered from the judge's memo without the model
    for _ in range(120):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    for jpeg in jpegs[-3:]:
        judge.judge_bytes(jpeg)  # warm up
    data = path.read_bytes()
    done = threading.Event()
    video_s = 0.0
    verdicts = []

    def video() -> None:
        nonlocal video_s
        started = time.perf_counter()
        verdicts.append(judge.judge_bytes(data))
        video_s = time.perf_counter() - started
        done.set()

    gaps = random.Random(seed)
    thread = threading.Thread(target=video) if in_flight else None
    cpu0 = _cpu()
    if thread:
        thread.start()
    latencies = []
    horizon = time.perf_counter() + 25.0  # without a video: about as long as a video job runs
    while (
        not (done.is_set() if thread else time.perf_counter() > horizon) and len(latencies) < len(jpegs) - 3
    ):
        time.sleep(gaps.expovariate(1.0 / gap))
        if thread and done.is_set():
            break
        started = time.perf_counter()
        verdict = judge.judge_bytes(jpegs[len(latencies)])
        assert verdict.status == "done", verdict
        latencies.append(time.perf_counter() - started)
    if thread:
        thread.join()
        assert verdicts[0].status == "done", verdicts[0]
    judge.close()
    latencies.sort()
    return {
        "median": statistics.median(latencies),
        "p90": latencies[int(0.9 * (len(latencies) - 1))],
        "max": latencies[-1],
        "n": len(latencies),
        "video_s": video_s,
        "cpu": _cpu() - cpu0,
    }


def bench_fairness(pairs: int, gop: int, gap: float, faces: str = "off", skip: str = "") -> None:
    path = clip_path(gop)
    variants = {name: v for name, v in FAIR_VARIANTS.items() if not (skip and skip in name)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for r in range(pairs):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            in_flight, mode = variants[name]
            results[name].append(_child(["fair", str(path), str(in_flight), mode, str(gap), str(r), faces]))
            console.print(f"round {r + 1}: {name}: {json.dumps(results[name][-1])}")
    alone = statistics.median(x["median"] for x in results["no video"])
    table = Table(
        title=f"single images judged at random times (mean gap {gap} s) beside a {FRAMES}-frame video job, "
        f"ViT-B/16 CPU, batch 8, faces {faces}, {pairs} rounds"
    )
    for col in (
        "variant",
        "image latency median s (rounds)",
        "vs no video",
        "p90 s",
        "worst s",
        "images",
        "video job s",
    ):
        table.add_column(col, justify="right")
    for name, rows in results.items():
        medians = [x["median"] for x in rows]
        table.add_row(
            name,
            f"{statistics.median(medians):.3f} ({_spread(medians)})",
            f"{statistics.median(medians) / alone:.2f}x",
            f"{statistics.median(x['p90'] for x in rows):.3f}",
            f"{max(x['max'] for x in rows):.3f}",
            f"{sum(x['n'] for x in rows):.0f}",
            f"{statistics.median(x['video_s'] for x in rows):.1f}" if variants[name][0] else "-",
        )
    console.print(table)


# --- aggregation ---------------------------------------------------------------------------------


def confident_mean(scores: Sequence[float], *, high: float = 0.8, low: float = 0.2) -> float:
    """The DFDC winner's rule, for comparison: the mean of the confident fake frames when more than 40%
    of frames are above ``high``, of the confident real ones when more than 90% are below ``low``, else
    the plain mean."""
    n = len(scores)
    fake = [p for p in scores if p > high]
    real = [p for p in scores if p < low]
    if len(fake) > n / 2.5:
        return sum(fake) / len(fake)
    if len(real) > 0.9 * n:
        return sum(real) / len(real)
    return sum(scores) / n


def bench_aggregation(trials: int, threshold: float = 0.5) -> None:
    from worker.inference.video.aggregate import aggregate_frames

    rng = np.random.default_rng(0)
    n = FRAMES
    cases: dict[str, list[int]] = {
        "all real": [],
        "one noisy frame (0.95)": [-1],
        "fake stretch 3/32": list(range(14, 17)),
        "fake stretch 5/32": list(range(10, 15)),
        "fake stretch 8/32": list(range(20, 28)),
        "all fake": list(range(n)),
    }
    rules = {
        "mean": lambda s: float(np.mean(s)),
        "max": lambda s: float(np.max(s)),
        "DFDC confident mean": confident_mean,
        "max of 3-mean": lambda s: max(np.convolve(s, np.ones(3) / 3, mode="valid")),
        "max of 5-mean": lambda s: max(np.convolve(s, np.ones(5) / 5, mode="valid")),
        "max of 3-median": lambda s: max(np.median(np.lib.stride_tricks.sliding_window_view(s, 3), axis=1)),
        "max of 5-median (dfscan)": lambda s: aggregate_frames(list(enumerate(s))).fake_score,
    }
    table = Table(
        title=f"share of clips flagged fake at {threshold} ({trials} generated clips of {n} frame scores per row)"
    )
    table.add_column("clip")
    for rule in rules:
        table.add_column(rule, justify="right")
    for case, fake in cases.items():
        flagged = dict.fromkeys(rules, 0)
        for _ in range(trials):
            scores = rng.beta(2, 8, n)
            if fake == [-1]:
                scores[rng.integers(n)] = 0.95
            elif fake:
                scores[fake] = rng.beta(8, 2, len(fake))
            for rule, f in rules.items():
                flagged[rule] += f(list(scores)) >= threshold
        table.add_row(case, *(f"{flagged[r] / trials:.3f}" for r in rules))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sampling")
    s.add_argument("--pairs", type=int, default=3)
    s.add_argument("--gops", default="25,50,250")
    j = sub.add_parser("job")
    j.add_argument("path", nargs="?")
    j.add_argument("--pairs", type=int, default=3)
    j.add_argument("--gop", type=int, default=50)
    j.add_argument("--model", type=Path)
    f = sub.add_parser("fairness")
    f.add_argument("--pairs", type=int, default=3)
    f.add_argument("--gop", type=int, default=50)
    f.add_argument("--gap", type=float, default=1.5, help="mean seconds between images (exponential)")
    f.add_argument("--faces", choices=("off", "auto"), default="off", help="DFSCAN_FACES of the judge")
    f.add_argument("--skip", default="", help="leave out the variants whose name contains this")
    a = sub.add_parser("aggregation")
    a.add_argument("--trials", type=int, default=2000)
    fo = sub.add_parser("fair")  # internal: one fairness variant in this process, JSON on stdout
    fo.add_argument("path")
    fo.add_argument("in_flight", type=int)
    fo.add_argument("mode")
    fo.add_argument("gap", type=float)
    fo.add_argument("seed", type=int)
    fo.add_argument("faces", nargs="?", default="off")
    o = sub.add_parser("one")  # internal: one strategy in this process, JSON on stdout
    o.add_argument("strategy")
    o.add_argument("path")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.cmd == "sampling":
        bench_sampling(args.pairs, [int(g) for g in args.gops.split(",")])
    elif args.cmd == "one":
        print(json.dumps(run_strategy(args.strategy, Path(args.path).read_bytes())))
    elif args.cmd == "job" and args.path:
        print(json.dumps(run_job(Path(args.path), args.model)))
    elif args.cmd == "job":
        bench_job(args.pairs, args.gop, args.model)
    elif args.cmd == "fairness":
        bench_fairness(args.pairs, args.gop, args.gap, args.faces, args.skip)
    elif args.cmd == "fair":
        print(
            json.dumps(
                run_fairness(Path(args.path), args.in_flight, args.mode, args.gap, args.seed, args.faces)
            )
        )
    else:
        bench_aggregation(args.trials)


if __name__ == "__main__":
    main()
