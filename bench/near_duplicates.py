"""Near-duplicate costs (docs/near-duplicates.md): hashing per image, index look-ups at 10k / 1M / 10M
hashes, memory per million, and a re-upload-heavy stream against judging everything.

Usage: ``PYTHONPATH=. python -m bench.near_duplicates [--sizes 10000,1000000,10000000] [--pairs 3]``

1. **Hashing**: ``load_pixels`` (decode + the model's resize: the baseline) against ``load_pixels_hashed``
   (the same, plus PDQ and its 8 dihedral variants from the pixels decoded), alternating A B A B over the
   same 24 photo-like JPEGs (256x256 to 1024x768), ``--pairs`` pairs; CPU ms per image (process time) and
   wall, medians and spread; the difference is the hashing cost.
2. **Look-ups**: ``dfscan.hashindex.HashIndex`` over N random 256-bit hashes (the worst case for
   multi-index hashing: real PDQ hashes are not uniform, their buckets are fuller), queried with an image's
   8 dihedral hashes at distance 31 (half the queries have a planted match at 20-28 bits); p50/p99 ms.
   Baseline in the same run: faiss's exhaustive ``IndexBinaryFlat`` (one thread) on the same rows, where
   installed.
3. **Memory**: the index's bytes per million rows.
4. **Stream**: 64 sources, half near-duplicates (re-encoded at JPEG q60 and scaled 0.8) of the other half,
   through one Judge (a ViT at 224 px) with and without the near-duplicate look-up (an in-memory index,
   no database), alternating; sources per second.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.images import write_images
from dfscan.hashindex import HashIndex


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def hashing(pairs: int) -> None:
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.model.preprocess import PreprocessConfig, load_pixels, load_pixels_hashed

    cfg = PreprocessConfig.from_dict({})
    policy = ImagePolicy()
    with tempfile.TemporaryDirectory() as tmp:
        datas = [p.read_bytes() for p in write_images(Path(tmp), 24, seed=3)]
    cpu: dict[str, list[float]] = {"decode+resize": [], "decode+resize+pdq": []}
    wall: dict[str, list[float]] = {"decode+resize": [], "decode+resize+pdq": []}
    for _ in range(pairs):
        for name, fn in (("decode+resize", load_pixels), ("decode+resize+pdq", load_pixels_hashed)):
            c, w = time.process_time(), time.perf_counter()
            for data in datas:
                fn(data, cfg, policy)
            cpu[name].append((time.process_time() - c) * 1000 / len(datas))
            wall[name].append((time.perf_counter() - w) * 1000 / len(datas))
    extra = [b - a for a, b in zip(cpu["decode+resize"], cpu["decode+resize+pdq"], strict=True)]
    # the hashing alone, on the model-sized images the road hashes (the difference above is noisy)
    from worker.inference.hashing.pdq import pdq_dihedral
    from worker.inference.images.resizing import decode_resized

    resized = [decode_resized(data, policy, cfg.resize, None)[0] for data in datas]
    alone = []
    for _ in range(pairs):
        c = time.process_time()
        for _repeat in range(10):
            for image in resized:
                pdq_dihedral(image)
        alone.append((time.process_time() - c) * 1000 / (10 * len(resized)))
    print("## hashing, ms per image (24 JPEGs 256x256-1024x768)")
    for name in cpu:
        print(f"{name:20s} cpu {_spread(cpu[name])}  wall {_spread(wall[name])}")
    print(f"{'pdq + 8 dihedral':20s} extra cpu {_spread(extra)}")
    print(
        f"{'pdq + 8 dihedral':20s} alone cpu {_spread(alone)} (on the {resized[0].size} model-sized images)"
    )


def _queries(rows: np.ndarray, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    out = []
    for i in range(count):
        batch = rng.integers(0, 256, (8, 32), dtype=np.uint8)
        if i % 2 == 0:  # a planted near-duplicate of a stored row
            q = rows[int(rng.integers(0, len(rows)))].copy()
            for bit in rng.choice(256, int(rng.integers(20, 29)), replace=False):
                q[bit // 8] ^= 1 << (bit % 8)
            batch[int(rng.integers(0, 8))] = q
        out.append(batch)
    return out


def lookups(sizes: list[int], queries: int) -> None:
    print("## look-ups: 8 dihedral hashes a query, distance 31, ms")
    print(
        "| rows | index | build s | p50 | p99 | CPU p50 | CPU p99 | MB per million rows "
        "| faiss flat p50 | faiss flat p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        rng = np.random.default_rng(n)
        rows = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        started = time.perf_counter()
        index = HashIndex()
        index.add(rows, np.arange(n))
        build = time.perf_counter() - started
        qs = _queries(rows, rng, queries)
        lat, cpu = [], []
        for i, q in enumerate(qs):
            t, c = time.perf_counter(), time.process_time()
            hits = index.search(q, 31)
            lat.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            if i % 2 == 0:
                assert any(hits), "a planted match was missed"
        flat = ["-", "-"]
        try:
            import faiss

            faiss.omp_set_num_threads(1)
            fi = faiss.IndexBinaryFlat(256)
            fi.add(rows)
            fl = []
            for q in qs[: max(4, queries // 10)]:
                t = time.perf_counter()
                fi.range_search(q, 32)
                fl.append((time.perf_counter() - t) * 1000)
            flat = [f"{np.percentile(fl, 50):.1f}", f"{np.percentile(fl, 99):.1f}"]
            del fi
        except ImportError:
            pass
        mb = index.nbytes / n * 1_000_000 / 2**20
        print(
            f"| {n:,} | MIH 11x23-24 | {build:.1f} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} "
            f"| {np.percentile(cpu, 50):.2f} | {np.percentile(cpu, 99):.2f} | {mb:.0f} | {flat[0]} | {flat[1]} |"
        )
        del index, rows


def stream(pairs: int) -> None:
    from dfscan.verdicts import Stored
    from tests.fixtures.models import REAL_FAKE, save_tiny_vit
    from worker.inference.hashing.pdq import MediaHash, Near
    from worker.inference.images.decode import ImagePolicy
    from worker.inference.judge import Judge, judge_stream
    from worker.inference.model.classifier import load_classifier
    from worker.inference.sources.read import SourcePolicy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny_vit(root / "m", REAL_FAKE, image_size=224, patch_size=16)
        originals = write_images(root / "orig", 32, seed=9)
        copies = []
        for i, path in enumerate(originals):
            image = Image.open(path).convert("RGB")
            image = image.resize((round(image.width * 0.8), round(image.height * 0.8)))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=60)
            copy = root / "orig" / f"copy{i:03d}.jpg"
            copy.write_bytes(buffer.getvalue())
            copies.append(copy)
        sources = [str(p) for p in originals] + [str(p) for p in copies]
        classifier = load_classifier(str(model))
        judge = Judge(classifier, sources=SourcePolicy(allowed_roots=(root,)), images=ImagePolicy())

        def run(reuse: bool) -> float:
            index, stored = HashIndex(), dict[int, Stored]()

            def similar(hashed: MediaHash, version: str) -> Near | None:
                bits = hashed.frames[0].bits
                hits = [h for per in index.search([bits, *hashed.variants], 31) for h in per]
                if hits:
                    key, distance = min(hits, key=lambda kd: kd[1])
                    return Near(of=str(key), distance=distance, stored=stored[key])
                return None

            started = time.perf_counter()
            for n, verdict in enumerate(
                judge_stream(lambda s: judge.judge(s, similar=similar if reuse else None), sources, threads=4)
            ):
                if reuse and verdict.done and verdict.hashes and verdict.near_duplicate_of is None:
                    index.add([bytes.fromhex(verdict.hashes[0].pdq)], [n])
                    stored[n] = Stored(verdict.fake_score)
            return len(sources) / (time.perf_counter() - started)

        rates: dict[str, list[float]] = {"judge everything": [], "near-duplicates reused": []}
        for _ in range(pairs):
            judge._memo.clear()
            rates["judge everything"].append(run(False))
            judge._memo.clear()
            rates["near-duplicates reused"].append(run(True))
        judge.close()
    print("## stream: 64 sources, half near-duplicates, sources/s (4 threads, ViT 224/16 tiny)")
    for name, values in rates.items():
        print(f"{name:24s} {_spread(values)}")
    ratio = [b / a for a, b in zip(rates["judge everything"], rates["near-duplicates reused"], strict=True)]
    print(f"ratio reused/everything {_spread(ratio)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated: hashing,lookups,stream")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if "hashing" not in skip:
        hashing(args.pairs)
    if "lookups" not in skip:
        lookups([int(s) for s in args.sizes.split(",")], args.queries)
    if "stream" not in skip:
        stream(args.pairs)


if __name__ == "__main__":
    main()
