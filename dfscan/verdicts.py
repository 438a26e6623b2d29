"""The one result type of judging a source, and the one place it maps to database rows and to output.

:class:`Verdict` is what the core (``worker.inference.judge.Judge``) returns for every source, done or
failed, whoever asked: ``dfscan scan``, a Celery worker, ``dfscan evaluate``. This module imports only
the standard library, so the producer and the database layer can use it without torch.

Adding a verdict field touches three places: the field here (with its entry in :data:`STORED`, if
it is stored), the column in ``db/models/`` with its migration, and nothing else: the worker and
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
# A second opinion's combined label when the two models disagree by more than the setting allows.
INCONCLUSIVE = "inconclusive"
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
    "provenance",
    "second_opinion",
    "explanation",
    "faces_found",
    "faces_judged",
    "faces_skipped",
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
    "faces_found",
    "faces_judged",
    "faces_skipped",
    "faces",
    "media",
    "duration_s",
    "peak_t",
    "frames",
    "provenance",
    "second_opinion",
    "explanation",
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
class Provenance:
    """What a source declares about where it came from, read beside the model's score and never
    changing it (:mod:`worker.inference.provenance` reads it; docs/trust.md says how to use it).

    ``manifest``: a C2PA manifest store is embedded. ``signature_valid``: its active manifest's
    signature and hashes check out (True), fail (False, ``signature_errors`` say which C2PA checks), or
    there is nothing to check (None). Valid means intact since signing by the certificate in
    ``signer``; it does not mean the signer is on a trust list. ``claim_generator``: the software that
    made the manifest; ``actions``: its active manifest's action names (``c2pa.created``, ...).
    ``digital_source_type``: the IPTC digital source type declared (the vocabulary's short name, e.g.
    ``trainedAlgorithmicMedia``), by ``declared_by`` (``c2pa`` or ``xmp``). ``declared_ai``: True when
    that type is generated media, False when it is a capture, None when nothing is declared.
    ``software``: EXIF Software (or PNG Software, or XMP CreatorTool). ``error``: what could not be
    read (over a cap, unreadable); the other fields say what could."""

    manifest: bool = False
    signature_valid: bool | None = None
    signature_errors: tuple[str, ...] = ()
    signer: str | None = None
    claim_generator: str | None = None
    actions: tuple[str, ...] = ()
    digital_source_type: str | None = None
    declared_by: str | None = None
    declared_ai: bool | None = None
    software: str | None = None
    error: str | None = None

    def output(self) -> dict[str, Any]:
        """As printed, stored (the verdict's ``provenance`` JSON) and sent in webhooks."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["signature_errors"] = list(self.signature_errors)
        out["actions"] = list(self.actions)
        return out

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> Provenance:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in stored.items() if k in known}
        for name in ("signature_errors", "actions"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)


@dataclass(frozen=True)
class Heatmap:
    """Where in one judged region the model saw its evidence (``dfscan scan --explain``,
    ``DFSCAN_EXPLAIN``): ``grid`` rows of cells in [0, 1] over the region as the model saw it (one cell
    per ViT patch: 14 x 14 for the shipped model), 1 at the strongest; ``box`` what the grid covers,
    ``(x, y, w, h)`` in pixels of the image: a face's square crop with its margin (around the face's
    own box), or None for the whole image. Method: gradient x input
    (:mod:`worker.inference.model.explain`). ``t``: for a clip (a video, an animated image), the time
    in seconds of the frame explained, its most suspicious one (None for a still image)."""

    box: tuple[int, int, int, int] | None
    grid: tuple[tuple[float, ...], ...]
    t: float | None = None

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": None if self.box is None else list(self.box)}
        if self.t is not None:
            out["t"] = self.t
        out["grid"] = [list(row) for row in self.grid]
        return out

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> Heatmap:
        box = stored.get("box")
        x, y, w, h = (int(v) for v in box) if box else (0, 0, 0, 0)
        t = stored.get("t")
        return cls(
            (x, y, w, h) if box else None,
            tuple(tuple(float(v) for v in row) for row in stored["grid"]),
            None if t is None else float(t),
        )


@dataclass(frozen=True)
class SecondOpinion:
    """A second model's p(fake) for the whole image (``DFSCAN_SECOND_MODEL``) and the rule that combines
    it with the verdict's own score, which it never replaces (:func:`combine`)."""

    model_version: str
    fake_score: float
    combined_score: float | None
    combined_label: str
    max_disagreement: float

    def output(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> SecondOpinion:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


def combine(
    first: float, second: float, *, threshold: float, max_disagreement: float, model_version: str
) -> SecondOpinion:
    """The documented rule: when the two p(fake) differ by more than ``max_disagreement`` the combined
    label is ``inconclusive`` (no combined score: a person looks); else the combined score is their
    mean, labelled by the verdict's threshold."""
    if abs(first - second) > max_disagreement:
        return SecondOpinion(model_version, second, None, INCONCLUSIVE, max_disagreement)
    mean = (first + second) / 2
    return SecondOpinion(model_version, second, mean, label_for(mean, threshold), max_disagreement)


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
class Preview:
    """A small JPEG of what was judged (worker/inference/images/previews.py): a still image's preview
    (``t`` None) or a sampled frame's thumbnail at ``t`` seconds. Stored in ``verdict_previews`` for the
    review console; never part of the printed verdict."""

    t: float | None
    jpeg: bytes


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
    second_opinion: SecondOpinion | None = None
    faces_found: int | None = None
    faces_judged: int | None = None
    faces_skipped: Mapping[str, int] | None = None


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
    # Faces on: how many faces the detector found (over all sampled frames of a clip), how many were
    # judged, and the rest by reason (low_score, implausible, too_small, over_cap; see
    # worker/inference/faces/screen.py). None when faces are off.
    faces_found: int | None = None
    faces_judged: int | None = None
    faces_skipped: Mapping[str, int] | None = None
    # Videos: media "video", the duration, the most suspicious moment and every sampled frame.
    media: str = IMAGE
    duration_s: float | None = None
    peak_t: float | None = None
    frames: tuple[Frame, ...] | None = None
    # What the source declares about its origin (C2PA, IPTC, EXIF): beside the score, never in it.
    provenance: Provenance | None = None
    # A second model's score for the whole image and the combined reading (DFSCAN_SECOND_MODEL).
    second_opinion: SecondOpinion | None = None
    # One heatmap per judged region of a still image, when explanations were asked for.
    explanation: tuple[Heatmap, ...] | None = None
    # Perceptual hashes (docs/near-duplicates.md): every frame's, and an image's own PDQ and quality (a
    # quality under DFSCAN_HASH_QUALITY_FLOOR is stored but never matched).
    hashes: tuple[FrameHash, ...] = ()
    # A near-duplicate of an earlier verdict of the same tenant and model version: that job's id and the
    # Hamming distance; the label and score are that verdict's.
    near_duplicate_of: str | None = None
    near_distance: int | None = None
    # Hash bank entries the source matched (any bank that forces a label has set ``label``).
    matches: tuple[BankMatch, ...] = ()
    # Small JPEGs of the judged pixels for the review console (a preview, or a clip's frame thumbnails).
    previews: tuple[Preview, ...] = ()
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
        row["provenance"] = None if self.provenance is None else self.provenance.output()
        row["second_opinion"] = None if self.second_opinion is None else self.second_opinion.output()
        row["explanation"] = None if self.explanation is None else [h.output() for h in self.explanation]
        row["matches"] = [match.output() for match in self.matches] or None
        return row

    def hash_rows(self) -> list[dict[str, Any]]:
        """The ``verdict_hashes`` rows of this verdict (the caller adds the job, tenant and model version)."""
        return [
            {"seq": seq, "t": h.t, "pdq": bytes.fromhex(h.pdq), "quality": h.quality}
            for seq, h in enumerate(self.hashes)
        ]

    def preview_rows(self) -> list[dict[str, Any]]:
        """The ``verdict_previews`` rows of this verdict (the caller adds the job), in time order."""
        return [{"seq": seq, "t": p.t, "jpeg": p.jpeg} for seq, p in enumerate(self.previews)]

    def face_rows(self) -> list[dict[str, Any]]:
        """The ``verdict_faces`` rows of this verdict, largest face first."""
        return [face.row() for face in self.faces]

    def output(self) -> dict[str, Any]:
        """The public JSON object of this verdict (keys :data:`OUTPUT`)."""
        out = {name: getattr(self, name) for name in OUTPUT}
        out["faces"] = [face.output(self.threshold) for face in self.faces]
        out["faces_skipped"] = None if self.faces_skipped is None else dict(self.faces_skipped)
        out["frames"] = (
            None if self.frames is None else [frame.output(self.threshold) for frame in self.frames]
        )
        out["provenance"] = None if self.provenance is None else self.provenance.output()
        out["second_opinion"] = None if self.second_opinion is None else self.second_opinion.output()
        out["explanation"] = None if self.explanation is None else [h.output() for h in self.explanation]
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
        if isinstance(stored.get("provenance"), Mapping):
            stored["provenance"] = Provenance.from_stored(stored["provenance"])
        if isinstance(stored.get("second_opinion"), Mapping):
            stored["second_opinion"] = SecondOpinion.from_stored(stored["second_opinion"])
        if isinstance(stored.get("explanation"), list):
            stored["explanation"] = tuple(Heatmap.from_stored(h) for h in stored["explanation"])
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
