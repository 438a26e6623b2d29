"""The MTCNN P-net runs once per pyramid level for all images of a detect call (padded to a common size,
the padding masked out), not once per image and level. The batched detector must find what each image
finds alone: same boxes (within a pixel) and scores (within 1e-4), on real photos and generated scenes
of different sizes and aspect ratios, faces and no faces."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.fixtures.faces import face_free_images, face_scene, sample
from worker.inference.faces import mtcnn as face_mtcnn
from worker.inference.faces.crops import Face
from worker.inference.faces.mtcnn import MtcnnDetector, PNet, _padding_groups, pnet_output_size

CPU = torch.device("cpu")


def _same(alone: list[Face], together: list[Face]) -> None:
    assert len(alone) == len(together)
    for a, b in zip(alone, together, strict=True):
        assert max(abs(p - q) for p, q in zip(a.box, b.box, strict=True)) <= 1, (a, b)
        assert abs(a.score - b.score) <= 1e-4, (a, b)


def _images() -> list[Image.Image]:
    skimage = pytest.importorskip("skimage.data", reason="real photos: scikit-image's astronaut")
    astronaut = Image.fromarray(skimage.astronaut())
    images = [
        astronaut,  # 512x512, a real face
        astronaut.crop((100, 0, 420, 200)),  # a wide cut of it
        astronaut.crop((0, 0, 301, 477)),  # a tall, odd-sized cut
        face_scene(64, seed=1, size=(800, 600)).image,  # shrunk to 640 first
        face_scene([48, 96], seed=2, size=(640, 480)).image,
        face_scene(40, seed=3, size=(333, 251)).image,  # odd sizes: the P-net's partial pooling windows
        face_scene(80, seed=4, size=(480, 640)).image,  # portrait
    ]
    images += [image.resize((320, 240)) for _, image in face_free_images(2, seed=5)[:2]]
    images += [sample("coffee").resize((128, 96)), sample("chelsea")]
    return images


def test_batched_detect_finds_what_each_image_finds_alone() -> None:
    detector = MtcnnDetector(CPU)
    images = _images()
    alone = [detector.detect([image])[0] for image in images]
    together = detector.detect(images)
    assert sum(len(faces) for faces in alone) >= 5  # the scenes' and the astronaut's faces are found
    for a, b in zip(alone, together, strict=True):
        _same(a, b)
    # And in another order, mixed with copies of each other (one padding group, several).
    order = [6, 0, 5, 5, 2, 8, 1]
    again = detector.detect([images[k] for k in order])
    for k, faces in zip(order, again, strict=True):
        _same(alone[k], faces)


def test_video_frames_of_one_size_share_one_pnet_forward_per_level(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = MtcnnDetector(CPU)
    frames = [face_scene(64, seed=s, size=(256, 192)).image for s in range(4)]
    calls: list[int] = []
    forward = detector.pnet.forward

    def counting(x: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(int(x.shape[0]))
        return forward(x, sizes)

    monkeypatch.setattr(detector.pnet, "forward", counting)
    together = detector.detect(frames)
    assert calls and all(n == 4 for n in calls)  # every level: all four frames in one forward
    levels = len(calls)
    calls.clear()
    alone = [detector.detect([frame])[0] for frame in frames]
    assert len(calls) == 4 * levels
    for a, b in zip(alone, together, strict=True):
        _same(a, b)


def test_padding_is_masked_out_of_the_pnet_maps() -> None:
    """An odd-sized image padded into a larger batch gives the same P-net maps as alone, to float rounding,
    including the last row and column that the ceil-mode pooling's partial window feeds."""
    torch.manual_seed(0)
    pnet = PNet().eval()
    small = torch.rand(1, 3, 37, 51) * 2 - 1
    big = torch.zeros(2, 3, 60, 64)
    big[0, :, :37, :51] = small[0]
    big[0, :, 37:, :] = 5.0  # padding that would win the partial pooling window if it were not masked
    big[0, :, :, 51:] = 5.0
    big[1] = torch.rand(3, 60, 64)
    with torch.inference_mode():
        reg_a, prob_a = pnet(small)
        reg_b, prob_b = pnet(big, torch.tensor([[37, 51], [60, 64]]))
        unmasked = pnet(big)[1]
    oh, ow = pnet_output_size(37, 51)
    assert tuple(prob_a.shape[2:]) == (oh, ow)
    assert torch.allclose(reg_a[0], reg_b[0, :, :oh, :ow], atol=1e-5)
    assert torch.allclose(prob_a[0], prob_b[0, :, :oh, :ow], atol=1e-5)
    assert not torch.allclose(prob_a[0], unmasked[0, :, :oh, :ow], atol=1e-5)  # the mask is what does it


def test_padding_groups_bound_the_waste_and_the_forward_size(monkeypatch: pytest.MonkeyPatch) -> None:
    same = _padding_groups([(k, (240, 320)) for k in range(10)])
    assert same == [list(range(10))]
    mixed = _padding_groups([(0, (480, 640)), (1, (640, 480)), (2, (470, 630)), (3, (60, 80))])
    assert sorted(k for g in mixed for k in g) == [0, 1, 2, 3]
    for group in mixed:
        shapes = {0: (480, 640), 1: (640, 480), 2: (470, 630), 3: (60, 80)}
        top = max(shapes[k][0] for k in group)
        wide = max(shapes[k][1] for k in group)
        own = sum(shapes[k][0] * shapes[k][1] for k in group)
        assert len(group) * top * wide <= face_mtcnn.PAD_WASTE * own
    monkeypatch.setattr(face_mtcnn, "MAX_PNET_PIXELS", 3 * 240 * 320)
    assert [len(g) for g in _padding_groups([(k, (240, 320)) for k in range(7)])] == [3, 3, 1]
