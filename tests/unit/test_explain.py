"""Explanation heatmaps claim to show where the evidence is. The test of that claim: a tiny ViT trained
here, briefly, to tell images with a region pasted from a different image from untouched ones; on new
images the heatmap's largest cell is the pasted patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from dfscan.verdicts import Heatmap
from tests.fixtures.models import REAL_FAKE
from worker.inference.annotate import Pictures, overlay
from worker.inference.faces.crops import Face, FacePolicy, crop_box
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.explain import explainable, heatmap, peak
from worker.inference.sources.read import SourcePolicy

SIDE, PATCH = 32, 8
CELLS = SIDE // PATCH


def _smooth(rng: np.random.Generator) -> np.ndarray:
    """A 'real' image: a random colour gradient (values in [-1, 1], CHW)."""
    ys, xs = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = rng.uniform(-0.8, 0.8, size=(3, 1, 1))
    slope = rng.uniform(-0.5, 0.5, size=(3, 2))
    return (base + slope[:, :1, None] * ys + slope[:, 1:, None] * xs).astype(np.float32)


def _pasted(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """A smooth image with one patch-aligned 8 x 8 region pasted from a different (noisy) image."""
    image = _smooth(rng)
    donor = rng.uniform(-1, 1, size=(3, SIDE, SIDE)).astype(np.float32)
    r, c = int(rng.integers(0, CELLS)), int(rng.integers(0, CELLS))
    y, x = r * PATCH, c * PATCH
    image[:, y : y + PATCH, x : x + PATCH] = donor[:, y : y + PATCH, x : x + PATCH]
    return image, (r, c)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIDE,
        patch_size=PATCH,
        id2label=REAL_FAKE,
        label2id={v: k for k, v in REAL_FAKE.items()},
    )
    model = ViTForImageClassification(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(400):  # a few seconds on one CPU thread
        batch = [_smooth(rng) for _ in range(16)] + [_pasted(rng)[0] for _ in range(16)]
        labels = torch.tensor([0] * 16 + [1] * 16)
        loss = torch.nn.functional.cross_entropy(
            model(pixel_values=torch.from_numpy(np.stack(batch))).logits, labels
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    path = tmp_path_factory.mktemp("paste-detector")
    model.eval().save_pretrained(path)
    ViTImageProcessorPil(
        size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    return load_classifier(str(path))


def test_the_heatmap_peaks_on_the_pasted_region(detector: Classifier) -> None:
    rng = np.random.default_rng(123)
    tests = [_pasted(rng) for _ in range(20)]
    scores = detector.predict(torch.from_numpy(np.stack([image for image, _ in tests])))
    real = detector.predict(torch.from_numpy(np.stack([_smooth(rng) for _ in range(20)])))
    assert sum(p >= 0.5 for p in scores) >= 16 and sum(p < 0.5 for p in real) >= 16, "the detector learnt it"

    hits = 0
    for image, where in tests:
        grid = heatmap(detector, torch.from_numpy(image))
        assert len(grid) == CELLS and all(len(row) == CELLS for row in grid)
        assert max(max(row) for row in grid) == 1.0 and min(min(row) for row in grid) >= 0.0
        hits += peak(grid) == where
    # Chance is 1 in 16 per image.
    assert hits >= 17, f"the heatmap peaked on the pasted patch in {hits} of 20 images"


def test_a_model_without_gradients_is_not_explained(detector: Classifier) -> None:
    assert explainable(detector)
    frozen = Classifier(**{**detector.__dict__, "int8": True})
    assert not explainable(frozen)
    with pytest.raises(ValueError, match="cannot be explained"):
        heatmap(frozen, torch.zeros(3, SIDE, SIDE))


def test_the_judge_explains_each_region_only_when_asked(tmp_path: Path, detector: Classifier) -> None:
    rng = np.random.default_rng(11)  # one of the images the heatmap gets right (not all are: see above)
    image, (r, c) = _pasted(rng)
    path = tmp_path / "pasted.png"
    Image.fromarray(((image.transpose(1, 2, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)).save(path)
    sources = SourcePolicy(allowed_roots=(tmp_path,))
    asked = Judge(detector, sources=sources, images=ImagePolicy(), explain=True)
    plain = Judge(detector, sources=sources, images=ImagePolicy())
    try:
        explained, unexplained = asked.judge(str(path)), plain.judge(str(path))
    finally:
        asked.close()
        plain.close()

    assert explained.done and unexplained.done, (explained.error, unexplained.error)
    assert unexplained.explanation is None
    assert explained.fake_score == pytest.approx(unexplained.fake_score, abs=1e-6)  # never in the score
    assert explained.model_version == unexplained.model_version
    assert explained.explanation is not None and len(explained.explanation) == 1
    (heat,) = explained.explanation
    assert heat.box is None and peak(heat.grid) == (r, c)
    out = explained.output()["explanation"]
    assert out[0]["box"] is None and len(out[0]["grid"]) == CELLS


def test_the_overlay_reddens_where_the_heatmap_is_hot() -> None:
    image = Image.new("RGB", (80, 40), (0, 120, 0))
    grid = ((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))  # hot at the bottom right
    drawn = overlay(image, [Heatmap(None, grid), Heatmap((0, 0, 20, 20), ((1.0,),))])

    assert drawn.getpixel((75, 37))[0] > 120 and drawn.getpixel((40, 5)) == (0, 120, 0)
    assert drawn.getpixel((10, 10))[0] > 120  # the second map, over its own box
    assert image.getpixel((75, 37)) == (0, 120, 0)  # drawn on a copy


def test_each_face_gets_a_heatmap_over_its_crop_and_annotate_draws_them(
    tmp_path: Path, detector: Classifier
) -> None:
    faces = [Face((10, 10, 40, 40), 0.99), Face((120, 20, 50, 50), 0.98)]

    class Fixed:
        version = "fixed"

        def detect(self, images: list[Image.Image]) -> list[list[Face]]:
            return [list(faces) for _ in images]

    path = tmp_path / "two.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)).save(path)
    judge = Judge(
        detector,
        sources=SourcePolicy(allowed_roots=(tmp_path,)),
        images=ImagePolicy(),
        faces=FacePolicy("auto", Fixed(), margin=0.3, min_face_px=8),  # type: ignore[arg-type]
        explain=True,
    )
    pictures = Pictures()
    try:
        verdict = judge.judge(str(path), observe=pictures)
    finally:
        judge.close()

    assert verdict.done and verdict.judged_on == "faces", verdict.error
    assert verdict.explanation is not None and len(verdict.explanation) == 2
    for heat, face in zip(
        sorted(verdict.explanation, key=lambda h: h.box or ()),
        sorted(faces, key=lambda f: f.box),
        strict=True,
    ):
        left, top, right, bottom = crop_box((200, 120), face, 0.3)
        assert heat.box == (left, top, right - left, bottom - top)
        assert len(heat.grid) == CELLS and max(max(row) for row in heat.grid) == 1.0
    drawn = pictures.picture(verdict)
    assert drawn is not None and drawn.size == (200, 120)
