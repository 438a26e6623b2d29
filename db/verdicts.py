"""The verdict rows of done jobs: what a verdict stores (its row, faces, video frames and perceptual
hashes), how they are inserted beside the job update that finishes the job (:func:`db.jobs.finish_done_many`),
and the duplicate cache that reads them back (:func:`cached_verdicts`). Functions take a Session and never
commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import ScanJob, VerdictFace, VerdictFrame, VerdictHash, VerdictPreview, VerdictRow
from db.results import faces_of, verdict_frames
from dfscan.tenants import DEFAULT_TENANT_ID
from dfscan.verdicts import STORED, VIDEO, FaceVerdict, SecondOpinion, Stored, Verdict, stored_frames

# The tables under the models: the duplicate cache look-up is a Core statement on them, built once.
_JOBS: Table = ScanJob.__table__  # type: ignore[assignment]
_VERDICTS: Table = VerdictRow.__table__  # type: ignore[assignment]

# The columns of a verdict row: the verdict's stored fields (one mapper: dfscan.verdicts) and the worker.
VERDICT_FIELDS = (*STORED, "worker")
# Verdict columns a caller may leave out, with their value then (an image judged whole: no video
# timeline). Besides the columns, a verdict dict may carry ``faces``, a list of
# ``{"box": (x, y, w, h), "score": float, "fake_score": float}`` stored as verdict_faces rows, and
# ``frames``, a video's ``(t, fake_score)`` pairs stored as verdict_frames rows (``(t, fake_score, faces)``
# for a frame judged on faces: its faces as above, stored in verdict_frames.faces).
OPTIONAL_FIELDS: dict[str, Any] = {
    "judged_on": "image",
    "media": "image",
    "duration_s": None,
    "peak_t": None,
    "provenance": None,
    "second_opinion": None,
    "explanation": None,
    "faces_found": None,
    "faces_judged": None,
    "faces_skipped": None,
    "near_duplicate_of": None,
    "near_distance": None,
    "matches": None,
}


def _face_json(face: dict[str, Any]) -> dict[str, Any]:
    """A frame's face as stored in verdict_frames.faces."""
    x, y, w, h = (int(v) for v in face["box"])
    return {"box": [x, y, w, h], "score": float(face["score"]), "fake_score": float(face["fake_score"])}


def write_rows(session: Session, by_id: dict[uuid.UUID, dict[str, Any]], done: Sequence[uuid.UUID]) -> None:
    """Insert the verdict rows of the jobs in ``done`` (just made done by this transaction) from their
    verdict dicts in ``by_id``: the verdict, its faces, a video's frames and the perceptual hashes. Each
    insert ignores a row already there (``ON CONFLICT DO NOTHING``), a second line of defence behind the
    guarded job update."""
    rows = [
        {
            "job_id": job_id,
            **{k: by_id[job_id].get(k, OPTIONAL_FIELDS.get(k)) for k in VERDICT_FIELDS},
            "judged_on": by_id[job_id].get("judged_on") or "image",
            "media": by_id[job_id].get("media") or "image",
            "near_duplicate_of": _uuid_or_none(by_id[job_id].get("near_duplicate_of")),
        }
        for job_id in done
    ]
    if rows:
        session.execute(insert_ignoring_duplicate(session, VerdictRow, ["job_id"]), rows)
    faces = [
        face_row(job_id, seq, face)
        for job_id in done
        for seq, face in enumerate(by_id[job_id].get("faces") or ())
    ]
    if faces:  # one row per judged face beside the verdict, in the same transaction
        session.execute(insert_ignoring_duplicate(session, VerdictFace, ["job_id", "seq"]), faces)
    frames = [
        {
            "job_id": job_id,
            "seq": seq,
            "t": float(t),
            "fake_score": float(score),
            "faces": [_face_json(face) for face in rest[0]] if rest and rest[0] else None,
        }
        for job_id in done
        for seq, (t, score, *rest) in enumerate(by_id[job_id].get("frames") or ())
    ]
    if frames:  # a video's timeline beside its verdict, in the same transaction
        session.execute(insert_ignoring_duplicate(session, VerdictFrame, ("job_id", "seq")), frames)
    hashes = [
        {
            "job_id": job_id,
            **row,
            "tenant_id": by_id[job_id].get("tenant_id") or DEFAULT_TENANT_ID,
            "model_version": by_id[job_id]["model_version"],
            "media": by_id[job_id].get("media") or "image",
        }
        for job_id in done
        for row in by_id[job_id].get("hashes") or ()
    ]
    if hashes:  # perceptual hashes, read by every worker's near-duplicate index (dfscan/near.py)
        session.execute(insert_ignoring_duplicate(session, VerdictHash, ("job_id", "seq")), hashes)
    previews = [{"job_id": job_id, **row} for job_id in done for row in by_id[job_id].get("previews") or ()]
    if previews:  # small JPEGs of the judged pixels, for the review console
        session.execute(insert_ignoring_duplicate(session, VerdictPreview, ("job_id", "seq")), previews)


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    return None if value is None else value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def face_row(job_id: uuid.UUID, seq: int, face: dict[str, Any]) -> dict[str, Any]:
    """A verdict_faces row from a verdict's face dict (``box`` is ``(x, y, w, h)``)."""
    x, y, w, h = (int(v) for v in face["box"])
    return {
        "job_id": job_id,
        "seq": seq,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "score": float(face["score"]),
        "fake_score": float(face["fake_score"]),
    }


def insert_ignoring_duplicate(
    session: Session, table: Any = VerdictRow, key: Sequence[str] = ("job_id",)
) -> Any:
    """``INSERT INTO verdicts ... ON CONFLICT (job_id) DO NOTHING`` (or another table and key), to execute
    with a list of rows."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Core and RETURNING, so SQLAlchemy sends the rows as multi-row INSERTs ("insertmanyvalues");
        # without RETURNING an ON CONFLICT insert went out as one statement per row (~1 ms each).
        core = table.__table__
        return (
            postgresql.insert(core)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(*(core.c[name] for name in key))
        )
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))
    return insert(table)


def done_fields(verdict: Verdict, *, worker: str) -> dict[str, Any]:
    """What ``finish_done``/``finish_done_many`` store for a done verdict: its verdict row, its face
    rows and its video frames, and the worker. The one mapping both the worker and `dfscan scan` use."""
    return {
        **verdict.row(),
        "faces": verdict.face_rows(),
        "frames": verdict.frame_rows(),
        "hashes": verdict.hash_rows(),
        "previews": verdict.preview_rows(),
        "worker": worker,
    }


_CACHED = (
    select(
        _VERDICTS.c.job_id,
        _VERDICTS.c.image_sha256,
        _VERDICTS.c.fake_score,
        _VERDICTS.c.judged_on,
        _VERDICTS.c.media,
        _VERDICTS.c.duration_s,
        _VERDICTS.c.peak_t,
        _VERDICTS.c.second_opinion,
        _VERDICTS.c.faces_found,
        _VERDICTS.c.faces_judged,
        _VERDICTS.c.faces_skipped,
    )
    .join(_JOBS, _JOBS.c.id == _VERDICTS.c.job_id)
    .where(
        _VERDICTS.c.image_sha256.in_(bindparam("shas", expanding=True)),
        _VERDICTS.c.model_version == bindparam("version"),
        _JOBS.c.tenant_id == bindparam("tenant"),  # a tenant never learns what another one scanned
    )
    .order_by(_VERDICTS.c.id)
)


def cached_verdicts(
    session: Session,
    image_sha256s: Sequence[str],
    model_version: str,
    *,
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID,
) -> dict[str, Stored]:
    """What an earlier verdict said about the same bytes with the same model version, per sha256: its
    score, what it was judged on and its faces, and for a video its duration, peak time and judged
    frames (the duplicate cache; the newest verdict wins).

    The model version is the key: a verdict judged with faces on carries the face detector and its
    settings in its version (``<model>+faces:<detector>``), a video's its sampling (``+video:...``), so
    a faces request never gets a whole-image answer, nor the reverse, nor a video one sampled otherwise."""
    shas = sorted(set(image_sha256s))
    if not shas:
        return {}
    rows = session.execute(_CACHED, {"shas": shas, "version": model_version, "tenant": tenant_id})
    newest = {row.image_sha256: row for row in rows}
    stored = stored_of(session, list(newest.values()))
    return {sha: stored[row.job_id] for sha, row in newest.items()}


def stored_of(session: Session, rows: Sequence[Any]) -> dict[uuid.UUID, Stored]:
    """What verdict rows (a ``verdicts`` row or any row with its columns) said, per job: score, judged on
    and faces, face counts, second opinion, and for a video its duration, peak time and judged frames.
    The one reading of a stored verdict, for the duplicate cache and near-duplicate reuse alike."""
    faces = faces_of(session, [row.job_id for row in rows if row.judged_on == "faces"])
    frames = verdict_frames(session, [row.job_id for row in rows if row.media == VIDEO])
    return {
        row.job_id: Stored(
            row.fake_score,
            row.judged_on,
            tuple(FaceVerdict.from_stored(f) for f in faces.get(row.job_id, [])),
            media=row.media,
            duration_s=row.duration_s,
            peak_t=row.peak_t,
            frames=stored_frames(frames.get(row.job_id, [])),
            second_opinion=SecondOpinion.from_stored(row.second_opinion) if row.second_opinion else None,
            faces_found=row.faces_found,
            faces_judged=row.faces_judged,
            faces_skipped=row.faces_skipped,
        )
        for row in rows
    }
