"""Image to model input: the checkpoint's own preprocessing, done in one resize and one fused tensor op.

The numbers come from the checkpoint's ``preprocessor_config.json`` (what the model was trained with),
so serving cannot drift from training. The arithmetic matches ``transformers``' PIL image processor
(``ViTImageProcessorPil``): Pillow resize with the checkpoint's resample filter, then
``(x * rescale_factor - mean) / std``, here fused into ``x * (factor / std) + (-mean / std)`` on a float32
tensor made straight from the image buffer. ``tests/unit/test_preprocess.py`` holds the two to within
1e-5.

Two resize schemes are supported, the ones ViT-style checkpoints use:

- ``size: {height, width}`` (ViTImageProcessor's default, 224x224): resize to exactly that;
- ``size: {shortest_edge}`` with ``do_center_crop`` and ``crop_size: {height, width}`` (DeiT, BEiT and
  other timm-style processors): resize keeping the aspect ratio, then crop the centre. Only the crop's
  window of the source is resampled (:mod:`worker.inference.images.resizing`), so an extreme aspect ratio costs
  no more than a square image.

Anything else (``shortest_edge`` without a crop gives every image its own shape and cannot be batched;
``crop_pct``, ``longest_edge``, padding) is refused with MODEL_LOAD_FAILED rather than served differently
from how it was trained.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dfscan.exceptions import ModelLoadError
from worker.inference.hashing.pdq import Pdq
from worker.inference.images import resizing
from worker.inference.images.decode import ImagePolicy, to_rgb

logger = logging.getLogger(__name__)

CONFIG_NAME = "preprocessor_config.json"

# ViTImageProcessor's defaults, used for keys a config leaves out.
_DEFAULT_SIZE = {"height": 224, "width": 224}
_DEFAULT_RESAMPLE = int(Image.Resampling.BILINEAR)
_DEFAULT_MEAN = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN
_DEFAULT_STD = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_STD

# Keys whose presence (with a truthy value) means a pipeline this module does not reproduce.
_UNSUPPORTED_KEYS = ("crop_pct", "do_pad", "longest_edge")


@dataclass(frozen=True)
class PreprocessConfig:
    """How to turn an RGB image into a (3, H, W) float32 tensor.

    ``size`` is the output (height, width). With ``shortest_edge`` set, the image is first resized so
    its shorter side is ``shortest_edge`` (aspect ratio kept), then centre-cropped to ``size``.
    """

    size: tuple[int, int]
    resample: int
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shortest_edge: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Build from a ``preprocessor_config.json`` dict (ViTImageProcessor keys); ModelLoadError if the
        config asks for a pipeline this module does not implement."""
        for key in _UNSUPPORTED_KEYS:
            if d.get(key):
                raise ModelLoadError(
                    f"{CONFIG_NAME}: {key}={d[key]!r} is not supported by dfscan's preprocessing"
                )
        raw_size = d.get("size", _DEFAULT_SIZE)
        if isinstance(raw_size, int):  # old configs: one number means a square
            raw_size = {"height": raw_size, "width": raw_size}
        if not isinstance(raw_size, Mapping):
            raise ModelLoadError(f"{CONFIG_NAME}: size must be a dict or an int, got {raw_size!r}")
        shortest_edge: int | None = None
        if "height" in raw_size and "width" in raw_size:
            if d.get("do_center_crop"):
                raise ModelLoadError(
                    f"{CONFIG_NAME}: do_center_crop after a fixed-size resize is not supported"
                )
            size = (int(raw_size["height"]), int(raw_size["width"]))
        elif set(raw_size) == {"shortest_edge"}:
            crop = d.get("crop_size")
            if not d.get("do_center_crop") or not isinstance(crop, Mapping):
                raise ModelLoadError(
                    f"{CONFIG_NAME}: size={{'shortest_edge'}} without do_center_crop and crop_size gives every "
                    "image its own shape; batches need one"
                )
            shortest_edge = int(raw_size["shortest_edge"])
            size = (int(crop["height"]), int(crop["width"]))
        else:
            raise ModelLoadError(f"{CONFIG_NAME}: unsupported size {dict(raw_size)!r}")
        if min(size) <= 0 or (shortest_edge is not None and shortest_edge <= 0):
            raise ModelLoadError(f"{CONFIG_NAME}: sizes must be positive, got {dict(raw_size)!r}")
        return cls(
            size=size,
            resample=int(d.get("resample", _DEFAULT_RESAMPLE)),
            do_resize=bool(d.get("do_resize", True)),
            do_rescale=bool(d.get("do_rescale", True)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_normalize=bool(d.get("do_normalize", True)),
            mean=_triple(d.get("image_mean", _DEFAULT_MEAN), "image_mean"),
            std=_triple(d.get("image_std", _DEFAULT_STD), "image_std"),
            shortest_edge=shortest_edge,
        )

    @classmethod
    def from_pretrained(cls, ref: str, revision: str | None = None) -> PreprocessConfig:
        """Read ``preprocessor_config.json`` from a local checkpoint directory, or from a hub id through
        the ``transformers`` file cache (offline mode and the cache are honoured)."""
        local = Path(ref)
        if local.is_dir():
            path = local / CONFIG_NAME
        else:
            from transformers.utils import cached_file

            try:
                resolved = cached_file(ref, CONFIG_NAME, revision=revision)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot fetch {CONFIG_NAME} for {ref!r}: {exc}") from exc
            if resolved is None:
                raise ModelLoadError(f"{ref!r} has no {CONFIG_NAME}")
            path = Path(resolved)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{ref!r} has no {CONFIG_NAME} (looked at {path})") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path} does not hold a JSON object")
        cfg = cls.from_dict(data)
        logger.debug("preprocessing for %s: %s", ref, cfg)
        return cfg

    @property
    def resize(self) -> resizing.Resize:
        """The geometric half of this config (torch-free, for decode children)."""
        return resizing.Resize(
            size=self.size, resample=self.resample, do_resize=self.do_resize, shortest_edge=self.shortest_edge
        )

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) a JPEG may be drafted to without changing what resize sees much."""
        if not self.do_resize:
            return None
        if self.shortest_edge is not None:
            return (self.shortest_edge, self.shortest_edge)
        return (self.size[1], self.size[0])


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ModelLoadError(f"{CONFIG_NAME}: {name} needs 3 values (RGB), got {list(values)}")
    return values[0], values[1], values[2]


@functools.lru_cache(maxsize=16)
def _affine(cfg: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Read-only, cached per config: per-channel (scale, bias) with out = x * scale + bias, computed in float64 then stored as float32."""
    factor = cfg.rescale_factor if cfg.do_rescale else 1.0
    mean = (
        torch.tensor(cfg.mean, dtype=torch.float64)
        if cfg.do_normalize
        else torch.zeros(3, dtype=torch.float64)
    )
    std = (
        torch.tensor(cfg.std, dtype=torch.float64) if cfg.do_normalize else torch.ones(3, dtype=torch.float64)
    )
    scale = (factor / std).to(torch.float32).view(3, 1, 1)
    bias = (-mean / std).to(torch.float32).view(3, 1, 1)
    return scale, bias


def to_tensor(image: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """An image (any mode; RGB expected) to a contiguous float32 tensor of shape (3, H, W)."""
    if image.mode != "RGB":
        image = to_rgb(image)
    return _from_resized(resizing.apply(image, cfg.resize), cfg)


def _from_resized(image: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    width, height = image.size
    if cfg.shortest_edge is None and cfg.do_resize and (height, width) != cfg.size:
        raise RuntimeError(f"resize gave {height}x{width}, expected {cfg.size[0]}x{cfg.size[1]}")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    chw = (
        pixels.view(height, width, 3)
        .permute(2, 0, 1)
        .to(torch.float32, memory_format=torch.contiguous_format)
    )
    scale, bias = _affine(cfg)
    return torch.addcmul(bias, chw, scale)


def load_pixels(
    data: bytes, cfg: PreprocessConfig, policy: ImagePolicy, *, draft: bool | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode ``data`` and turn it into model input. Returns the tensor and the original (width, height)
    as displayed. JPEGs are drafted down towards the model size when ``draft`` is True, or, with
    ``draft=None``, when ``policy.jpeg_draft`` says so (off by default: exact scores).

    The resize runs inside the decode's memory reservation; with ``policy.decode_processes`` decode and
    resize run in the decode pool (see :mod:`worker.inference.images.decode_pool`) and only the model-sized RGB
    image comes back."""
    use_draft = policy.jpeg_draft if draft is None else draft
    draft_size = cfg.draft_size if use_draft else None
    if policy.decode_processes > 0:
        from worker.inference.images.decode_pool import run_isolated

        image, original = run_isolated(policy, resizing.decode_resized, data, policy, cfg.resize, draft_size)
    else:
        image, original = resizing.decode_resized(data, policy, cfg.resize, draft_size)
    return _from_resized(image, cfg), original


def load_pixels_hashed(
    data: bytes, cfg: PreprocessConfig, policy: ImagePolicy, *, draft: bool | None = None
) -> tuple[torch.Tensor, tuple[int, int], Pdq, tuple[bytes, ...], bytes | None]:
    """:func:`load_pixels`, plus the PDQ hash of the decoded pixels and its seven dihedral variants, and
    the JPEG preview (computed where the decode runs, from the pixels it already holds: no second decode)."""
    use_draft = policy.jpeg_draft if draft is None else draft
    draft_size = cfg.draft_size if use_draft else None
    if policy.decode_processes > 0:
        from worker.inference.images.decode_pool import run_isolated

        image, original, pdq, variants, preview = run_isolated(
            policy, resizing.decode_resized_hashed, data, policy, cfg.resize, draft_size
        )
    else:
        image, original, pdq, variants, preview = resizing.decode_resized_hashed(
            data, policy, cfg.resize, draft_size
        )
    return _from_resized(image, cfg), original, pdq, variants, preview
