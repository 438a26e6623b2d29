"""scan(): one result per item in input order, per-item failures, the duplicate cache, and overlap."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfscan.exceptions import InferenceError
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from worker.inference import pipeline
from worker.inference.images import ImagePolicy, image_sha256
from worker.inference.model import Detector, load_detector
from worker.inference.pipeline import ScanItem, ScanResult, scan
from worker.inference.preprocess import load_pixels
from worker.inference.sources import SourcePolicy

IMAGES = ImagePolicy()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    return load_detector(str(path))


def _write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _policy(root: Path) -> SourcePolicy:
    return SourcePolicy(allowed_roots=(root,))


def _run(items: list[ScanItem], detector: Detector, root: Path, **kwargs: object) -> list[ScanResult]:
    return list(scan(items, detector, sources=_policy(root), images=IMAGES, **kwargs))  # type: ignore[arg-type]


def _expected_score(detector: Detector, path: Path) -> float:
    pixels, _ = load_pixels(path.read_bytes(), detector.preprocess, IMAGES)
    return detector.predict(pixels.unsqueeze(0))[0]


def test_mixed_batch_fails_per_item_and_keeps_input_order(tmp_path: Path, detector: Detector) -> None:
    good = [
        _write_image(tmp_path / "a.jpg", 1, size=(64, 48)),
        _write_image(tmp_path / "b.png", 2, fmt="PNG"),
        _write_image(tmp_path / "c.jpg", 3),
    ]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    outside = _write_image(tmp_path.parent / f"{tmp_path.name}-outside.jpg", 4)
    sources = [good[0], truncated, tmp_path / "missing.jpg", good[1], outside, text, good[2]]
    items = [ScanItem(key=f"k{i}", source=str(s)) for i, s in enumerate(sources)]

    results = _run(items, detector, tmp_path, batch_size=3, threshold=0.5)

    assert [r.key for r in results] == [item.key for item in items]
    assert [r.source for r in results] == [item.source for item in items]
    codes = {r.key: r.error_code for r in results}
    assert codes == {
        "k0": None,
        "k1": "CORRUPT_IMAGE",
        "k2": "NOT_FOUND",
        "k3": None,
        "k4": "PATH_NOT_ALLOWED",
        "k5": "UNSUPPORTED_FORMAT",
        "k6": None,
    }
    for result in results:
        if result.error_code is None:
            path = Path(result.source)
            assert result.status == "done" and not result.cached and result.error is None
            assert result.fake_score is not None
            assert result.fake_score == pytest.approx(_expected_score(detector, path), abs=1e-6)
            assert result.label == ("fake" if result.fake_score >= 0.5 else "real")
            assert result.sha256 == image_sha256(path.read_bytes())
            assert result.n_bytes == path.stat().st_size
            assert result.model_version == detector.version and result.threshold == 0.5
            assert result.infer_ms > 0 and result.decode_ms > 0
        else:
            assert result.status == "failed" and result.fake_score is None and result.label is None
            assert result.error and not result.retryable
    assert (results[0].width, results[0].height) == (64, 48)


def test_threshold_decides_the_label(tmp_path: Path, detector: Detector) -> None:
    paths = [_write_image(tmp_path / f"{i}.jpg", 10 + i) for i in range(6)]
    items = [ScanItem(key=p.name, source=str(p)) for p in paths]
    scores = sorted(r.fake_score or 0.0 for r in _run(items, detector, tmp_path))
    assert scores[0] < scores[-1]
    cut = (scores[2] + scores[3]) / 2
    labelled = _run(items, detector, tmp_path, threshold=cut)
    assert sorted(r.label or "" for r in labelled) == ["fake"] * 3 + ["real"] * 3
    assert all((r.label == "fake") == ((r.fake_score or 0.0) >= cut) for r in labelled)


def test_known_bytes_and_repeats_skip_the_model(
    tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (_write_image(tmp_path / f"{n}.jpg", seed) for n, seed in (("a", 1), ("b", 2), ("c", 3)))
    a_copy = tmp_path / "a-copy.jpg"
    a_copy.write_bytes(a.read_bytes())
    stored = {image_sha256(b.read_bytes()): 0.125}
    lookups: list[tuple[str, str]] = []

    def known(sha256: str) -> float | None:
        lookups.append((sha256, threading.current_thread().name))
        return stored.get(sha256)

    batches: list[int] = []
    real_predict = detector.predict

    def counting_predict(pixels: torch.Tensor) -> list[float]:
        batches.append(len(pixels))
        return real_predict(pixels)

    monkeypatch.setattr(detector, "predict", counting_predict)
    sources = [a, b, a_copy, c, b, a]
    items = [ScanItem(key=str(i), source=str(s)) for i, s in enumerate(sources)]
    results = _run(items, detector, tmp_path, batch_size=4, known=known)

    assert batches == [2]  # only a and c reach the model: b is known, the copies repeat bytes
    assert [r.cached for r in results] == [False, True, True, False, True, True]
    assert results[1].fake_score == results[4].fake_score == 0.125
    assert results[0].fake_score == results[2].fake_score == results[5].fake_score
    assert results[1].infer_ms == 0.0
    assert {thread for _, thread in lookups} == {threading.current_thread().name}


def test_model_fault_fails_the_batch_as_retryable(
    tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(pixels: torch.Tensor) -> list[float]:
        raise InferenceError("device lost")

    monkeypatch.setattr(detector, "predict", broken)
    good = _write_image(tmp_path / "a.jpg", 1)
    items = [ScanItem("good", str(good)), ScanItem("missing", str(tmp_path / "nope.jpg"))]
    by_key = {r.key: r for r in _run(items, detector, tmp_path)}
    assert by_key["good"].error_code == "INFERENCE_FAILED" and by_key["good"].retryable
    assert by_key["good"].error == "device lost" and by_key["good"].sha256 is not None
    assert by_key["missing"].error_code == "NOT_FOUND" and not by_key["missing"].retryable


def test_wrong_number_of_scores_is_caught(
    tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector, "predict", lambda pixels: [0.5])
    paths = [_write_image(tmp_path / f"{i}.jpg", i) for i in range(3)]
    results = _run([ScanItem(p.name, str(p)) for p in paths], detector, tmp_path)
    assert len(results) == 3
    assert all(
        r.error_code == "INFERENCE_FAILED" and "1 scores for a batch of 3" in (r.error or "") for r in results
    )


def test_next_batch_is_prepared_while_the_model_runs(
    tmp_path: Path, detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first forward blocks until the second batch's reading has begun: if scan() waited for the
    model before preparing the next batch, the wait would time out and the test fail."""
    paths = [_write_image(tmp_path / f"{i}.jpg", i) for i in range(4)]
    second_batch = {str(p) for p in paths[2:]}
    second_batch_reading = threading.Event()
    overlapped: list[bool] = []  # per forward: had the next batch's reading begun while it ran?
    real_read = pipeline.read_source

    def recording_read(source: str, policy: SourcePolicy) -> bytes:
        if source in second_batch:
            second_batch_reading.set()
        return real_read(source, policy)

    real_predict = detector.predict

    def slow_predict(pixels: torch.Tensor) -> list[float]:
        overlapped.append(second_batch_reading.wait(timeout=10) if not overlapped else True)
        return real_predict(pixels)

    monkeypatch.setattr(pipeline, "read_source", recording_read)
    monkeypatch.setattr(detector, "predict", slow_predict)
    results = _run([ScanItem(p.name, str(p)) for p in paths], detector, tmp_path, batch_size=2)

    assert [r.status for r in results] == ["done"] * 4
    assert overlapped == [True, True]


def test_items_are_consumed_lazily(tmp_path: Path, detector: Detector) -> None:
    path = _write_image(tmp_path / "a.jpg", 1)
    pulled: list[int] = []

    def endless() -> Iterator[ScanItem]:
        i = 0
        while True:
            pulled.append(i)
            yield ScanItem(str(i), str(path))
            i += 1

    stream = scan(endless(), detector, sources=_policy(tmp_path), images=IMAGES, batch_size=2)
    first = next(stream)
    stream.close()
    assert first.key == "0"
    assert len(pulled) <= 2 * 2 + 1  # the current batch and one batch ahead, not the whole stream


def test_bad_arguments_are_refused(tmp_path: Path, detector: Detector) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _run([], detector, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="threshold"):
        _run([], detector, tmp_path, threshold=1.5)
    assert _run([], detector, tmp_path) == []
