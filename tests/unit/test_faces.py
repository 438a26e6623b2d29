"""Faces: the detector on a real face (scikit-image's astronaut) in generated scenes, choosing and cropping."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfscan.exceptions import ModelLoadError
from tests.fixtures.faces import background, exif_jpeg, face_scene, matches, paste_face, sample
from worker.inference.faces import crops as faces_mod
from worker.inference.faces.crops import (
    Face,
    crop_box,
    face_detector_names,
    load_face_detector,
    register_face_detector,
    select_faces,
    square_crop,
)
from worker.inference.images.decode import ImagePolicy, decode_image

pytest.importorskip("skimage", reason="the scenes need scikit-image's astronaut photo (dev extra)")


@pytest.fixture(scope="module")
def mtcnn():  # type: ignore[no-untyped-def]
    return load_face_detector("mtcnn", "cpu", threads=2)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


# --- the detector on real faces ------------------------------------------------------------------------


def test_the_version_names_the_detector_and_its_settings(mtcnn) -> None:  # type: ignore[no-untyped-def]
    assert mtcnn.version.startswith("mtcnn-facenet-pytorch-2.6(")
    assert "side=640" in mtcnn.version and "min=20" in mtcnn.version


@pytest.mark.parametrize("face_px", [32, 48, 64, 128, 256])
def test_finds_one_face_of_each_size_with_a_tight_box(mtcnn, face_px: int) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(face_px, seed=face_px, kind="field")
    (found,) = mtcnn.detect([scene.image])
    assert len(found) == 1, found
    assert matches(found[0].box, scene.truth[0])
    assert iou(found[0].box, scene.truth[0]) > 0.5, (found[0].box, scene.truth[0])
    assert 0.9 < found[0].score <= 1.0


@pytest.mark.parametrize("center", [(80, 100), (940, 100), (512, 384), (80, 680), (940, 680)])
def test_boxes_follow_the_face_wherever_it_is(mtcnn, center: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(96, seed=3, kind="stripes", centers=[center])
    (found,) = mtcnn.detect([scene.image])
    assert [matches(f.box, scene.truth[0]) for f in found] == [True]


def test_several_faces_each_found_once(mtcnn) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene([200, 120, 64, 40], seed=11, kind="field")
    (found,) = mtcnn.detect([scene.image])
    assert len(found) == 4
    for truth in scene.truth:
        assert sum(matches(f.box, truth) for f in found) == 1, (truth, found)


def test_no_face_no_box(mtcnn) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    images = [background(640, 480, rng, kind) for kind in ("field", "noise", "stripes", "gravel")]
    images += [sample("coffee"), sample("rocket")]
    assert mtcnn.detect(images) == [[] for _ in images]


@pytest.mark.parametrize("angle", [-20, 20])
def test_rotated_faces_are_found(mtcnn, angle: float) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(128, seed=21, angle=angle, kind="field")
    (found,) = mtcnn.detect([scene.image])
    assert len(found) == 1 and matches(found[0].box, scene.truth[0])


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_boxes_are_in_pixels_of_the_exif_oriented_image(mtcnn, orientation: int) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(128, seed=31, size=(800, 600), kind="field", centers=[(200, 200)])
    image = decode_image(exif_jpeg(scene.image, orientation), ImagePolicy())
    assert image.size == (800, 600)  # upright again
    (found,) = mtcnn.detect([image])
    assert len(found) == 1 and iou(found[0].box, scene.truth[0]) > 0.5, (found, scene.truth)


def test_a_batch_gives_one_list_per_image_in_order(mtcnn) -> None:  # type: ignore[no-untyped-def]
    scenes = [face_scene(n, seed=40 + k, kind="field") for k, n in enumerate([[], 150, 60, []])]
    images = [s.image for s in scenes]
    found = mtcnn.detect(images)
    assert [len(f) for f in found] == [len(s.truth) for s in scenes] == [0, 1, 1, 0]
    # the same result one at a time: batching does not change the boxes (beyond float rounding)
    alone = [mtcnn.detect([img])[0] for img in images]
    assert [len(f) for f in alone] == [len(f) for f in found]
    for a, b in zip(alone, found, strict=True):
        assert all(
            iou(x.box, y.box) > 0.95 and abs(x.score - y.score) < 1e-4 for x, y in zip(a, b, strict=True)
        )


def test_grayscale_and_small_images(mtcnn) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(100, seed=5, size=(300, 260), kind="field", centers=[(150, 130)])
    (found,) = mtcnn.detect([scene.image.convert("L")])
    assert len(found) == 1 and matches(found[0].box, scene.truth[0])
    assert mtcnn.detect([Image.new("RGB", (1, 1)), Image.new("RGB", (11, 11))]) == [[], []]


# --- hostile shapes ------------------------------------------------------------------------------------


def test_a_1x40000_image_has_no_face_and_costs_nothing(mtcnn) -> None:  # type: ignore[no-untyped-def]
    thin = Image.new("RGB", (40000, 1), (200, 150, 120))
    start = time.process_time()
    assert mtcnn.detect([thin, thin.transpose(Image.Transpose.ROTATE_90)]) == [[], []]
    assert time.process_time() - start < 5
    assert crop_box(thin.size, Face((100, 0, 30, 1), 0.9)) == (91, 0, 139, 1)


@pytest.mark.parametrize("center_x", [50, 990])  # a fifth of the face cut off on the left, half on the right
def test_a_face_cut_by_the_border_gets_a_box_inside_the_image(mtcnn, center_x: int) -> None:  # type: ignore[no-untyped-def]
    scene = face_scene(160, seed=9, kind="field", centers=[(center_x, 384)])
    (found,) = mtcnn.detect([scene.image])
    assert len(found) == 1, "a face cut by the border is still a face"
    x, y, w, h = found[0].box
    assert x >= 0 and y >= 0 and x + w <= 1024 and y + h <= 768
    assert (x == 0) if center_x < 512 else (x + w == 1024)
    left, top, right, bottom = crop_box(scene.image.size, found[0], 0.3)
    assert (left == 0) if center_x < 512 else (right == 1024)
    assert right > left and bottom > top
    assert square_crop(scene.image, found[0]).size == (right - left, bottom - top)


def test_500_tiny_faces_are_bounded(mtcnn) -> None:  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (1500, 1000), (90, 120, 150))
    centers = [(15 + 60 * (k % 25), 20 + 50 * (k // 25)) for k in range(500)]
    for c in centers:
        paste_face(image, c, 24)
    start = time.process_time()
    (found,) = mtcnn.detect([image])
    assert time.process_time() - start < 60
    chosen = select_faces(found, max_faces=8, min_face_px=32)
    assert len(chosen) <= 8
    assert all(f.side >= 32 for f in chosen)


# --- choosing and cropping -----------------------------------------------------------------------------


def test_select_faces_largest_first_drops_small_ones_and_caps_the_count() -> None:
    faces = [
        Face((0, 0, 40, 40), 0.99),
        Face((100, 0, 200, 220), 0.91),
        Face((400, 0, 31, 60), 0.999),  # shorter side 31: too small
        Face((500, 0, 90, 90), 0.95),
        Face((700, 0, 90, 90), 0.97),  # same size, higher score: before the 0.95 one
    ]
    assert [f.box[0] for f in select_faces(faces, 8, 32)] == [100, 700, 500, 0]
    assert [f.box[0] for f in select_faces(faces, 2, 32)] == [100, 700]
    assert select_faces(faces, 8, 1000) == []
    assert select_faces([], 8, 32) == []
    assert select_faces(faces, 0, 1) == []


def test_crop_box_is_a_square_with_the_margin_around_the_face() -> None:
    face = Face((400, 300, 100, 120), 0.99)
    left, top, right, bottom = crop_box((1024, 768), face, 0.3)
    # side = 120 * (1 + 2 * 0.3) = 192, centred on (450, 360)
    assert (left, top, right, bottom) == (354, 264, 546, 456)
    assert crop_box((1024, 768), face, 0.0) == (390, 300, 510, 420)
    assert square_crop(Image.new("RGB", (1024, 768)), face).size == (192, 192)


def test_crop_box_is_clipped_to_the_image_and_never_empty() -> None:
    assert crop_box((200, 100), Face((0, 0, 50, 50), 0.9), 0.3) == (0, 0, 65, 65)
    assert crop_box((200, 100), Face((180, 80, 20, 20), 0.9), 0.3) == (174, 74, 200, 100)
    assert crop_box((200, 100), Face((0, 0, 200, 100), 0.9), 0.3) == (0, 0, 200, 100)
    # a degenerate box at the far corner still gives one pixel
    left, top, right, bottom = crop_box((200, 100), Face((200, 100, 0, 0), 0.9), 0.3)
    assert right - left >= 1 and bottom - top >= 1 and right <= 200 and bottom <= 100


def test_the_crop_holds_the_face_pixels() -> None:
    scene = face_scene(128, seed=2, kind="field", centers=[(300, 300)])
    x, y, w, h = scene.truth[0]
    crop = square_crop(scene.image, Face(scene.truth[0], 1.0), 0.3)
    left, top, _, _ = crop_box(scene.image.size, Face(scene.truth[0], 1.0), 0.3)
    inner = np.asarray(crop)[y - top : y - top + h, x - left : x - left + w]
    assert np.array_equal(inner, np.asarray(scene.image)[y : y + h, x : x + w])


# --- the registry --------------------------------------------------------------------------------------


def test_unknown_detector_names_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown face detector 'nope'.*mtcnn"):
        load_face_detector("nope")
    assert "mtcnn" in face_detector_names()


def test_a_registered_detector_is_loaded_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[torch.device, int | None]] = []

    class Fixed:
        version = "fixed(v1)"

        def detect(self, images: list[Image.Image]) -> list[list[Face]]:
            return [[Face((0, 0, img.width, img.height), 1.0)] for img in images]

    monkeypatch.setattr(faces_mod, "_REGISTRY", dict(faces_mod._REGISTRY))

    @register_face_detector("fixed")
    def load(device: torch.device, threads: int | None) -> Fixed:
        calls.append((device, threads))
        return Fixed()

    det = load_face_detector("fixed", "cpu", 3)
    assert calls == [(torch.device("cpu"), 3)]
    assert det.version == "fixed(v1)"
    assert det.detect([Image.new("RGB", (7, 5))]) == [[Face((0, 0, 7, 5), 1.0)]]


# The weights shipped as package data, byte for byte those of the facenet-pytorch 2.6.0 wheel (its RECORD).
SHIPPED = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


def test_the_mtcnn_weights_ship_in_the_package_with_their_licence() -> None:
    from worker.inference.faces import mtcnn as face_mtcnn

    folder = face_mtcnn._weights_dir()
    assert folder.parts[-3:] == ("worker", "inference", "weights")
    digests = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in face_mtcnn.WEIGHT_FILES
    }
    assert digests == SHIPPED  # not a Git LFS pointer, not retrained: the weights the README measured
    notice = (folder / "LICENSE").read_text()
    for line in SHIPPED.values():
        assert line in notice
    for holder in ("Kaipeng Zhang", "David Sandberg", "Timothy Esler"):
        assert holder in notice
    assert "MIT License" in notice


def _weights_in(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    from worker.inference.faces import mtcnn as face_mtcnn

    monkeypatch.setattr(face_mtcnn.resources, "files", lambda package: root)


def test_mtcnn_without_its_weights_says_what_is_missing_and_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from worker.inference.faces import mtcnn as face_mtcnn

    (tmp_path / "weights").mkdir()
    shutil.copy(face_mtcnn._weights_dir() / "pnet.pt", tmp_path / "weights" / "pnet.pt")
    _weights_in(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError, match=r"weights rnet\.pt, onet\.pt are missing .*DFSCAN_FACES=off"):
        face_mtcnn.MtcnnDetector(torch.device("cpu"))


def test_mtcnn_with_a_truncated_weights_file_is_a_load_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from worker.inference.faces import mtcnn as face_mtcnn

    shutil.copytree(face_mtcnn._weights_dir(), tmp_path / "weights")
    onet = tmp_path / "weights" / "onet.pt"
    onet.write_bytes(onet.read_bytes()[:5000])
    _weights_in(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError, match=r"cannot load the mtcnn face detector's weights .*onet\.pt"):
        face_mtcnn.MtcnnDetector(torch.device("cpu"))
