"""decode_image on the corpus: every file decodes to RGB of the right size or raises exactly its code."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError, UnsupportedFormatError
from tests.fixtures.corpus import EXPECTED_SIZES, MARKER, gif_with_frames, make_corpus, make_image_bytes
from worker.inference.images.decode import (
    ALLOWED_FORMATS,
    ImagePolicy,
    decode_image,
    decode_with_size,
    image_sha256,
    to_rgb,
)

POLICY = ImagePolicy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str | None]]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _decode(corpus: dict[str, tuple[Path, str | None]], name: str) -> Image.Image:
    return decode_image(corpus[name][0].read_bytes(), POLICY)


def test_corpus_is_small_and_covers_every_expectation(corpus: dict[str, tuple[Path, str | None]]) -> None:
    total = sum(path.stat().st_size for path, _ in corpus.values())
    assert total < 2_000_000
    codes = {code for _, code in corpus.values()}
    assert codes == {None, "CORRUPT_IMAGE", "UNSUPPORTED_FORMAT", "TOO_LARGE"}
    assert {name for name, (_, code) in corpus.items() if code is None} == set(EXPECTED_SIZES)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_corpus_file_decodes_or_raises_its_code(corpus: dict[str, tuple[Path, str | None]]) -> None:
    outcomes: dict[str, object] = {}
    for name, (path, _code) in corpus.items():
        try:
            img = decode_image(path.read_bytes(), POLICY)
        except DfscanError as exc:
            outcomes[name] = exc.code
            assert exc.permanent, name
        else:
            outcomes[name] = (img.mode, img.size)
    expected = {
        name: code if code is not None else ("RGB", EXPECTED_SIZES[name])
        for name, (_, code) in corpus.items()
    }
    assert outcomes == expected


def test_exif_orientation_rotates_and_moves_the_marker(corpus: dict[str, tuple[Path, str | None]]) -> None:
    stored = Image.open(corpus["jpeg_exif_rotated"][0])
    assert stored.size == (64, 48)
    assert np.abs(np.asarray(stored)[4, 4].astype(int) - MARKER).max() < 40  # stored top-left
    img = _decode(corpus, "jpeg_exif_rotated")
    assert img.size == (48, 64)
    arr = np.asarray(img).astype(int)
    # Orientation 6 = rotate 90 degrees clockwise: the stored top-left corner is now top-right.
    assert np.abs(arr[4, 48 - 5] - MARKER).max() < 40
    assert np.abs(arr[4, 4] - MARKER).max() > 100


def test_sixteen_bit_gray_is_scaled_not_clipped(corpus: dict[str, tuple[Path, str | None]]) -> None:
    raw = np.asarray(Image.open(corpus["png_16bit"][0])).astype(np.int64)
    assert raw.max() > 255  # the file really holds 16-bit values
    arr = np.asarray(_decode(corpus, "png_16bit"))
    assert arr[0, 0].tolist() == [255, 255, 255]  # 65535
    assert arr[0, 1].tolist() == [128, 128, 128]  # 32768: Image.convert would clip this to 255
    expected = (raw * 255 + 32767) // 65535
    assert np.array_equal(arr[..., 0], expected)
    assert np.array_equal(arr[..., 0], arr[..., 2])


def test_big_endian_sixteen_bit_and_float_modes() -> None:
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    assert np.asarray(to_rgb(big))[0, :, 0].tolist() == [0, 1, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    assert np.asarray(to_rgb(floats))[0, :, 1].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-10.0, 0.0, 30.0]], dtype=np.float32))
    assert np.asarray(to_rgb(wide))[0, :, 2].tolist() == [0, 64, 255]


def test_transparency_is_composited_on_white(corpus: dict[str, tuple[Path, str | None]]) -> None:
    palette = Image.open(corpus["png_palette_alpha"][0])
    assert palette.mode == "P" and palette.info.get("transparency") == 0
    transparent = np.asarray(palette) == 0
    assert transparent.any() and not transparent.all()
    arr = np.asarray(_decode(corpus, "png_palette_alpha"))
    assert (arr[transparent] == 255).all()
    # RGBA: alpha ramps 0 (left) to 255 (right); the left column is pure white, the right one the colour.
    rgba = np.asarray(Image.open(corpus["png_rgba"][0]))
    out = np.asarray(_decode(corpus, "png_rgba"))
    assert (out[:, 0] == 255).all()
    assert np.array_equal(out[:, -1], rgba[:, -1, :3])


def test_cmyk_and_one_bit_convert_to_rgb(corpus: dict[str, tuple[Path, str | None]]) -> None:
    rgb_reference = np.asarray(Image.open(corpus["jpeg_cmyk"][0]).convert("RGB")).astype(int)
    cmyk = np.asarray(_decode(corpus, "jpeg_cmyk")).astype(int)
    assert np.array_equal(cmyk, rgb_reference)
    assert cmyk[..., 0].std() > 20  # the red gradient survived the CMYK round trip
    bilevel = np.asarray(_decode(corpus, "png_1bit"))
    assert set(np.unique(bilevel).tolist()) == {0, 255}


def test_truncated_jpeg_is_corrupt_and_pillow_globals_are_untouched() -> None:
    data = make_image_bytes("JPEG", size=(200, 150))
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[: len(data) - 200], POLICY)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_pixel_cap_is_checked_on_the_header_before_decoding() -> None:
    data = make_image_bytes("PNG", size=(100, 50))
    assert decode_image(data, ImagePolicy(max_pixels=5000)).size == (100, 50)
    with pytest.raises(ImageTooLargeError, match="100x50 = 5000 pixels, over the cap of 4999") as caught:
        decode_image(data, ImagePolicy(max_pixels=4999))
    assert (caught.value.code, caught.value.limit) == ("TOO_LARGE", "image_pixels")


def test_png_bomb_is_real_and_refused(corpus: dict[str, tuple[Path, str | None]]) -> None:
    data = corpus["png_bomb"][0].read_bytes()
    assert len(data) < 20_000
    idat = data[data.index(b"IDAT") + 4 :]
    assert len(zlib.decompressobj().decompress(idat)) == 10_000 * (10_000 // 8 + 1)
    # Pillow only warns at this size (its error starts at 2 * MAX_IMAGE_PIXELS): our own cap refuses it.
    with pytest.raises(ImageTooLargeError, match="10000x10000"), pytest.warns(Image.DecompressionBombWarning):
        decode_image(data, POLICY)


def test_frame_cap() -> None:
    data = gif_with_frames(12)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 12
    assert decode_image(data, ImagePolicy(max_frames=12)).size == (1, 1)
    with pytest.raises(ImageTooLargeError, match="more than 11 frames, over the cap of 11") as caught:
        decode_image(data, ImagePolicy(max_frames=11))
    assert caught.value.limit == "image_frames"


def test_first_frame_of_an_animation(corpus: dict[str, tuple[Path, str | None]]) -> None:
    black_first = np.asarray(decode_image(gif_with_frames(3), POLICY))
    assert black_first.tolist() == [[[0, 0, 0]]]
    animated = Image.open(corpus["gif_animated"][0])
    assert getattr(animated, "n_frames", 1) == 4
    first = np.asarray(animated.convert("RGB"))
    assert np.array_equal(np.asarray(_decode(corpus, "gif_animated")), first)


def test_policy_formats_narrow_the_allow_list() -> None:
    png = make_image_bytes("PNG")
    only_jpeg = ImagePolicy(formats=frozenset({"JPEG"}))
    with pytest.raises(UnsupportedFormatError, match=r"allowed format \(JPEG\)"):
        decode_image(png, only_jpeg)
    assert {"JPEG", "PNG", "WEBP", "GIF"} <= ALLOWED_FORMATS
    assert not {"EPS", "PDF", "PSD", "ICO"} & ALLOWED_FORMATS


def test_draft_decodes_large_jpeg_smaller_but_never_below_the_target() -> None:
    data = make_image_bytes("JPEG", size=(1200, 800))
    full = decode_image(data, POLICY)
    assert full.size == (1200, 800)
    assert decode_image(data, POLICY, draft_size=(200, 200)).size == (300, 200)  # 1/4 scale
    assert decode_image(data, POLICY, draft_size=(224, 224)).size == (600, 400)  # 1/4 would be 200 high
    assert decode_image(data, POLICY, draft_size=(500, 300)).size == (600, 400)  # 1/2: 1/4 would be below
    assert decode_image(data, POLICY, draft_size=(2000, 2000)).size == (1200, 800)  # never upscales
    # Other formats are reduced by an integer factor that leaves at least twice the target (Pillow's
    # reducing_gap=2): 800 // 448 = 1 keeps 1200x800 whole; 2000x1000 halves to 1000x500.
    assert decode_image(make_image_bytes("PNG", size=(1200, 800)), POLICY, draft_size=(224, 224)).size == (
        1200,
        800,
    )
    png = make_image_bytes("PNG", size=(2000, 1000))
    reduced = decode_image(png, POLICY, draft_size=(224, 224))
    assert reduced.size == (1000, 500)
    assert reduced.tobytes() == decode_image(png, POLICY).reduce(2).tobytes()


def test_draft_respects_exif_rotation_and_reports_the_original_size() -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(make_image_bytes("JPEG", size=(1600, 400)))).save(buf, "JPEG", exif=exif.tobytes())
    # Displayed 400x1600; a displayed target of 100x400 allows 1/4 scale on the stored 1600x400.
    img, original = decode_with_size(buf.getvalue(), POLICY, draft_size=(100, 400))
    assert original == (400, 1600)
    assert img.size == (100, 400)


def test_image_sha256() -> None:
    assert image_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_sha256(b"abc") != image_sha256(b"abd")
