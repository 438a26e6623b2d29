"""Training and evaluation on face crops made as serving makes them; images without a face counted and skipped."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from dfscan.exceptions import TrainingDataError
from tests.fixtures.faces import face_scene, write_face_folder
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from worker.inference.faces.crops import crop_box, load_face_detector, select_faces
from worker.training.data import Example, load_labelled_data
from worker.training.evaluate import evaluate_model, score_face_examples
from worker.training.faces import FaceCropConfig, face_examples, max_per_source
from worker.training.train import MANIFEST, TrainConfig, face_data, fine_tune

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")

CROP = FaceCropConfig(detector="mtcnn", margin=0.3, min_face_px=32, max_faces=8)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mtcnn():  # type: ignore[no-untyped-def]
    return load_face_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces") / "data"
    return write_face_folder(
        root, {"train": 3, "validation": 2, "test": 2}, face_free={"train": 1, "test": 1}
    )


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_each_image_becomes_its_face_crops_and_faceless_ones_are_listed(mtcnn) -> None:  # type: ignore[no-untyped-def]
    two = face_scene([150, 70], seed=4, size=(640, 480), kind="field")
    none = face_scene([], seed=5, size=(640, 480), kind="field")
    examples = [
        Example("two.png", 1, lambda: png(two.image)),
        Example("none.png", 0, lambda: png(none.image)),
        Example("broken.png", 0, lambda: b"\x89PNG\r\n\x1a\nbroken"),
    ]
    all_faces = face_examples(examples, mtcnn, CROP, largest_only=False)
    assert [e.name for e in all_faces.examples] == ["two.png#face0", "two.png#face1"]
    assert [e.label for e in all_faces.examples] == [1, 1]
    assert all_faces.sources == ["two.png", "two.png"]
    assert (all_faces.no_face, all_faces.undecodable) == (["none.png"], ["broken.png"])
    # the crop is the serving crop of the largest face, losslessly
    face = select_faces(mtcnn.detect([two.image])[0], 8, 32)[0]
    first = all_faces.examples[0]
    assert first.read() == png(two.image) and first.region is not None  # no crop re-encoded
    crop = first.region(two.image)
    left, top, right, bottom = crop_box(two.image.size, face, 0.3)
    assert crop.size == (right - left, bottom - top)
    assert crop.tobytes() == two.image.crop((left, top, right, bottom)).tobytes()
    largest = face_examples(examples, mtcnn, CROP, largest_only=True)
    assert [e.name for e in largest.examples] == ["two.png#face0"]


def test_max_per_source_takes_the_worst_face_of_each_image() -> None:
    labels, scores = max_per_source(["a", "a", "b", "c", "c"], [1, 1, 0, 1, 1], [0.2, 0.9, 0.4, 0.1, 0.3])
    assert (labels, scores) == ([1, 0, 1], [0.9, 0.4, 0.3])


def test_evaluate_on_faces_scores_images_with_a_face_and_counts_the_rest(
    data_root: Path, tmp_path: Path
) -> None:
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE)
    test = load_labelled_data(data_root).test
    labels, scores, skipped, no_face, version = score_face_examples(str(model), test, CROP, device="cpu")
    assert len(test) == 5 and len(labels) == len(scores) == 4
    assert no_face == ["test/real/noface-0.png"] and skipped == []
    assert "+faces:require:mtcnn-facenet-pytorch-2.6(" in version
    metrics = evaluate_model(str(model), test, device="cpu", faces=CROP)
    assert metrics["n"] == 4 and metrics["no_face"] == 1
    assert metrics["model_version"] == version


def test_training_on_faces_crops_every_split_and_records_it(data_root: Path, tmp_path: Path) -> None:
    base = save_tiny_vit(tmp_path / "base", REAL_FAKE)
    data = load_labelled_data(data_root)
    cfg = TrainConfig(
        base_model=str(base),
        output_dir=tmp_path / "run",
        learning_rate=1e-3,
        num_epochs=1,
        train_batch_size=4,
        eval_batch_size=8,
        early_stopping_patience=None,
        augment=None,
        device="cpu",
        faces=CROP,
    )
    result = fine_tune(cfg, data)
    assert result.model_dir is not None and result.faces is not None
    assert result.faces["crops"] == {"train": 6, "validation": 4, "test": 4}
    assert result.faces["no_face"] == {"train": 1, "validation": 0, "test": 1}
    assert result.faces["detector"] == "mtcnn" and result.faces["margin"] == 0.3
    assert result.faces["detector_version"].startswith("mtcnn-facenet-pytorch-2.6(")
    manifest = json.loads((result.model_dir / MANIFEST).read_text())
    assert manifest["faces"] == json.loads(json.dumps(result.faces))


def test_a_split_left_with_one_class_after_cropping_is_refused(tmp_path: Path) -> None:
    root = write_face_folder(tmp_path / "d", {"train": 2, "validation": 1, "test": 1})
    for f in (root / "test" / "fake").iterdir():  # the fake test images lose their faces
        face_scene([], seed=1, size=(320, 240), kind="field").image.save(f)
    with pytest.raises(TrainingDataError, match=r"test split: after face cropping only classes \['Real'\]"):
        face_data(CROP, load_labelled_data(root), device="cpu")
