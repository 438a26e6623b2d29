"""Judge: one verdict per source, per-source failures with stable codes, the duplicate cache, the
shared batcher, and judge_stream's order and bounded look-ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfscan.exceptions import InferenceError
from dfscan.verdicts import Verdict
from tests.fixtures.corpus import make_image_bytes
from tests.fixtures.models import DEEPFAKE_REAL, REAL_FAKE, save_tiny_vit
from worker.inference import judge as judge_module
from worker.inference import judge_image
from worker.inference.images.decode import ImagePolicy, image_sha256
from worker.inference.judge import Judge, Known, judge_stream
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.model.preprocess import load_pixels
from worker.inference.sources.read import SourcePolicy

IMAGES = ImagePolicy()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    return load_classifier(str(path))


def _write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _judge(detector: Classifier, root: Path, *, known: Known | None = None, **kwargs: float) -> Judge:
    return Judge(detector, sources=SourcePolicy(allowed_roots=(root,)), images=IMAGES, known=known, **kwargs)  # type: ignore[arg-type]


def _run(judge: Judge, sources: list[Path], threads: int = 2) -> list[Verdict]:
    try:
        return list(judge_stream(judge, [str(s) for s in sources], threads=threads))
    finally:
        judge.close()


def _expected_score(detector: Classifier, path: Path) -> float:
    pixels, _ = load_pixels(path.read_bytes(), detector.preprocess, IMAGES)
    return detector.predict(pixels.unsqueeze(0))[0]


def test_mixed_sources_fail_one_by_one_and_keep_input_order(tmp_path: Path, detector: Classifier) -> None:
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

    verdicts = _run(_judge(detector, tmp_path, batch_size=3, threshold=0.5), sources)

    assert [v.source for v in verdicts] == [str(s) for s in sources]
    assert [v.error_code for v in verdicts] == [
        None,
        "CORRUPT_IMAGE",
        "FILE_NOT_FOUND",
        None,
        "PATH_NOT_ALLOWED",
        "UNSUPPORTED_FORMAT",
        None,
    ]
    for verdict in verdicts:
        if verdict.error_code is None:
            path = Path(verdict.source)
            assert verdict.status == "done" and not verdict.cached and verdict.error is None
            assert verdict.fake_score == pytest.approx(_expected_score(detector, path), abs=1e-6)
            assert verdict.label == ("fake" if verdict.fake_score >= 0.5 else "real")
            assert verdict.image_sha256 == image_sha256(path.read_bytes())
            assert verdict.n_bytes == path.stat().st_size
            assert verdict.model_version == detector.version and verdict.threshold == 0.5
            assert verdict.infer_ms > 0 and verdict.decode_ms > 0
            assert verdict.row()["image_format"] == ("PNG" if path.suffix == ".png" else "JPEG")
        else:
            assert verdict.status == "failed" and verdict.fake_score is None and verdict.label is None
            assert verdict.error and not verdict.retryable
            with pytest.raises(ValueError, match="no verdict row"):
                verdict.row()
    assert (verdicts[0].width, verdicts[0].height) == (64, 48)


def test_threshold_decides_the_label(tmp_path: Path, detector: Classifier) -> None:
    paths = [_write_image(tmp_path / f"{i}.jpg", 10 + i) for i in range(6)]
    scores = sorted(v.fake_score or 0.0 for v in _run(_judge(detector, tmp_path), paths))
    assert scores[0] < scores[-1]
    cut = (scores[2] + scores[3]) / 2
    labelled = _run(_judge(detector, tmp_path, threshold=cut), paths)
    assert sorted(v.label or "" for v in labelled) == ["fake"] * 3 + ["real"] * 3
    assert all((v.label == "fake") == ((v.fake_score or 0.0) >= cut) for v in labelled)
    with pytest.raises(ValueError, match="threshold"):
        _judge(detector, tmp_path, threshold=1.5)


def test_known_bytes_and_repeats_skip_the_model(
    tmp_path: Path, detector: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (_write_image(tmp_path / f"{n}.jpg", seed) for n, seed in (("a", 1), ("b", 2), ("c", 3)))
    a_copy = tmp_path / "a-copy.jpg"
    a_copy.write_bytes(a.read_bytes())
    stored = {image_sha256(b.read_bytes()): 0.125}
    lookups: list[tuple[str, str]] = []

    def known(sha256: str, version: str) -> float | None:
        lookups.append((sha256, version))
        return stored.get(sha256)

    run: list[int] = []
    real_predict = detector.predict

    def counting_predict(pixels: torch.Tensor) -> list[float]:
        run.append(len(pixels))
        return real_predict(pixels)

    monkeypatch.setattr(detector, "predict", counting_predict)
    verdicts = _run(_judge(detector, tmp_path, known=known), [a, b, a_copy, c, b, a], threads=1)

    assert sum(run) == 2  # only a and c reach the model: b is known, the copies repeat bytes
    assert [v.cached for v in verdicts] == [False, True, True, False, True, True]
    assert verdicts[1].fake_score == verdicts[4].fake_score == 0.125
    assert verdicts[0].fake_score == verdicts[2].fake_score == verdicts[5].fake_score
    assert verdicts[1].infer_ms == 0.0
    assert {version for _, version in lookups} == {detector.version}


def test_a_failing_cache_lookup_propagates(tmp_path: Path, detector: Classifier) -> None:
    """The caller's store is down: the worker must see it (and retry the message), not a verdict."""

    def down(sha256: str, version: str) -> float | None:
        raise ConnectionError("database is down")

    judge = _judge(detector, tmp_path, known=down)
    try:
        with pytest.raises(ConnectionError):
            judge.judge(str(_write_image(tmp_path / "a.jpg", 1)))
    finally:
        judge.close()


def test_model_fault_is_retryable_and_per_source_errors_are_not(
    tmp_path: Path, detector: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(pixels: torch.Tensor) -> list[float]:
        raise InferenceError("device lost")

    monkeypatch.setattr(detector, "predict", broken)
    good = _write_image(tmp_path / "a.jpg", 1)
    first, missing, again = _run(_judge(detector, tmp_path), [good, tmp_path / "nope.jpg", good], threads=1)
    assert first.error_code == "INFERENCE_FAILED" and first.retryable
    assert first.error == "device lost" and first.image_sha256 is not None
    assert missing.error_code == "FILE_NOT_FOUND" and not missing.retryable
    assert missing.output()["error_detail"] == {"former_code": "NOT_FOUND"}
    # A fault is not remembered: the same bytes go to the model again (and fail again, not "cached").
    assert again.error_code == "INFERENCE_FAILED" and not again.cached


def test_wrong_number_of_scores_is_caught(
    tmp_path: Path, detector: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector, "predict", lambda pixels: [])
    paths = [_write_image(tmp_path / f"{i}.jpg", i) for i in range(3)]
    verdicts = _run(_judge(detector, tmp_path), paths)
    assert len(verdicts) == 3
    assert all(
        v.error_code == "INFERENCE_FAILED" and "returned 0 results" in (v.error or "") for v in verdicts
    )


def test_an_unexpected_error_is_an_internal_error_worth_a_retry(
    tmp_path: Path, detector: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(data: bytes, cfg: object, policy: object) -> torch.Tensor:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(judge_image, "load_pixels_hashed", buggy)
    (verdict,) = _run(_judge(detector, tmp_path), [_write_image(tmp_path / "a.jpg", 1)])
    assert verdict.error_code == "INTERNAL_ERROR" and verdict.retryable
    assert "ZeroDivisionError" in (verdict.error or "")


def test_sources_are_read_while_the_model_runs(
    tmp_path: Path, detector: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first forward blocks until a later source's reading has begun: if reading waited for the
    model, the wait would time out and the test fail."""
    paths = [_write_image(tmp_path / f"{i}.jpg", i) for i in range(4)]
    later = str(paths[2])
    later_reading = threading.Event()
    overlapped: list[bool] = []
    real_read = judge_module.read_source

    def recording_read(source: str, policy: SourcePolicy) -> bytes:
        if source == later:
            later_reading.set()
        return real_read(source, policy)

    real_predict = detector.predict

    def slow_predict(pixels: torch.Tensor) -> list[float]:
        overlapped.append(later_reading.wait(timeout=10) if not overlapped else True)
        return real_predict(pixels)

    monkeypatch.setattr(judge_module, "read_source", recording_read)
    monkeypatch.setattr(detector, "predict", slow_predict)
    verdicts = _run(_judge(detector, tmp_path, batch_size=1), paths, threads=3)

    assert [v.status for v in verdicts] == ["done"] * 4
    assert overlapped[0] is True


def test_sources_are_consumed_lazily(tmp_path: Path, detector: Classifier) -> None:
    path = str(_write_image(tmp_path / "a.jpg", 1))
    pulled: list[int] = []

    def endless() -> Iterator[str]:
        i = 0
        while True:
            pulled.append(i)
            yield path
            i += 1

    judge = _judge(detector, tmp_path)
    stream = judge_stream(judge, endless(), threads=2)
    first = next(stream)
    stream.close()
    judge.close()
    assert first.source == path and first.status == "done"
    assert len(pulled) <= 2 * 2 + 1  # the window of 2 x threads, not the whole stream
    with pytest.raises(ValueError, match="threads"):
        next(judge_stream(judge, [path], threads=0))


def test_a_verdict_maps_to_its_row_and_back(tmp_path: Path, detector: Classifier) -> None:
    (verdict,) = _run(_judge(detector, tmp_path), [_write_image(tmp_path / "a.jpg", 1)])
    back = Verdict.from_stored(
        source=verdict.source,
        status="done",
        error_code=None,
        error=None,
        row=verdict.row(),
        hashes=verdict.hashes,
    )
    assert back.output() == verdict.output()


def test_a_large_jpeg_is_judged_on_its_full_decode_unless_the_policy_drafts(tmp_path: Path) -> None:
    """Exact by default: the score is the one the full decode gives (as the checkpoint's own image
    processor and the seed's pipeline compute it); ImagePolicy(jpeg_draft=True) opts into the draft."""
    detector = load_classifier(str(save_tiny_vit(tmp_path / "m", REAL_FAKE, seed=3, head_scale=20.0)))
    path = tmp_path / "big.jpg"
    path.write_bytes(make_image_bytes("JPEG", size=(3000, 2000), seed=1))
    full, _ = load_pixels(path.read_bytes(), detector.preprocess, IMAGES, draft=False)
    drafted, _ = load_pixels(path.read_bytes(), detector.preprocess, IMAGES, draft=True)
    full_score = detector.predict(full.unsqueeze(0))[0]
    drafted_score = detector.predict(drafted.unsqueeze(0))[0]
    assert abs(full_score - drafted_score) > 1e-4  # the draft really gives another score (2.9e-4)
    exact = _run(_judge(detector, tmp_path), [path])[0]
    assert exact.fake_score == pytest.approx(full_score, abs=1e-6)
    policy = ImagePolicy(jpeg_draft=True)
    opted = Judge(detector, sources=SourcePolicy(allowed_roots=(tmp_path,)), images=policy)
    (verdict,) = _run(opted, [path])
    assert verdict.fake_score == pytest.approx(drafted_score, abs=1e-6)
