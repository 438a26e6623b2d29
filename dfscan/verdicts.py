"""The one result type of judging a source, and the one place it maps to database rows and to output.

:class:`Verdict` is what the core (``worker.inference.judge.Judge``) returns for every source, done or
failed, whoever asked: ``dfscan scan``, a Celery worker, ``dfscan evaluate``. This module imports only
the standard library, so the producer and the database layer can use it without torch.

Adding a verdict field touches three places: the field here (with its entry in :data:`STORED`, if
it is stored), the column in ``db/models.py`` with its migration, and nothing else: the worker and
``dfscan scan`` store :meth:`Verdict.row`, ``dfscan results`` and ``dfscan scan`` print
:meth:`Verdict.output`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from dfscan.exceptions import error_detail

DONE = "done"
FAILED = "failed"
FAKE = "fake"
REAL = "real"
# DFSCAN_FACES=require and no face found: the job is done, but there was nothing to judge.
NOT_APPLICABLE = "not_applicable"
FACES = "faces"
IMAGE = "image"

# Verdict fields stored in the ``verdicts`` table (besides ``job_id`` and ``worker``), in column order.
STORED = (
    "label",
    "fake_score",
    "threshold",
    "model_version",
    "image_sha256",
    "image_format",
    "n_bytes",
    "width",
    "height",
    "fetch_ms",
    "decode_ms",
    "infer_ms",
    "cached",
    "judged_on",
    "media",
    "duration_s",
    "peak_t",
    "near_duplicate_of",
    "near_distance",
    "matches",
)

# What `dfscan scan` and `dfscan results` print (JSON keys, in order; table and CSV pick from them).
OUTPUT = (
    "source",
    "status",
    "label",
    "fake_score",
    "threshold",
    "model_version",
    "image_sha256",
    "image_format",
    "n_bytes",
    "width",
    "height",
    "cached",
    "judged_on",
    "faces",
    "media",
    "duration_s",
    "peak_t",
    "frames",
    "pdq",
    "pdq_quality",
    "near_duplicate_of",
    "near_distance",
    "matches",
    "error_code",
    "error",
    "error_detail",
)


IMAGE = "image"
VIDEO = "video"
UNKNOWN = "unknown"  # media of a failed read whose bytes never showed, and of a job with no verdict row


def label_for(fake_score: float, threshold: float) -> str:
    """The real/fake rule, written once: fake when p(fake) reaches the threshold."""
    return FAKE if fake_score >= threshold else REAL


@dataclass(frozen=True)
class FaceVerdict:
    """One judged face: ``box`` ``(x, y, w, h)`` in pixels of the EXIF-oriented image, the face
    detector's confidence ``score``, and the model's p(fake) for its crop."""

    box: tuple[int, int, int, int]
    score: float
    fake_score: float

    def row(self) -> dict[str, Any]:
        """As stored (``verdict_faces``; the caller adds ``job_id`` and ``seq``)."""
        return {"box": self.box, "score": self.score, "fake_score": self.fake_score}

    def output(self, threshold: float | None) -> dict[str, Any]:
        label = label_for(self.fake_score, threshold) if threshold is not None else None
        return {"box": list(self.box), "score": self.score, "fake_score": self.fake_score, "label": label}

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> FaceVerdict:
        x, y, w, h = (int(v) for v in stored["box"])
        return cls((x, y, w, h), float(stored["score"]), float(stored["fake_score"]))


@dataclass(frozen=True)
class Frame:
    """One sampled frame of a video (or animated image) verdict: its time in seconds from the start and
    its p(fake), the maximum over ``faces`` when it was judged on faces (boxes in pixels of the frame as
    displayed, before any scaling), else of the whole frame. ``fake_score`` is None for a frame that was
    not judged (faces ``require`` and no face in it). Judged frames are stored as rows of verdict_frames
    (t, fake_score and, for a frame judged on faces, its faces)."""

    t: float
    fake_score: float | None
    faces: tuple[FaceVerdict, ...] = ()

    def output(self, threshold: float | None = None) -> dict[str, Any]:
        return {
            "t": self.t,
            "fake_score": self.fake_score,
            "faces": [face.output(threshold) for face in self.faces],
        }


def stored_frames(frames: Sequence[tuple[Any, ...]]) -> tuple[Frame, ...]:
    """A video's frames from their stored form: (t, fake_score) or (t, fake_score, faces as stored)."""
    return tuple(
        Frame(
            t=t,
            fake_score=p,
            faces=tuple(FaceVerdict.from_stored(f) for f in rest[0] or ()) if rest else (),
        )
        for t, p, *rest in frames
    )


@dataclass(frozen=True)
class FrameHash:
    """One perceptual hash of a verdict: PDQ (64 hex digits) of an image, or of one sampled frame of a video
    or animation at ``t`` seconds (vPDQ), with its quality (0-100)."""

    t: float
    pdq: str
    quality: int


@dataclass(frozen=True)
class BankMatch:
    """A hash bank entry the source matched: the bank's name, the entry's id in it (the imported id, or its
    row id), and the Hamming distance (for a clip: the smallest over its matching frames)."""

    bank: str
    id: str
    distance: int

    def output(self) -> dict[str, Any]:
        return {"bank": self.bank, "id": self.id, "distance": self.distance}


@dataclass(frozen=True)
class Stored:
    """What the duplicate cache answers for bytes already judged with the same model version: the
    score (None for not_applicable), what it was judged on, and its faces; for a video also its
    duration, peak time and judged frames."""

    fake_score: float | None
    judged_on: str = IMAGE
    faces: tuple[FaceVerdict, ...] = ()
    media: str = IMAGE
    duration_s: float | None = None
    peak_t: float | None = None
    frames: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging one source: ``status`` is ``done`` (a label and p(fake)) or ``failed``
    (a stable ``error_code``, a message, and whether a retry may help). Times are milliseconds spent on
    this source; ``cached`` means the score came from an earlier verdict on the same bytes and model."""

    source: str
    status: str
    label: str | None = None
    fake_score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    image_sha256: str | None = None
    image_format: str | None = None
    n_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    # Face detection (0 when no detector ran); not stored, read by the worker's stage metrics.
    detect_ms: float = 0.0
    infer_ms: float = 0.0
    cached: bool = False
    # "faces": fake_score is the maximum over ``faces``; "image": the whole image was judged.
    judged_on: str | None = None
    faces: tuple[FaceVerdict, ...] = ()
    # Videos: media "video", the duration, the most suspicious moment and every sampled frame.
    media: str = IMAGE
    duration_s: float | None = None
    peak_t: float | None = None
    frames: tuple[Frame, ...] | None = None
    # Perceptual hashes (docs/near-duplicates.md): every frame's, and an image's own PDQ and quality (a
    # quality under DFSCAN_HASH_QUALITY_FLOOR is stored but never matched).
    hashes: tuple[FrameHash, ...] = ()
    # A near-duplicate of an earlier verdict of the same tenant and model version: that job's id and the
    # Hamming distance; the label and score are that verdict's.
    near_duplicate_of: str | None = None
    near_distance: int | None = None
    # Hash bank entries the source matched (any bank that forces a label has set ``label``).
    matches: tuple[BankMatch, ...] = ()
    error_code: str | None = None
    error: str | None = None
    retryable: bool = False

    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def pdq(self) -> str | None:
        """An image's PDQ hash (None for a video: its frames' hashes are ``hashes``)."""
        return self.hashes[0].pdq if self.media != VIDEO and len(self.hashes) == 1 else None

    @property
    def pdq_quality(self) -> int | None:
        return self.hashes[0].quality if self.media != VIDEO and len(self.hashes) == 1 else None

    @property
    def error_detail(self) -> dict[str, str] | None:
        """A failure's machine-readable detail: the limit of TOO_LARGE, and for this release the code
        a renamed failure had before (see :func:`dfscan.exceptions.error_detail`)."""
        return error_detail(self.error_code, self.error)

    def row(self) -> dict[str, Any]:
        """The ``verdicts`` columns of a done verdict (the caller adds ``job_id`` and ``worker``)."""
        if not self.done:
            raise ValueError(f"a {self.status} verdict has no verdict row ({self.error_code})")
        row = {name: getattr(self, name) for name in STORED}
        row["matches"] = [match.output() for match in self.matches] or None
        return row

    def hash_rows(self) -> list[dict[str, Any]]:
        """The ``verdict_hashes`` rows of this verdict (the caller adds the job, tenant and model version)."""
        return [
            {"seq": seq, "t": h.t, "pdq": bytes.fromhex(h.pdq), "quality": h.quality}
            for seq, h in enumerate(self.hashes)
        ]

    def face_rows(self) -> list[dict[str, Any]]:
        """The ``verdict_faces`` rows of this verdict, largest face first."""
        return [face.row() for face in self.faces]

    def output(self) -> dict[str, Any]:
        """The public JSON object of this verdict (keys :data:`OUTPUT`)."""
        out = {name: getattr(self, name) for name in OUTPUT}
        out["faces"] = [face.output(self.threshold) for face in self.faces]
        out["frames"] = (
            None if self.frames is None else [frame.output(self.threshold) for frame in self.frames]
        )
        out["matches"] = [match.output() for match in self.matches]
        return out

    def frame_rows(self) -> list[tuple[Any, ...]]:
        """The ``verdict_frames`` of a video verdict as (t, fake_score), in time order; empty for an image.
        A frame judged on faces is (t, fake_score, faces) with its faces' rows (:meth:`FaceVerdict.row`).
        Frames that were not judged (faces ``require``, no face in the frame) have no row."""
        return [
            (frame.t, frame.fake_score, [face.row() for face in frame.faces])
            if frame.faces
            else (frame.t, frame.fake_score)
            for frame in self.frames or ()
            if frame.fake_score is not None
        ]

    def with_source(self, source: str) -> Verdict:
        return replace(self, source=source)

    @classmethod
    def from_stored(
        cls,
        *,
        source: str,
        status: str,
        error_code: str | None,
        error: str | None,
        row: Mapping[str, Any] | None,
        faces: Sequence[Mapping[str, Any]] = (),
        frames: Sequence[tuple[Any, ...]] | None = None,
        hashes: Sequence[FrameHash] = (),
    ) -> Verdict:
        """Rebuild a verdict from a job's state, its stored ``verdicts`` row (None unless done), its
        stored faces, and a video's stored frames as (t, fake_score) or (t, fake_score, faces)."""
        stored = {name: row[name] for name in STORED if name in row} if row is not None else {}
        stored = {k: v for k, v in stored.items() if v is not None}
        stored["matches"] = tuple(
            BankMatch(str(m["bank"]), str(m["id"]), int(m["distance"])) for m in stored.get("matches") or ()
        )
        if stored.get("near_duplicate_of") is not None:
            stored["near_duplicate_of"] = str(stored["near_duplicate_of"])
        stored.setdefault("media", UNKNOWN)  # no verdict row (failed, queued): what it was is not stored
        if stored.get("media") == VIDEO:
            stored["frames"] = stored_frames(frames or ())
        judged = tuple(FaceVerdict.from_stored(f) for f in faces)
        return cls(
            source=source,
            status=status,
            error_code=error_code,
            error=error,
            faces=judged,
            hashes=tuple(hashes),
            **stored,
        )


VERDICT_FIELDS = tuple(field.name for field in fields(Verdict))
