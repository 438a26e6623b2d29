"""`dfscan scan`: the whole pipeline in-process, results stored through the same models (SQLite by default).

The pure core does the work (``worker.inference.judge``: the same ``Judge`` the worker uses); this edge
collects the sources the user named, writes one job row per source, and records each verdict as it comes.
Near-duplicates are looked up as the worker does (``worker.near.NearIndex``: an exact index over the
hashes of the verdicts in the same database and every enabled bank), unless ``near`` is off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import jobs
from db.migrate import upgrade
from db.session import new_engine, new_session_factory
from dfscan.settings import Settings
from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.verdicts import Stored, Verdict
from producer.sources import list_folder, path_source

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from worker.inference.hashing.pdq import Similar

log = logging.getLogger(__name__)
WORKER = "dfscan scan"


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
        if os.path.isdir(path):  # False, not OSError, for a name too long to exist
            roots.append(Path(os.path.realpath(path)))
            sources.extend(list_folder(path, recursive=recursive))
        else:
            roots.append(Path(os.path.realpath(path.parent)))
            sources.append(path_source(path))
    return sources, tuple(dict.fromkeys(roots))


def run_local_scan(
    sources: list[str],
    roots: tuple[Path, ...],
    settings: Settings,
    *,
    model: str | None,
    batch_size: int,
    annotate: Path | None = None,
    near: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one output row per source (:meth:`Verdict.output` plus ``job_id``), after storing it.
    ``near``: look near-duplicates up among the stored verdicts and the banks (off: judge everything)."""
    # The core is imported here so that `dfscan submit` and friends never import torch.
    from worker.inference.annotate import Pictures
    from worker.inference.factory import default_threads, new_classifier, new_judge
    from worker.inference.judge import judge_stream

    upgrade(settings.database_url)
    sessions = new_session_factory(new_engine(settings.database_url))
    detector = new_classifier(settings, model=model)
    with sessions.begin() as session:
        _, rows, _ = jobs.create_submission(session, sources, client_ref="dfscan scan")
        job_ids = [job.id for job in rows]

    def known(sha256: str, version: str) -> Stored | None:
        try:
            with sessions() as session:
                return jobs.cached_verdicts(session, [sha256], version).get(sha256)
        except Exception:  # a laptop scan goes on without its cache
            log.warning("duplicate-cache look-up failed for %s; judging anyway", sha256, exc_info=True)
            return None

    # With --annotate every picture is drawn from the frames the judge decoded (the source is read and
    # decoded once), so neither the duplicate cache nor the near-duplicate look-up, which answer without
    # judging, is asked.
    judge = new_judge(
        settings,
        detector,
        batch_size=batch_size,
        extra_roots=roots,
        known=None if annotate else known,
        similar=_near_look_up(sessions, settings) if near and annotate is None else None,
    )

    def judge_one(source: str) -> Verdict:
        if annotate is None:
            return judge.judge(source)
        pictures = Pictures()
        verdict = judge.judge(source, observe=pictures)
        if verdict.done:
            write_annotated(verdict, annotate, pictures)
        return verdict

    # A full batch waits at the batcher while the next images decode: with 2 threads the model saw
    # batches of <= 2 and ~7% more CPU seconds (96 photos, ViT-B, ONNX Runtime, 2 cores: 21.9 s vs 20.4 s).
    threads = batch_size + default_threads(settings)
    try:
        for job_id, verdict in zip(job_ids, judge_stream(judge_one, sources, threads=threads), strict=True):
            with sessions.begin() as session:
                jobs.claim_job(session, job_id, worker=WORKER, lease_seconds=3600, max_attempts=1)
                jobs.record_verdict(session, job_id, verdict, worker=WORKER)
            yield {"job_id": str(job_id), **verdict.output()}
    finally:
        judge.close()


def _near_look_up(sessions: sessionmaker[Session], settings: Settings) -> Similar:
    """The near-duplicate look-up of a local scan: the worker's index over this database's verdict hashes
    and banks (the default tenant's, and shared ones), read at the first look-up and kept in step as
    verdicts are stored."""
    from worker.inference.factory import near_policy
    from worker.inference.hashing.pdq import MediaHash, Near
    from worker.near import NearIndex

    index = NearIndex(sessions, near_policy(settings), reuse=settings.near_duplicates)

    def similar(hashed: MediaHash, version: str) -> Near | None:
        try:
            return index.similar(hashed, version, DEFAULT_TENANT_ID)
        except Exception:  # a laptop scan goes on without its look-up, as without its cache
            log.warning("near-duplicate look-up failed; judging anyway", exc_info=True)
            return None

    return similar


def write_annotated(verdict: Verdict, folder: Path, pictures: Any) -> Path | None:
    """Save the verdict's picture (:meth:`worker.inference.annotate.Pictures.picture`: the image with its
    boxes drawn, the whole image framed when it was judged whole, or a contact sheet of a video's or an
    animation's sampled frames) into ``folder``, named after the source and its sha256 prefix, so equal
    names never collide. None when there is no picture."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(verdict.source.rstrip("/")).stem or "image"
    out = folder / f"{stem}-{(verdict.image_sha256 or '')[:8]}.png"
    try:
        picture = pictures.picture(verdict)
        if picture is None:
            return None
        picture.save(out)
    except Exception as exc:  # the verdict stands; only its picture is missing
        log.warning("cannot annotate %s: %s", verdict.source, exc)
        return None
    return out
