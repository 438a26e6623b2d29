"""Load rows of ``make faults`` (issue 17): hostile media in flight with faces on, and the interactive lane
beside a full bulk backlog. Used by ``python -m bench.faults`` like tests/integration/faults/scenarios.py.

- :func:`hostile_load`: one worker (faces on, its default task threads) judges 16 files of each kind in
  turn: a crowd JPEG (38.6 Mpx, 784 pasted faces), a 1 x 40,000,000 PNG, an ordinary 40 Mpx JPEG, and
  hostile clips (tests/fixtures/videos.py's corpus). Notes: the worker's peak RSS (children included)
  over all and per kind, and whether every job ended final, failed ones with a code. ``allocator``
  starts the worker with other malloc variables (``{"MALLOC_ARENA_MAX": "16"}``: glibc's own behaviour
  on 2 cores, since dfscan leaves the allocator alone when either variable is set).
- :func:`adversarial_clips_beside_interactive`: two bulk 32-frame clips of a texture made by gradient
  ascent on MTCNN's P-net (``bench/face_cost.py``) in one worker with faces on, and an interactive image
  alone and beside them. Notes: the probe's p50/p99 alone and beside, and each clip's seconds and code.
- :func:`interactive_beside_backlog`: an interactive image's time from submit to verdict (the job row's
  ``created_at`` to ``finished_at``), one at a time, alone and then beside a bulk backlog of crowd JPEGs
  and clips that keeps every bulk task thread busy. Notes: p50 and p99 (nearest rank) of each, their
  ratio, and the least bulk work still queued when an interactive image finished (the backlog was full
  throughout when it is > 0).

Every file is generated here from tests/fixtures (faces.py, hostile.py, videos.py), never committed.
"""

from __future__ import annotations

import functools
import io
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from db.models import ScanJob, VerdictRow
from db.session import new_engine, new_session_factory
from producer.client import ScanClient
from tests.fixtures import faults
from tests.fixtures.faces import face_clip, face_scene, paste_face
from tests.fixtures.hostile import _chunk, png_raw, png_with
from tests.fixtures.service import Service
from tests.fixtures.videos import flat_clip, hostile_corpus
from tests.integration.faults.scenarios import RSS_BOUND, Outcome, finish
from tests.integration.test_service import settings_for
from tests.integration.test_worker_kill import wait_for

MiB = 1024 * 1024

# --- the files ----------------------------------------------------------------------------------------


def _smooth(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour field (compresses like a photo's sky, so a 40 Mpx JPEG stays a few MB)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 225, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def crowd_jpeg(
    tile: tuple[int, int] = (1800, 1340), grid: int = 7, repeat: int = 4, face_px: int = 110
) -> bytes:
    """A crowd: a tile of ``grid`` x ``grid`` pasted faces, tiled ``repeat`` x ``repeat`` (defaults: 7200 x
    5360 = 38.6 Mpx, 784 faces)."""
    image = _smooth(*tile, seed=7)
    for row in range(grid):
        for col in range(grid):
            center = ((col + 0.5) * tile[0] / grid, (row + 0.5) * tile[1] / grid)
            paste_face(image, center, face_px)
    pixels = np.tile(np.asarray(image), (repeat, repeat, 1))
    return _jpeg(Image.fromarray(pixels))


def big_jpeg(seed: int = 3) -> bytes:
    """An ordinary JPEG just under the 40 Mpx cap (7296 x 5472)."""
    return _jpeg(_smooth(7296, 5472, seed))


def tall_png() -> bytes:
    """1 x 40,000,000 grey pixels: 77 KB on disk (issue 17: +825 MiB in a worker)."""
    return png_raw(1, 40_000_000)


def jpeg_variant(data: bytes, i: int) -> bytes:
    """The same JPEG with a comment segment naming ``i``: other bytes (no duplicate-cache hit), same pixels."""
    comment = f"dfscan load variant {i}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def png_variant(data: bytes, i: int) -> bytes:
    return png_with(data, before_idat=_chunk(b"tEXt", b"variant\x00" + str(i).encode()))


def hostile_clips(n: int) -> list[tuple[str, bytes, str]]:
    """``n`` hostile clips (name, bytes, the code it must end with), the corpus cycled."""
    corpus = sorted(hostile_corpus().items())
    return [
        (f"{name}-{i}", data, code)
        for i, (name, (data, code)) in enumerate(corpus * math.ceil(n / len(corpus)))
    ][:n]


def _write(folder: Path, files: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(str(path))
    return paths


# --- (a) 16 hostile files of each kind in flight ------------------------------------------------------


def hostile_load(svc: Service, *, per_kind: int = 16, allocator: dict[str, str] | None = None) -> Outcome:
    crowd, big, tall = crowd_jpeg(), big_jpeg(), tall_png()
    clips = hostile_clips(per_kind)
    kinds: dict[str, dict[str, bytes]] = {
        "crowd": {f"crowd{i:02d}.jpg": jpeg_variant(crowd, i) for i in range(per_kind)},
        "tall_png": {f"tall{i:02d}.png": png_variant(tall, i) for i in range(per_kind)},
        "big_jpeg": {f"big{i:02d}.jpg": jpeg_variant(big, i) for i in range(per_kind)},
        "clips": {f"{name}.bin": data for name, data, _ in clips},
    }
    expected = {str(svc.images / "clips" / f"{name}.bin"): code for name, _, code in clips}
    worker = svc.start_worker(env={"DFSCAN_FACES": "auto", **(allocator or {})})
    client = ScanClient(settings_for(svc))
    notes: dict[str, object] = {}
    reports = []
    stored: dict[str, str | None] = {}
    with faults.RssSampler(worker.proc.pid) as total:
        notes["idle_rss_mib"] = faults.rss_bytes(worker.proc.pid) // MiB
        for kind, files in kinds.items():
            paths = _write(svc.images / kind, files)
            with faults.RssSampler(worker.proc.pid) as rss:
                sub = client.submit(paths, client_ref=kind)
                outcome = finish(kind, svc, sub, 900)
            reports.append(outcome.report)
            stored.update({row.source: row.error_code for row in sub.results()})
            notes[f"{kind}_peak_mib"] = rss.peak // MiB
            notes[f"{kind}_codes"] = dict(outcome.report.failed_codes) or "-"
    assert worker.proc.poll() is None, worker.text()[-3000:]
    wrong = {
        source: (code, stored.get(source)) for source, code in expected.items() if stored.get(source) != code
    }
    report = reports[-1]
    report.submitted = sum(r.submitted for r in reports)
    report.done = sum(r.done for r in reports)
    report.failed = sum(r.failed for r in reports)
    for other in reports[:-1]:
        report.lost.extend(other.lost)
        report.duplicated.extend(other.duplicated)
        report.missing_seqs.extend(other.missing_seqs)
    notes.update(peak_rss_mib=total.peak // MiB, rss_bound_mib=RSS_BOUND // MiB, clips_wrong_codes=len(wrong))
    name = "16 hostile files of each kind, faces on" + (f" ({allocator})" if allocator else "")
    return Outcome(name, report, notes, log=worker.text()[-3000:])


# --- (b) an interactive image beside a full bulk backlog ----------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _job_seconds(svc: Service, submission_id: object) -> tuple[float, str]:
    """An interactive job's seconds from submit to verdict, and where they went (claim wait, decode, model)."""
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        created, started, finished, code, decode_ms, infer_ms = session.execute(
            select(
                ScanJob.created_at,
                ScanJob.started_at,
                ScanJob.finished_at,
                ScanJob.error_code,
                VerdictRow.decode_ms,
                VerdictRow.infer_ms,
            )
            .outerjoin(VerdictRow, VerdictRow.job_id == ScanJob.id)
            .where(ScanJob.submission_id == submission_id)
        ).one()
    assert code is None and finished is not None, f"the interactive image failed: {code}"
    total = float((finished - created).total_seconds())
    wait = float((started - created).total_seconds())
    return (
        total,
        f"{total:.1f}s=wait {wait:.1f}+decode {(decode_ms or 0) / 1000:.1f}+model {(infer_ms or 0) / 1000:.1f}",
    )


def _interactive(svc: Service, client: ScanClient, path: str, where: list[str] | None = None) -> float:
    sub = client.submit([path], client_ref="interactive", priority=9)
    sub.wait(600, poll=0.05)
    seconds, breakdown = _job_seconds(svc, sub.id)
    if where is not None:
        where.append(breakdown)
    return seconds


def interactive_beside_backlog(
    svc: Service, *, samples: int = 12, crowds: int = 32, clips: int = 16
) -> Outcome:
    images = {f"face{i:02d}.jpg": _jpeg(face_scene(120, seed=100 + i).image) for i in range(2 * samples + 1)}
    interactive = _write(svc.images / "interactive", images)
    crowd = crowd_jpeg(tile=(1200, 900), grid=4, repeat=3, face_px=200)  # 3600 x 2700, 144 faces
    backlog = {f"crowd{i:02d}.jpg": jpeg_variant(crowd, i) for i in range(crowds)}
    for i in range(clips):
        if i % 2:
            data, _ = face_clip([True] * 32, size=(640, 480), seed=200 + i)
        else:
            data = flat_clip(3840, 2160, frames=32 + i, fps=8, gop=8)  # 4K
        backlog[f"clip{i:02d}.mp4"] = data
    bulk_paths = _write(svc.images / "backlog", backlog)
    worker = svc.start_worker(env={"DFSCAN_FACES": "auto"})
    client = ScanClient(settings_for(svc))
    _interactive(svc, client, interactive[0])  # warm-up: the first detection loads MTCNN's weights
    alone = [_interactive(svc, client, path) for path in interactive[1 : samples + 1]]
    bulk = client.submit(bulk_paths, client_ref="backlog")
    wait_for(svc, lambda c: c.get("running", 0) >= 16, 300)
    beside, left, where = [], [], []
    for path in interactive[samples + 1 :]:
        beside.append(_interactive(svc, client, path, where))
        left.append(bulk.status()["queued"])
    outcome = finish("interactive beside a bulk backlog", svc, bulk, 1800)
    assert worker.proc.poll() is None, worker.text()[-3000:]
    a50, a99 = _percentile(alone, 0.5), _percentile(alone, 0.99)
    b50, b99 = _percentile(beside, 0.5), _percentile(beside, 0.99)
    outcome.notes.update(
        alone_p50_s=round(a50, 2),
        alone_p99_s=round(a99, 2),
        beside_p50_s=round(b50, 2),
        beside_p99_s=round(b99, 2),
        p99_ratio=round(b99 / a99, 2),
        backlog_min_queued=min(left),
        samples=samples,
        bulk_codes=dict(outcome.report.failed_codes) or "-",
        slowest=sorted(where, key=lambda text: float(text.split("s=")[0]))[-2:],
    )
    return outcome


# --- (c) clips of an adversarial face-detector texture beside an interactive probe -------------------


@functools.cache
def _texture(steps: int) -> np.ndarray:
    """A 640x640 texture made by gradient ascent on MTCNN's P-net (``bench/face_cost.py``), once per run."""
    import torch

    from bench.face_cost import adversarial_texture
    from worker.inference.faces.mtcnn import MtcnnDetector

    return np.asarray(adversarial_texture(MtcnnDetector(torch.device("cpu")).pnet, steps=steps))


def adversarial_clip(steps: int = 150, offset: int = 0, frames: int = 32) -> bytes:
    """A 640x640 MP4 of ``frames`` frames of the adversarial texture, shifted a few pixels a frame
    (``offset``: another clip, other bytes)."""
    from tests.fixtures.videos import encode_images

    texture = _texture(steps)
    shifted = [Image.fromarray(np.roll(texture, offset + 2 * i, axis=1)) for i in range(frames)]
    return encode_images(shifted, fps=8, gop=8)


def _clip_seconds(svc: Service, submission_id: object) -> list[str]:
    """Each clip's outcome: seconds from claim to final, and its code."""
    sessions = new_session_factory(new_engine(svc.database_url))
    with sessions() as session:
        rows = session.execute(
            select(ScanJob.started_at, ScanJob.finished_at, ScanJob.error_code).where(
                ScanJob.submission_id == submission_id
            )
        ).all()
    return [
        f"{(finished - started).total_seconds():.0f}s {code or 'done'}"
        for started, finished, code in rows
        if started is not None and finished is not None
    ]


def adversarial_clips_beside_interactive(svc: Service, *, samples: int = 8, clips: int = 2) -> Outcome:
    """Two bulk clips of the adversarial texture (32 frames each) in one worker with faces on, and an
    interactive image submitted one at a time, alone and then while the clips are judged."""
    images = {f"face{i:02d}.jpg": _jpeg(face_scene(120, seed=300 + i).image) for i in range(2 * samples + 1)}
    interactive = _write(svc.images / "interactive", images)
    texture_clip = adversarial_clip()
    backlog = {
        f"texture{k}.mp4": adversarial_clip(offset=100 * k) if k else texture_clip for k in range(clips)
    }
    bulk_paths = _write(svc.images / "clips", backlog)
    worker = svc.start_worker(env={"DFSCAN_FACES": "auto"})
    client = ScanClient(settings_for(svc))
    _interactive(svc, client, interactive[0])  # warm-up: loads MTCNN's weights
    alone = [_interactive(svc, client, path) for path in interactive[1 : samples + 1]]
    bulk = client.submit(bulk_paths, client_ref="texture clips")
    wait_for(svc, lambda c: c.get("running", 0) >= 1, 300)
    beside: list[float] = []
    where: list[str] = []
    during = 0
    for path in interactive[samples + 1 :]:
        beside.append(_interactive(svc, client, path, where))
        during += bulk.status()["running"] > 0
    outcome = finish("adversarial clips beside an interactive image", svc, bulk, 900)
    assert worker.proc.poll() is None, worker.text()[-3000:]
    a50, a99 = _percentile(alone, 0.5), _percentile(alone, 0.99)
    b50, b99 = _percentile(beside, 0.5), _percentile(beside, 0.99)
    outcome.notes.update(
        alone_p50_s=round(a50, 2),
        alone_p99_s=round(a99, 2),
        beside_p50_s=round(b50, 2),
        beside_p99_s=round(b99, 2),
        p99_ratio=round(b99 / a99, 2),
        probes_while_clips_ran=during,
        clips=_clip_seconds(svc, bulk.id),
        clip_codes=dict(outcome.report.failed_codes) or "-",
    )
    return outcome


def _bounded(outcome: Outcome) -> Outcome:
    peak = outcome.notes["peak_rss_mib"]
    assert isinstance(peak, int)
    if peak * MiB > RSS_BOUND:
        raise AssertionError(f"peak RSS {peak} MiB over {RSS_BOUND // MiB} MiB: {outcome.notes}")
    return outcome


def _within_twice(outcome: Outcome) -> Outcome:
    ratio = outcome.notes["p99_ratio"]
    assert isinstance(ratio, float)
    if ratio > 2.0 or not outcome.notes["backlog_min_queued"]:
        raise AssertionError(f"interactive p99 over 2x alone, or the backlog ran dry: {outcome.notes}")
    return outcome


# The rows bench/faults.py runs (name, scenario): each fails (a FAILED row) past its target.
ROWS: list[tuple[str, Callable[[Service], Outcome]]] = [
    (
        "16 hostile files of each kind, faces on (peak RSS <= 1.5 GiB)",
        lambda svc: _bounded(hostile_load(svc)),
    ),
    (
        "interactive image beside a bulk backlog (p99 <= 2x alone)",
        lambda svc: _within_twice(interactive_beside_backlog(svc)),
    ),
    (  # measured, not a target: every clip final with a code, the probe's latency recorded
        "adversarial-texture clips beside an interactive probe",
        adversarial_clips_beside_interactive,
    ),
]
