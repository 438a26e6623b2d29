"""Training and evaluation on face crops, made exactly as serving makes them.

``dfscan train --faces`` and ``dfscan evaluate --faces`` run the serving face detector with the serving
margin over every labelled image first: the decoded (EXIF-oriented) image, the detector's faces, the
serving choice (:func:`~worker.inference.faces.screen.choose_faces`: score, landmarks, size, cap) and the serving crop
(:func:`~worker.inference.regions.face_crop`, the function the region road cuts every face with).
Images without a face are counted and skipped, never silently judged whole.

Training takes each image's **largest** face (the datasets' labels are per image; a face-crop dataset
has one face per image); evaluation scores **every** chosen face and takes the maximum, as serving does.
The detector runs once per image here, not once per epoch: an example keeps its image's bytes and its
face (``Example.region``), and the dataset cuts the crop from the decoded image at each read, so memory
does not grow with the dataset and no crop is re-encoded.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image

from dfscan.exceptions import DfscanError
from worker.inference.faces.crops import FaceDetector
from worker.inference.faces.screen import choose_faces
from worker.inference.images.decode import ImagePolicy, decode_image
from worker.inference.regions import face_crop
from worker.training.data import Example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceCropConfig:
    """What the registry records for a version trained on faces, and serving repeats for it."""

    detector: str = "mtcnn"
    margin: float = 0.3
    min_face_px: int = 24
    max_faces: int = 16
    min_score: float = 0.9

    def to_params(self, detector_version: str) -> dict[str, object]:
        return {**asdict(self), "detector_version": detector_version}


@dataclass(frozen=True)
class FaceExamples:
    """The cropped examples (one per face kept), which source image each came from, and the images
    without a face (skipped) or that could not be decoded."""

    examples: list[Example]
    sources: list[str]
    no_face: list[str]
    undecodable: list[str]


def face_examples(
    examples: Sequence[Example],
    detector: FaceDetector,
    cfg: FaceCropConfig,
    *,
    largest_only: bool,
    policy: ImagePolicy | None = None,
    batch_size: int = 8,
) -> FaceExamples:
    """Detect faces in ``examples`` (in batches) and return one cropped example per chosen face.

    ``largest_only`` keeps each image's largest face (training); otherwise up to ``cfg.max_faces``
    (evaluation, which then takes the maximum per source image). A cropped example is named
    ``<name>#face<k>`` and keeps its image's label."""
    policy = policy or ImagePolicy()
    out: list[Example] = []
    sources: list[str] = []
    no_face: list[str] = []
    undecodable: list[str] = []
    limit = 1 if largest_only else cfg.max_faces
    for start in range(0, len(examples), batch_size):
        chunk: list[tuple[Example, Image.Image]] = []
        for example in examples[start : start + batch_size]:
            try:
                chunk.append((example, decode_image(example.read(), policy)))
            except (DfscanError, OSError) as exc:
                log.warning("skipping undecodable image %s: %s", example.name, exc)
                undecodable.append(example.name)
        found = detector.detect([image for _, image in chunk]) if chunk else []
        for (example, _), faces in zip(chunk, found, strict=True):
            chosen = choose_faces(
                faces, max_faces=limit, min_face_px=cfg.min_face_px, min_score=cfg.min_score
            ).chosen
            if not chosen:
                no_face.append(example.name)
                continue
            for k, face in enumerate(chosen):
                out.append(
                    Example(
                        name=f"{example.name}#face{k}",
                        label=example.label,
                        read=example.read,
                        region=functools.partial(face_crop, face=face, margin=cfg.margin),
                    )
                )
                sources.append(example.name)
    log.info(
        "face crops: %d from %d images (%d without a face, %d undecodable)",
        len(out),
        len(examples),
        len(no_face),
        len(undecodable),
    )
    return FaceExamples(out, sources, no_face, undecodable)


def max_per_source(
    sources: Sequence[str], labels: Sequence[int], scores: Sequence[float]
) -> tuple[list[int], list[float]]:
    """Per source image (in first-seen order): its label and the maximum p(fake) over its faces."""
    best: dict[str, tuple[int, float]] = {}
    for source, label, score in zip(sources, labels, scores, strict=True):
        prev = best.get(source)
        best[source] = (label, score if prev is None else max(prev[1], score))
    return [label for label, _ in best.values()], [score for _, score in best.values()]
