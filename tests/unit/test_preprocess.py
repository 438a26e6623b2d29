"""to_tensor against transformers' own PIL image processor, the JPEG draft path, and config loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from dfscan.exceptions import ModelLoadError
from tests.fixtures.corpus import EXPECTED_SIZES, make_corpus, make_image, make_image_bytes
from worker.inference.images.decode import ImagePolicy, decode_image
from worker.inference.model.preprocess import PreprocessConfig, load_pixels, to_tensor

# Measured max abs difference against ViTImageProcessorPil: 1.2e-7 (ViT defaults) and 4.8e-7 (ImageNet
# mean/std, bicubic): float32 rounding only. The bound leaves room for a few ulps on other platforms.
HF_TOLERANCE = 1e-6
# A JPEG drafted at 1/8 scale before the bilinear resize, against the full decode: measured max 0.12 and
# mean 0.003 on the [-1, 1] scale (15 and 0.4 grey levels of 255).
DRAFT_MAX_TOLERANCE = 0.25
DRAFT_MEAN_TOLERANCE = 0.01

POLICY = ImagePolicy()
CROP_CONFIG: dict[str, Any] = {
    "size": {"shortest_edge": 256},
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _reference(processor: ViTImageProcessorPil, image: Image.Image) -> np.ndarray:
    return np.asarray(processor(image, return_tensors="np")["pixel_values"][0])


def test_default_config_is_vit_processor_defaults() -> None:
    cfg = PreprocessConfig.from_dict(ViTImageProcessorPil().to_dict())
    assert cfg == PreprocessConfig.from_dict({})
    assert cfg.size == (224, 224) and cfg.resample == 2 and cfg.shortest_edge is None
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert cfg.rescale_factor == pytest.approx(1 / 255)


@pytest.mark.parametrize("size", [(64, 48), (500, 333), (224, 224), (100, 400)])
def test_to_tensor_matches_vit_image_processor(size: tuple[int, int]) -> None:
    processor = ViTImageProcessorPil(size={"height": 224, "width": 160})
    cfg = PreprocessConfig.from_dict(processor.to_dict())
    image = make_image(size, seed=size[0])
    out = to_tensor(image, cfg)
    assert out.dtype == torch.float32 and out.shape == (3, 224, 160) and out.is_contiguous()
    ref = _reference(processor, image)
    assert ref.shape == (3, 224, 160)
    assert float(np.abs(out.numpy() - ref).max()) <= HF_TOLERANCE


@pytest.mark.parametrize("size", [(64, 48), (500, 333), (300, 900)])
def test_shortest_edge_and_centre_crop_match_the_processor(size: tuple[int, int]) -> None:
    processor = ViTImageProcessorPil(**CROP_CONFIG)
    cfg = PreprocessConfig.from_dict(processor.to_dict())
    assert cfg.shortest_edge == 256 and cfg.size == (224, 224) and cfg.resample == 3
    image = make_image(size, seed=7)
    out = to_tensor(image, cfg).numpy()
    assert float(np.abs(out - _reference(processor, image)).max()) <= HF_TOLERANCE


def test_switches_off_rescale_and_normalise() -> None:
    image = make_image((32, 32), seed=1)
    raw = to_tensor(image, PreprocessConfig.from_dict({"do_rescale": False, "do_normalize": False}))
    assert torch.equal(raw, torch.from_numpy(np.array(image.resize((224, 224), 2))).permute(2, 0, 1).float())
    kept = to_tensor(image, PreprocessConfig.from_dict({"do_resize": False, "do_normalize": False}))
    assert kept.shape == (3, 32, 32) and float(kept.max()) <= 1.0 and float(kept.min()) >= 0.0


def test_every_decodable_corpus_file_preprocesses(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    processor = ViTImageProcessorPil()
    cfg = PreprocessConfig.from_dict(processor.to_dict())
    for name in EXPECTED_SIZES:
        data = corpus[name][0].read_bytes()
        pixels, original = load_pixels(data, cfg, POLICY)
        assert original == EXPECTED_SIZES[name], name
        assert pixels.shape == (3, 224, 224), name
        ref = _reference(processor, decode_image(data, POLICY))
        assert float(np.abs(pixels.numpy() - ref).max()) <= HF_TOLERANCE, name


def test_large_jpeg_is_fully_decoded_by_default_as_the_image_processor_does() -> None:
    """The default policy gives exactly what transformers' processor gives on the full decode (no draft),
    so dfscan's p(fake) equals the seed pipeline's on large photos too."""
    data = make_image_bytes("JPEG", size=(3000, 2000), seed=1)
    cfg = PreprocessConfig.from_dict({})
    assert not POLICY.jpeg_draft
    pixels, original = load_pixels(data, cfg, POLICY)
    assert original == (3000, 2000)
    reference = _reference(ViTImageProcessorPil(), decode_image(data, POLICY))
    assert float(np.abs(pixels.numpy() - reference).max()) <= HF_TOLERANCE
    drafted, _ = load_pixels(data, cfg, ImagePolicy(jpeg_draft=True))
    assert float((drafted - pixels).abs().max()) > 0.0  # the opt-in draft path is a different decode


def test_drafted_large_jpeg_is_close_to_the_full_decode() -> None:
    data = make_image_bytes("JPEG", size=(3000, 2000), seed=1)
    cfg = PreprocessConfig.from_dict({})
    drafted, original = load_pixels(data, cfg, ImagePolicy(jpeg_draft=True))
    full, original_full = load_pixels(data, cfg, POLICY, draft=False)
    assert original == original_full == (3000, 2000)
    assert decode_image(data, POLICY, draft_size=cfg.draft_size).size == (375, 250)  # 1/8 scale, >= 224
    diff = (drafted - full).abs()
    assert float(diff.max()) <= DRAFT_MAX_TOLERANCE
    assert float(diff.mean()) <= DRAFT_MEAN_TOLERANCE
    assert float(diff.max()) > 0.0  # the draft path really was taken


def test_from_pretrained_reads_a_saved_processor(tmp_path: Path) -> None:
    ViTImageProcessorPil(**CROP_CONFIG).save_pretrained(tmp_path)
    cfg = PreprocessConfig.from_pretrained(str(tmp_path))
    assert cfg.shortest_edge == 256 and cfg.size == (224, 224)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)


def test_from_pretrained_errors_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no preprocessor_config.json"):
        PreprocessConfig.from_pretrained(str(tmp_path))
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        PreprocessConfig.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"size": {"shortest_edge": 224}}, "its own shape"),
        ({"crop_pct": 0.875}, "crop_pct"),
        ({"size": {"height": 256, "width": 256}, "do_center_crop": True}, "do_center_crop"),
        ({"size": {"longest_edge": 224}}, "unsupported size"),
        ({"image_mean": [0.5, 0.5]}, "3 values"),
    ],
)
def test_configs_that_cannot_be_reproduced_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        PreprocessConfig.from_dict(config)


def test_legacy_and_scalar_values() -> None:
    cfg = PreprocessConfig.from_dict(json.loads('{"size": 384, "image_mean": 0.5, "image_std": 0.25}'))
    assert cfg.size == (384, 384) and cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.25, 0.25, 0.25)
