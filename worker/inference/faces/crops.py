"""Faces: find them, choose them, crop them as the checkpoints were trained.

Both checkpoints dfscan serves were trained on 256x256 crops of faces, so a scene (a selfie with
background, a group photo) is judged on its faces: detect, keep the largest few, crop a square with a
margin around each, and let the checkpoint's own processor resize the crop.

Detectors are pluggable by name, like the model runtimes: a loader registered under a name
(``DFSCAN_FACE_DETECTOR``) takes ``(device, threads)`` and returns an object with ``detect(images)`` and
a ``version`` that names the detector and its settings (stored with every verdict judged on faces, so the
duplicate cache never mixes faces and whole-image scores, or two detectors).

Pure: torch, Pillow and numpy only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image

from dfscan.exceptions import ModelLoadError


@dataclass(frozen=True)
class Face:
    """A detected face: ``box`` is ``(x, y, w, h)`` in pixels of the EXIF-oriented original image;
    ``score`` is the detector's confidence in [0, 1]; ``landmarks``, when the detector gives them, the
    five points left eye, right eye, nose, left and right mouth corner as ``(x, y)`` in the same pixels."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = field(default=None, compare=False)

    @property
    def side(self) -> int:
        """The shorter side of the box, in pixels: what ``min_face_px`` is compared with."""
        return min(self.box[2], self.box[3])

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


class FaceDetector(Protocol):
    """What a registered loader returns."""

    version: str

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """One list of faces per image (RGB, EXIF orientation already applied), in the image's pixels."""
        ...


FaceDetectorLoader = Callable[[torch.device, "int | None"], FaceDetector]

_REGISTRY: dict[str, FaceDetectorLoader] = {}
# Built-in detectors: the module that registers each name, imported on first use (so the weights
# package is only needed by whoever picks that detector).
_BUILTIN: dict[str, str] = {"mtcnn": "worker.inference.faces.mtcnn"}


def register_face_detector(name: str) -> Callable[[FaceDetectorLoader], FaceDetectorLoader]:
    """Decorator: register ``loader(device, threads) -> FaceDetector`` under ``name``."""

    def wrap(loader: FaceDetectorLoader) -> FaceDetectorLoader:
        _REGISTRY[name] = loader
        return loader

    return wrap


def face_detector_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def load_face_detector(
    name: str, device: torch.device | str = "cpu", threads: int | None = None
) -> FaceDetector:
    """Load the detector registered as ``name`` on ``device``. Raises ModelLoadError for an unknown name or
    a detector whose package or weights are missing."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    loader = _REGISTRY.get(name)
    if loader is None:
        raise ModelLoadError(
            f"unknown face detector {name!r}; the registered ones are {face_detector_names()}"
        )
    return loader(torch.device(device), threads)


def select_faces(faces: Sequence[Face], max_faces: int, min_face_px: int) -> list[Face]:
    """The faces worth judging: none whose shorter side is under ``min_face_px``, at most ``max_faces``,
    largest first (ties: higher detector score first, then top-left first, so the order is stable)."""
    if max_faces <= 0:
        return []
    big = [f for f in faces if f.side >= min_face_px]
    big.sort(key=lambda f: (-f.area, -f.score, f.box[1], f.box[0]))
    return big[:max_faces]


def crop_box(size: tuple[int, int], face: Face, margin: float = 0.3) -> tuple[int, int, int, int]:
    """The crop around ``face`` as ``(left, top, right, bottom)``: a square centred on the face, its side the
    face's longer side plus ``margin`` of it on each side (0.3: the DFDC winner's margin), clipped to the
    image (so a face at the border gets a crop cut by the border; it is never empty)."""
    width, height = size
    x, y, w, h = face.box
    side = max(w, h) * (1.0 + 2.0 * max(0.0, margin))
    cx, cy = x + w / 2.0, y + h / 2.0
    left = max(0, min(width - 1, math.floor(cx - side / 2.0)))
    top = max(0, min(height - 1, math.floor(cy - side / 2.0)))
    right = max(left + 1, min(width, math.ceil(cx + side / 2.0)))
    bottom = max(top + 1, min(height, math.ceil(cy + side / 2.0)))
    return left, top, right, bottom


def square_crop(image: Image.Image, face: Face, margin: float = 0.3) -> Image.Image:
    """The crop of ``image`` around ``face`` (see :func:`crop_box`), a new image."""
    return image.crop(crop_box(image.size, face, margin))


FACE_MODES = ("auto", "require", "off")


@dataclass(frozen=True)
class FacePolicy:
    """How a Judge uses faces (``DFSCAN_FACES`` auto or require; off means no FacePolicy at all):
    the loaded detector, the crop margin, how many faces at most, how small at least, and the lowest
    detector score a face is kept with (:mod:`worker.inference.faces.screen`)."""

    mode: str
    detector: FaceDetector
    margin: float = 0.3
    max_faces: int = 16
    min_face_px: int = 24
    min_score: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "require"):
            raise ValueError(f"a FacePolicy's mode is auto or require, got {self.mode!r} (off: no policy)")

    @property
    def version(self) -> str:
        """Appended to the model version of every verdict made under this policy (``+faces:...``), so
        the duplicate cache never answers across modes, detectors or crop settings."""
        return (
            f"faces:{self.mode}:{self.detector.version}"
            f":margin={self.margin:g},min={self.min_face_px},max={self.max_faces}"
            f",score={self.min_score:g}"
        )
