"""Loading labelled data: folders and saved datasets, splits, fingerprints, and bad data failing early."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dfscan.exceptions import TrainingDataError
from tests.fixtures.datasets import write_image_folder, write_saved_dataset, write_split_folder
from worker.training.data import data_fingerprint, load_evaluation_data, load_labelled_data


def test_folder_with_synonym_names_is_split_stratified_and_reproducibly(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", 20, class_names=("Realism", "Deepfake"))
    data = load_labelled_data(root, seed=3)
    assert data.counts() == {
        "train": {"Real": 16, "Fake": 16},
        "validation": {"Real": 2, "Fake": 2},
        "test": {"Real": 2, "Fake": 2},
    }
    assert set(data.carved) == {"train", "validation", "test"}
    names = {split: {e.name for e in data.split(split)} for split in data.splits}
    assert not names["train"] & names["test"] and not names["validation"] & names["test"]
    assert all(e.label == 1 for e in data.train if e.name.startswith("Deepfake/"))
    again = load_labelled_data(root, seed=3)
    assert [e.name for e in again.test] == [e.name for e in data.test]
    other = load_labelled_data(root, seed=4)
    assert [e.name for e in other.test] != [e.name for e in data.test]


def test_presplit_folder_is_used_as_is(tmp_path: Path) -> None:
    root = write_split_folder(tmp_path / "d", {"train": 5, "val": 2, "test": 3})
    data = load_labelled_data(root)
    assert data.carved == ()
    assert data.counts()["validation"] == {"Real": 2, "Fake": 2}
    assert data.counts()["test"] == {"Real": 3, "Fake": 3}
    assert load_evaluation_data(root).counts() == {"test": {"Real": 3, "Fake": 3}}


def test_saved_dataset_dict_maps_classlabel_names(tmp_path: Path) -> None:
    root = write_saved_dataset(tmp_path / "hf", 10, splits={"train": 0.6, "validation": 0.2, "test": 0.2})
    data = load_labelled_data(root)
    counts = data.counts()
    assert sum(sum(c.values()) for c in counts.values()) == 20
    assert sum(c["Fake"] for c in counts.values()) == 10  # Hemg order Fake=0, Real=1 mapped by name
    assert data.carved == ()
    first = data.train[0]
    assert first.read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_single_dataset_is_carved_and_evaluated_whole(tmp_path: Path) -> None:
    root = write_saved_dataset(tmp_path / "hf", 10)
    data = load_labelled_data(root)
    assert data.carved == ("train", "test", "validation")
    assert data.counts()["test"] == {"Real": 1, "Fake": 1}
    whole = load_evaluation_data(root)
    assert whole.counts() == {"all": {"Real": 10, "Fake": 10}}


def test_fingerprint_follows_content_not_location(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "a", 4)
    copy = Path(shutil.copytree(root, tmp_path / "b"))
    assert data_fingerprint(root) == data_fingerprint(copy)
    (copy / "fake" / "extra.png").write_bytes((copy / "fake" / "00004.png").read_bytes())
    assert data_fingerprint(root) != data_fingerprint(copy)
    hf = write_saved_dataset(tmp_path / "hf", 3)
    assert len(data_fingerprint(hf)) == 64 and data_fingerprint(hf) != data_fingerprint(root)


def test_unreadable_images_are_counted_and_skipped(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", 6)
    (root / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "real" / "notes.txt").write_text("not an image, ignored")
    (root / "real" / "empty.jpg").write_bytes(b"")
    data = load_labelled_data(root)
    assert data.unreadable == 2
    assert set(data.unreadable_examples) == {"fake/broken.png", "real/empty.jpg"}
    assert sum(sum(c.values()) for c in data.counts().values()) == 12


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"real": 4, "cats": 4}, "class 'cats' is neither real nor fake"),
        ({"real": 4}, "only one class \\(Real\\)"),
        ({"real": 4, "fake": 0}, "class folder 'fake' has no images"),
        ({"real": 4, "fake": 2}, "class Fake has 2 images; at least 3"),
        ({}, "no class folders"),
    ],
)
def test_bad_folders_fail_with_bad_training_data(
    tmp_path: Path, layout: dict[str, int], message: str
) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for name, n in layout.items():
        (root / name).mkdir()
        if n:
            write_image_folder(tmp_path / f"src_{name}", n)
            for i, f in enumerate(sorted((tmp_path / f"src_{name}" / "real").iterdir())):
                shutil.copy(f, root / name / f"{i}.png")
    with pytest.raises(TrainingDataError, match=message) as info:
        load_labelled_data(root)
    assert info.value.code == "BAD_TRAINING_DATA"


def test_all_unreadable_and_missing_paths_fail(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("real", "fake"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(b"garbage")
    with pytest.raises(TrainingDataError, match="no readable images found \\(2 unreadable\\)"):
        load_labelled_data(root)
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_labelled_data(tmp_path / "missing")


def test_saved_dataset_with_unknown_label_names_fails(tmp_path: Path) -> None:
    root = write_saved_dataset(tmp_path / "hf", 3, names=("cat", "dog"))
    with pytest.raises(TrainingDataError, match="class 'cat' is neither real nor fake"):
        load_labelled_data(root)
