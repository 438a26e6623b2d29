"""Training augmentations of the seed model, in Pillow (torchvision is not a dependency).

The seed checkpoint was trained with torchvision's random resized crop, random rotation (+-90 degrees)
and random sharpness. Each of them is reproduced here on a PIL image, driven by a ``random.Random`` the
caller passes in, so a run with the same seed sees the same images.

Choices that differ from torchvision's defaults, and why:

- The crop keeps 50-100% of the area (torchvision: 8-100%). Deepfake evidence is often small texture
  detail; an 8% crop of a face is frequently no longer a face, which turns the label into noise.
  The crop is not resized here: the checkpoint's own preprocessing (``to_tensor``) resizes it, exactly as
  at serving time.
- Sharpness draws a factor in [0.5, 2.0] (blur to sharpen) with probability 0.5 instead of one fixed
  factor, so the model does not learn to key on a single sharpening level.
- Horizontal flip (p = 0.5) is added: mirror images are as real or as fake as the originals.
- Rotation keeps the canvas size (``expand=False``) and fills the corners with black, like torchvision.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; set a probability (or degrees) to 0 to switch one off."""

    rotation_degrees: float = 90.0  # uniform in [-d, +d]
    rotation_p: float = 1.0
    sharpness_range: tuple[float, float] = (0.5, 2.0)  # 1.0 = unchanged, <1 blurs, >1 sharpens
    sharpness_p: float = 0.5
    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of the crop
    crop_p: float = 1.0
    hflip_p: float = 0.5
    fill: tuple[int, int, int] = (0, 0, 0)


def random_resized_crop(
    image: Image.Image, rng: random.Random, scale: tuple[float, float], ratio: tuple[float, float]
) -> Image.Image:
    """Crop a random box with area in ``scale`` and aspect in ``ratio`` (log-uniform), like torchvision.

    Ten tries to fit a box; after that the largest centred box within ``ratio`` is taken.
    """
    width, height = image.size
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def augment(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Apply crop, flip, rotation and sharpness (in that order) to an RGB image; return a new image."""
    out = image
    if cfg.crop_p and rng.random() < cfg.crop_p:
        out = random_resized_crop(out, rng, cfg.crop_scale, cfg.crop_ratio)
    if cfg.hflip_p and rng.random() < cfg.hflip_p:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if cfg.rotation_degrees and cfg.rotation_p and rng.random() < cfg.rotation_p:
        angle = rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)
        out = out.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=cfg.fill)
    if cfg.sharpness_p and rng.random() < cfg.sharpness_p:
        out = ImageEnhance.Sharpness(out).enhance(rng.uniform(*cfg.sharpness_range))
    return out
