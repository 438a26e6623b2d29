"""Labelled Real/Fake images for training and evaluation, from a folder or a saved ``datasets`` dataset.

Two layouts are read:

- **An image folder** with one subfolder per class (``real/``, ``fake/`` or synonyms such as
  ``Realism``/``Deepfake``, mapped by name with :func:`canonical_label`), optionally already split:
  ``train/{real,fake}/``, ``validation/`` (or ``val``/``valid``), ``test/``.
- **A Hugging Face dataset saved with** ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``) with an image
  column and a label column whose ``ClassLabel`` names (or string values) map to real/fake by name;
  e.g. Hemg/deepfake-and-real-images: ``image``, ``label`` with names ``Fake``/``Real``.

dfscan's training label order is **0 = Real, 1 = Fake** (:data:`ID2LABEL`); Fake is the positive class.
Missing validation/test splits are carved out of ``train`` (or of everything) by a stratified split with a
fixed seed. Unreadable images are counted and skipped; data that cannot train a classifier (no images,
an empty or missing class, unknown class names) raises :class:`TrainingDataError` (BAD_TRAINING_DATA).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from dfscan.exceptions import TrainingDataError
from worker.inference.model.labels import FAKE, REAL, canonical_label

log = logging.getLogger(__name__)

REAL_ID, FAKE_ID = 0, 1
ID2LABEL = {REAL_ID: "Real", FAKE_ID: "Fake"}
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
_CANON_TO_ID = {REAL: REAL_ID, FAKE: FAKE_ID}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation"}
SPLIT_NAMES |= {"dev": "validation", "test": "test"}
MIN_PER_CLASS_TO_CARVE = 3  # one image of each class for train, validation and test


@dataclass(frozen=True)
class Example:
    """One labelled image: ``name`` for messages (a relative path or ``split[index]``), ``read()`` its bytes;
    ``region``, when set, cuts the part of the decoded (full-size) image this example is, e.g. a face crop
    (:func:`worker.inference.regions.face_crop`); None: the whole image."""

    name: str
    label: int
    read: Callable[[], bytes] = field(repr=False, compare=False)
    region: Callable[[Image.Image], Image.Image] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class LabelledData:
    """Splits of labelled examples, where they came from, and what was skipped on the way."""

    splits: dict[str, list[Example]]
    source: str
    fingerprint: str
    carved: tuple[str, ...] = ()  # splits made here (not present in the data)
    unreadable: int = 0
    unreadable_examples: tuple[str, ...] = ()  # the first few names, for the report

    @property
    def train(self) -> list[Example]:
        return self.split("train")

    @property
    def validation(self) -> list[Example]:
        return self.split("validation")

    @property
    def test(self) -> list[Example]:
        return self.split("test")

    def split(self, name: str) -> list[Example]:
        if not self.splits.get(name):
            raise TrainingDataError(f"{self.source}: no {name!r} split (have {sorted(self.splits)})")
        return self.splits[name]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"train": {"Real": 80, "Fake": 80}, ...}``."""
        return {
            split: {ID2LABEL[i]: sum(1 for e in examples if e.label == i) for i in ID2LABEL}
            for split, examples in self.splits.items()
        }


def load_labelled_data(
    path: Path,
    *,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    check_images: bool = True,
) -> LabelledData:
    """Read ``path`` and return train/validation/test splits (carving missing ones with a fixed seed)."""
    found, skipped, source = _read_source(Path(path), check_images)
    pool = found.pop("all", None)
    carved: list[str] = []
    if pool is not None:
        found["train"] = pool
        carved.append("train")
    if "train" not in found:
        raise TrainingDataError(
            f"{source}: no 'train' split (found {sorted(found)}); add train/ or unsplit data"
        )
    _check_classes(found["train"], source if pool is not None else f"{source} train split")
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if name not in found:
            keep, out = stratified_split(found["train"], fraction, seed=seed, what=f"{source} train")
            found["train"], found[name] = keep, out
            carved.append(name)
    for name, examples in found.items():
        _check_classes(examples, f"{source} {name} split")
    data = LabelledData(
        splits={k: found[k] for k in ("train", "validation", "test")},
        source=source,
        fingerprint=data_fingerprint(path),
        carved=tuple(carved),
        unreadable=len(skipped),
        unreadable_examples=tuple(skipped[:10]),
    )
    log.info("loaded %s: %s (carved %s, %d unreadable skipped)", source, data.counts(), carved, len(skipped))
    return data


def load_evaluation_data(path: Path, *, split: str | None = None, check_images: bool = True) -> LabelledData:
    """Data to score as it is: the named split, else the data's own ``test`` split, else every image.

    Nothing is carved: evaluating an unsplit folder scores all of it. The returned data has one split,
    under its own name (``"all"`` for unsplit data).
    """
    found, skipped, source = _read_source(Path(path), check_images)
    if split is None:
        split = "test" if "test" in found else ("all" if "all" in found else None)
        if split is None:
            raise TrainingDataError(f"{source}: no test split (have {sorted(found)}); name a split to score")
    if split not in found:
        raise TrainingDataError(f"{source}: no {split!r} split (have {sorted(found)})")
    _check_classes(found[split], f"{source} {split} split", need_both=False)
    return LabelledData(
        splits={split: found[split]},
        source=source,
        fingerprint=data_fingerprint(path),
        unreadable=len(skipped),
        unreadable_examples=tuple(skipped[:10]),
    )


def stratified_split(
    examples: list[Example], fraction: float, *, seed: int, what: str = "data"
) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of each class (at least one image) with a seeded shuffle; return (rest, part)."""
    rest: list[Example] = []
    part: list[Example] = []
    for label in sorted(ID2LABEL):
        group = sorted((e for e in examples if e.label == label), key=lambda e: e.name)
        if len(group) < MIN_PER_CLASS_TO_CARVE:
            raise TrainingDataError(
                f"{what}: class {ID2LABEL[label]} has {len(group)} images; at least "
                f"{MIN_PER_CLASS_TO_CARVE} are needed to split off validation and test images"
            )
        random.Random(f"{seed}:{label}").shuffle(group)
        n = max(1, round(len(group) * fraction))
        part.extend(group[:n])
        rest.extend(group[n:])
    return rest, part


def data_fingerprint(path: Path) -> str:
    """sha256 over the data's identity: sorted relative paths and sizes of a folder (so a copy keeps the
    fingerprint, an added, removed, renamed or resized file changes it), or a saved dataset's own
    per-split fingerprints and row counts."""
    path = Path(path)
    digest = hashlib.sha256()
    if _is_saved_dataset(path):
        for state in sorted(path.rglob("state.json")):
            info = json.loads(state.read_text())
            rel = state.parent.relative_to(path).as_posix()
            digest.update(f"{rel}\0{info.get('_fingerprint')}\0".encode())
            for f in info.get("_data_files", []):
                digest.update(
                    f"{f.get('filename')}\0{(state.parent / f['filename']).stat().st_size}\0".encode()
                )
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
    return digest.hexdigest()


# --- reading ---------------------------------------------------------------------------------------


def _read_source(path: Path, check_images: bool) -> tuple[dict[str, list[Example]], list[str], str]:
    if not path.exists():
        raise TrainingDataError(f"training data {str(path)!r} does not exist")
    if not path.is_dir():
        raise TrainingDataError(f"training data {str(path)!r} is not a folder or a saved dataset")
    found = _read_saved_dataset(path) if _is_saved_dataset(path) else _read_folder(path)
    skipped: list[str] = []
    if check_images:
        for name in list(found):
            ok = [e for e in found[name] if _readable(e, skipped)]
            found[name] = ok
    if not any(found.values()):
        raise TrainingDataError(f"{path}: no readable images found ({len(skipped)} unreadable)")
    if skipped:
        log.warning("%s: skipped %d unreadable images, e.g. %s", path, len(skipped), skipped[:3])
    return found, skipped, str(path)


def _readable(example: Example, skipped: list[str]) -> bool:
    try:
        with Image.open(io.BytesIO(example.read())) as im:
            im.verify()
        return True
    except Exception as exc:  # any decoder failure means "skip this file"
        log.debug("unreadable image %s: %s", example.name, exc)
        skipped.append(example.name)
        return False


def _check_classes(examples: list[Example], what: str, *, need_both: bool = True) -> None:
    if not examples:
        raise TrainingDataError(f"{what} has no images")
    present = {e.label for e in examples}
    if need_both and present != set(ID2LABEL):
        have = ", ".join(ID2LABEL[i] for i in sorted(present))
        raise TrainingDataError(
            f"{what} has only one class ({have}); a detector needs both Real and Fake images"
        )


def _label_id(name: str, where: str) -> int:
    canon = canonical_label(name)
    if canon is None:
        raise TrainingDataError(
            f"{where}: class {name!r} is neither real nor fake; name class folders/labels real or fake "
            "(or a synonym such as Realism/Deepfake, authentic/synthetic)"
        )
    return _CANON_TO_ID[canon]


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(root: Path) -> dict[str, list[Example]]:
    dirs = _subdirs(root)
    if not dirs:
        raise TrainingDataError(f"{root}: no class folders; expected real/ and fake/ (or train/, test/, ...)")
    split_dirs = [d for d in dirs if d.name.lower() in SPLIT_NAMES]
    if split_dirs and len(split_dirs) != len(dirs):
        other = [d.name for d in dirs if d not in split_dirs]
        raise TrainingDataError(f"{root}: mixes split folders with other folders {other}; use one layout")
    if not split_dirs:
        return {"all": _read_class_folders(root, root)}
    out: dict[str, list[Example]] = {}
    for d in split_dirs:
        out.setdefault(SPLIT_NAMES[d.name.lower()], []).extend(_read_class_folders(d, root))
    return out


def _read_class_folders(folder: Path, root: Path) -> list[Example]:
    examples: list[Example] = []
    seen: dict[int, str] = {}
    dirs = _subdirs(folder)
    if not dirs:
        raise TrainingDataError(f"{folder}: no class folders; expected real/ and fake/")
    for class_dir in dirs:
        label = _label_id(class_dir.name, str(folder))
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise TrainingDataError(f"{class_dir}: class folder {class_dir.name!r} has no images")
        if label in seen:
            log.info(
                "%s: folders %s and %s are both %s", folder, seen[label], class_dir.name, ID2LABEL[label]
            )
        seen[label] = class_dir.name
        for f in files:
            examples.append(Example(f.relative_to(root).as_posix(), label, functools.partial(f.read_bytes)))
    return examples


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


class _RowBytes:
    """Read one image's bytes from a saved dataset lazily (the column is cast to undecoded images)."""

    def __init__(self, dataset: Any, column: str, index: int) -> None:
        self.dataset, self.column, self.index = dataset, column, index

    def __call__(self) -> bytes:
        cell = self.dataset[self.index][self.column]
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        return Path(cell["path"]).read_bytes()


def _read_saved_dataset(path: Path) -> dict[str, list[Example]]:
    import datasets  # heavy and only needed for this layout

    loaded = datasets.load_from_disk(str(path))
    parts: Iterable[tuple[str, Any]]
    if isinstance(loaded, datasets.DatasetDict):
        unknown = [k for k in loaded if k.lower() not in SPLIT_NAMES]
        if unknown:
            raise TrainingDataError(f"{path}: unknown split names {unknown}; use train/validation/test")
        parts = [(SPLIT_NAMES[k.lower()], loaded[k]) for k in loaded]
    else:
        parts = [("all", loaded)]
    out: dict[str, list[Example]] = {}
    for split, ds in parts:
        image_col = _pick_column(ds, datasets.Image, ("image", "img", "images"), "image", path)
        label_col = _pick_column(ds, datasets.ClassLabel, ("label", "labels", "class"), "label", path)
        feature = ds.features[label_col]
        if isinstance(feature, datasets.ClassLabel):
            names = {i: _label_id(n, f"{path} {split}") for i, n in enumerate(feature.names)}
        elif getattr(feature, "dtype", None) == "string":
            names = {}
        else:
            raise TrainingDataError(
                f"{path}: label column {label_col!r} is {feature}; it needs ClassLabel names or strings "
                "(bare numbers do not say which class is fake)"
            )
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
        labels = ds[label_col]
        for i, raw in enumerate(labels):
            label = names[raw] if names else _label_id(str(raw), f"{path} {split}")
            out.setdefault(split, []).append(Example(f"{split}[{i}]", label, _RowBytes(ds, image_col, i)))
        if not labels:
            out.setdefault(split, [])
    return out


def _pick_column(ds: Any, feature_type: type, names: tuple[str, ...], what: str, path: Path) -> str:
    for col, feature in ds.features.items():
        if isinstance(feature, feature_type):
            return str(col)
    for col in ds.column_names:
        if col.lower() in names:
            return str(col)
    raise TrainingDataError(f"{path}: no {what} column among {ds.column_names}")
