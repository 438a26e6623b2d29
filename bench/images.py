"""Generate face-sized JPEGs with photo-like statistics for benchmarks.

Random noise would be unrealistically hard to compress and decode; flat colour unrealistically
easy. These images mix a smooth colour field (lighting), a face-like ellipse with soft edges, and
mild sensor noise, saved as quality-90 baseline JPEGs from 256x256 up to 1024x768, so decode and
resize costs resemble uploaded photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(256, 256), (384, 384), (512, 512), (640, 480), (800, 600), (720, 960), (1024, 768)]


def photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic photo: smooth background, a soft-edged oval 'face', and noise."""
    coarse = rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8)
    background = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32
    )
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.18, 0.3), height * rng.uniform(0.25, 0.38)
    inside = np.clip(1.5 - np.hypot((xx - cx) / rx, (yy - cy) / ry), 0.0, 1.0)[..., None]
    skin = rng.uniform([150, 100, 80], [235, 190, 160]).astype(np.float32)
    shading = 0.85 + 0.15 * np.cos((yy - cy) / ry * 2.0)[..., None]
    image = background * (1 - inside) + skin * shading * inside
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_images(directory: Path, count: int, *, seed: int = 0, quality: int = 90) -> list[Path]:
    """Write ``count`` JPEGs into ``directory`` (sizes cycle through SIZES); return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        path = directory / f"img-{i:05d}-{width}x{height}.jpg"
        photo_like(width, height, rng).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths
