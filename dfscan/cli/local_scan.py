"""`dfscan scan`: the whole pipeline in-process, results stored through the same models (SQLite by default).

The pure core does the work (worker.inference.pipeline.scan); this edge collects the sources the
user named, writes one job row per source, and records each outcome as it comes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from db import jobs
from db.migrate import upgrade
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from producer.sources import list_folder


def collect_sources(targets: list[str], *, recursive: bool) -> tuple[list[str], tuple[Path, ...]]:
    """Expand the command line into sources, and the roots those paths may be read from.

    Paths the user names are allowed; a symlink inside a named folder that leads out of it is not.
    """
    sources: list[str] = []
    roots: list[Path] = []
    for target in targets:
        if "://" in target:
            sources.append(target)
            continue
        path = Path(target)
        if path.is_dir():
            roots.append(Path(os.path.realpath(path)))
            sources.extend(list_folder(path, recursive=recursive))
        else:
            roots.append(Path(os.path.realpath(path.parent)))
            sources.append(str(path))
    return sources, tuple(dict.fromkeys(roots))


def run_local_scan(
    sources: list[str],
    roots: tuple[Path, ...],
    settings: Settings,
    *,
    model: str,
    batch_size: int,
) -> Iterator[dict[str, Any]]:
    """Yield one result dict per source, after storing it."""
    # The core is imported here so that `dfscan submit` and friends never import torch.
    from worker.inference.model import load_detector
    from worker.inference.pipeline import ScanItem, scan
    from worker.runtime import default_threads, image_policy, source_policy

    upgrade(settings.database_url)
    sessions = new_session_factory(new_engine(settings.database_url))
    detector = load_detector(
        model,
        revision=settings.model_revision,
        device=settings.device,
        int8=settings.int8,
        threads=default_threads(settings),
        runtime=settings.runtime,
        onnx_cache=settings.onnx_cache,
    )
    with sessions.begin() as session:
        _, rows, _ = jobs.create_submission(session, sources, client_ref="dfscan scan")
        items = [ScanItem(key=str(job.id), source=job.source) for job in rows]

    def known(sha256: str) -> float | None:
        with sessions() as session:
            return jobs.cached_score(session, sha256, detector.version)

    policy = source_policy(settings)
    policy = replace(policy, allowed_roots=(*policy.allowed_roots, *roots))
    results = scan(
        items,
        detector,
        sources=policy,
        images=image_policy(settings),
        batch_size=batch_size,
        threshold=settings.threshold,
        known=known,
    )
    for result in results:
        job_id = uuid.UUID(result.key)
        with sessions.begin() as session:
            jobs.claim_job(session, job_id, worker="dfscan scan", lease_seconds=3600, max_attempts=1)
            if result.status == "done":
                assert result.fake_score is not None and result.label is not None and result.sha256
                jobs.finish_done(
                    session,
                    job_id,
                    label=result.label,
                    fake_score=result.fake_score,
                    threshold=result.threshold,
                    model_version=result.model_version,
                    image_sha256=result.sha256,
                    n_bytes=result.n_bytes or 0,
                    width=result.width,
                    height=result.height,
                    fetch_ms=result.fetch_ms,
                    decode_ms=result.decode_ms,
                    infer_ms=result.infer_ms,
                    cached=result.cached,
                    worker="dfscan scan",
                )
            else:
                jobs.finish_failed(
                    session, job_id, code=result.error_code or "INTERNAL_ERROR", message=result.error or ""
                )
        row = asdict(result)
        row["job_id"] = row.pop("key")
        yield row
