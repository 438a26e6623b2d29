"""Augmentations are seeded, keep their ranges, and leave images RGB."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.datasets import make_image
from worker.training.augment import AugmentConfig, augment, random_resized_crop


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def test_same_seed_same_image_other_seed_differs() -> None:
    img = make_image(True, random.Random(0), size=48)
    cfg = AugmentConfig()
    a = augment(img, cfg, random.Random("7:0:0"))
    b = augment(img, cfg, random.Random("7:0:0"))
    c = augment(img, cfg, random.Random("7:0:1"))
    assert np.array_equal(_pixels(a), _pixels(b))
    assert a.size != c.size or not np.array_equal(_pixels(a), _pixels(c))
    assert a.mode == "RGB"


@pytest.mark.parametrize("seed", range(20))
def test_crop_keeps_area_and_ratio_in_range(seed: int) -> None:
    img = Image.new("RGB", (200, 100))
    out = random_resized_crop(img, random.Random(seed), (0.5, 1.0), (3 / 4, 4 / 3))
    w, h = out.size
    assert 0.5 * 20000 * 0.97 <= w * h <= 20000 or (w, h) == (133, 100)  # fallback: centred 4:3 box
    assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_switched_off_transforms_change_nothing() -> None:
    img = make_image(False, random.Random(1))
    off = AugmentConfig(rotation_degrees=0, sharpness_p=0, crop_p=0, hflip_p=0)
    assert np.array_equal(_pixels(augment(img, off, random.Random(3))), _pixels(img))
    flip_only = AugmentConfig(rotation_degrees=0, sharpness_p=0, crop_p=0, hflip_p=1.0)
    assert np.array_equal(_pixels(augment(img, flip_only, random.Random(3))), _pixels(img)[:, ::-1])
    rotate = AugmentConfig(sharpness_p=0, crop_p=0, hflip_p=0)
    rotated = augment(img, rotate, random.Random(3))
    assert rotated.size == img.size and not np.array_equal(_pixels(rotated), _pixels(img))
