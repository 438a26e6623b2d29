"""The MTCNN cascade's work per image is capped (issue 17: a texture made by gradient ascent on the P-net
drove one 640 px image to seconds of CPU): candidates per pyramid level before NMS, R-net inputs, O-net
inputs, each per image. Forcing every window through every stage (thresholds 0) reaches every cap; real
photos of people find the same faces with the caps as without."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from worker.inference.faces import mtcnn as face_mtcnn
from worker.inference.faces.mtcnn import MtcnnDetector

CPU = torch.device("cpu")
UNCAPPED = 10**9


class _Work:
    """What each stage of one detect call was given: NMS inputs per call, R-net and O-net inputs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, detector: MtcnnDetector) -> None:
        self.nms: list[int] = []
        self.rnet: list[int] = []
        self.onet: list[int] = []
        nms, refine = face_mtcnn.nms, detector._refine

        def counting_nms(boxes: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
            self.nms.append(len(boxes))
            return nms(boxes, *args, **kwargs)

        def counting_refine(smalls: Any, boxes: np.ndarray, net: Any, size: int, *rest: Any) -> np.ndarray:
            (self.rnet if size == 24 else self.onet).append(len(boxes))
            return refine(smalls, boxes, net, size, *rest)

        monkeypatch.setattr(face_mtcnn, "nms", counting_nms)
        monkeypatch.setattr(detector, "_refine", counting_refine)


@pytest.fixture
def every_window_passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(face_mtcnn, "THRESHOLDS", (0.0, 0.0, 0.0))
    yield


def _noise(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_forced_through_every_stage_each_cap_holds(
    monkeypatch: pytest.MonkeyPatch, every_window_passes: None
) -> None:
    uncapped = MtcnnDetector(
        CPU, max_level_candidates=UNCAPPED, max_rnet_inputs=UNCAPPED, max_onet_inputs=UNCAPPED
    )
    free = _Work(monkeypatch, uncapped)
    uncapped.detect([_noise(1)])
    assert max(free.nms) > 3000 and free.rnet[0] > 300 and free.onet[0] > 60  # what the caps below must cut

    capped = MtcnnDetector(CPU, max_level_candidates=300, max_rnet_inputs=200, max_onet_inputs=50)
    work = _Work(monkeypatch, capped)
    capped.detect([_noise(1)])
    # NMS runs per pyramid level, once across levels, then after the R-net and the O-net.
    levels, across = work.nms[:-3], work.nms[-3]
    assert len(levels) >= 5 and max(levels) == 300 and across <= 300 * len(levels)
    assert work.rnet == [200] and work.onet == [50]


def test_the_caps_are_per_image_in_a_batch(
    monkeypatch: pytest.MonkeyPatch, every_window_passes: None
) -> None:
    capped = MtcnnDetector(CPU, max_level_candidates=300, max_rnet_inputs=200, max_onet_inputs=50)
    work = _Work(monkeypatch, capped)
    capped.detect([_noise(2), _noise(3), _noise(4)])
    assert work.rnet == [600] and work.onet == [150]  # 200 and 50 of each of the three images


def test_the_default_caps_bound_the_forced_worst_case(
    monkeypatch: pytest.MonkeyPatch, every_window_passes: None
) -> None:
    detector = MtcnnDetector(CPU)
    work = _Work(monkeypatch, detector)
    detector.detect([_noise(5, (640, 640))])
    assert work.rnet == [face_mtcnn.MAX_RNET_INPUTS] and work.onet == [face_mtcnn.MAX_ONET_INPUTS]


def test_real_faces_are_found_the_same_with_the_caps() -> None:
    data = pytest.importorskip("skimage.data", reason="real photos: scikit-image's astronaut and LFW faces")
    astronaut = Image.fromarray(data.astronaut())
    mosaic = Image.new("RGB", (640, 480), (128, 128, 128))
    for k, face in enumerate(data.lfw_subset()[:80]):  # 80 real faces, a crowd at the detector's scale
        tile = (
            Image.fromarray((face * 255).astype(np.uint8))
            .convert("RGB")
            .resize((48, 48), Image.Resampling.BICUBIC)
        )
        mosaic.paste(tile, ((k % 10) * 64 + 8, (k // 10) * 60 + 6))
    uncapped = MtcnnDetector(
        CPU, max_level_candidates=UNCAPPED, max_rnet_inputs=UNCAPPED, max_onet_inputs=UNCAPPED
    )
    capped = MtcnnDetector(CPU)
    free = uncapped.detect([astronaut, mosaic])
    bounded = capped.detect([astronaut, mosaic])
    assert len(free[0]) == 1 and len(free[1]) >= 70
    for a, b in zip(free, bounded, strict=True):
        assert [f.box for f in a] == [f.box for f in b]
