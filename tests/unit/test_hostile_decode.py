"""Every decode-cost attack of issue 8 (small builds of the same structures) ends with its stable code or
decodes within the memory budget; phone formats decode under the same rules. No timing here: the bound
on time is asserted by bench/hostile.py on the full-size files."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from dfscan.exceptions import CorruptImageError, DfscanError, ImageTooLargeError, UnsupportedFormatError
from tests.fixtures.corpus import MARKER, _rotated_jpeg, make_image
from tests.fixtures.hostile import Case, gif_with_frames, hostile_cases, jpeg_scans, png_raw, tiff_pages
from worker.inference.images import headers, resizing
from worker.inference.images.decode import (
    ImagePolicy,
    _MemoryBudget,
    decode_with_size,
    to_rgb,
    to_rgb_reduced,
)
from worker.inference.model.preprocess import PreprocessConfig, load_pixels

POLICY = ImagePolicy()
SHORTEST_EDGE = PreprocessConfig.from_dict(
    {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
)
FIXED = PreprocessConfig.from_dict({})


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return hostile_cases(full=False)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_hostile_case_ends_with_its_code(cases: dict[str, Case]) -> None:
    outcomes: dict[tuple[str, str], str | None] = {}
    expected: dict[tuple[str, str], str | None] = {}
    for name, case in cases.items():
        for label, cfg in (("shortest_edge", SHORTEST_EDGE), ("fixed", FIXED)):
            expected[name, label] = case.code
            try:
                pixels, _ = load_pixels(case.data, cfg, POLICY)
            except DfscanError as exc:
                assert exc.permanent, name
                outcomes[name, label] = exc.code
            else:
                assert pixels.shape == (3, 224, 224), name
                assert bool(pixels.isfinite().all()), name
                outcomes[name, label] = None
    assert outcomes == expected
    assert {"TOO_LARGE", "IMAGE_TOO_COMPLEX", "UNSUPPORTED_FORMAT", None} == set(expected.values())


def test_page_and_frame_caps_are_exact_and_counted_lazily() -> None:
    assert decode_with_size(tiff_pages(5), ImagePolicy(max_frames=5))[1] == (1, 1)
    with pytest.raises(ImageTooLargeError, match="more than 4 pages, over the cap of 4") as caught:
        decode_with_size(tiff_pages(5), ImagePolicy(max_frames=4))
    assert caught.value.limit == "image_frames"
    # The walk stops at the cap: a million pages are never read (the file is only 2,000 pages long, but
    # its last IFD points far past the end, which a full walk would report as corrupt instead).
    truncated = tiff_pages(2000)
    with pytest.raises(ImageTooLargeError):
        decode_with_size(truncated[: len(truncated) // 2], ImagePolicy(max_frames=10))
    with pytest.raises(ImageTooLargeError, match="more than 7 frames") as caught:
        decode_with_size(gif_with_frames(8), ImagePolicy(max_frames=7))
    assert caught.value.limit == "image_frames"


def test_scan_cap_boundary() -> None:
    assert headers.MAX_JPEG_SCANS == 64
    assert decode_with_size(jpeg_scans(64, (32, 32)), POLICY)[1] == (32, 32)
    with pytest.raises(DfscanError, match="JPEG scans: more than 64") as caught:
        decode_with_size(jpeg_scans(65, (32, 32)), POLICY)
    assert caught.value.code == "IMAGE_TOO_COMPLEX"


@pytest.mark.parametrize("mode", ["F", "I", "I;16", "RGBA", "LA", "P", "1", "CMYK", "L", "RGB"])
@pytest.mark.parametrize("factor", [1, 3])
def test_tiled_conversion_equals_converting_the_whole_image(mode: str, factor: int) -> None:
    img = make_image((1700, 900), mode="RGBA" if mode == "RGBA" else "RGB", seed=3)
    if mode == "F":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.float32) * 3.0 - 100.0)
    elif mode == "I":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.int32) * 300)
    elif mode == "I;16":
        img = make_image((1700, 900), mode="I;16", seed=3)
    elif mode == "P":
        img = img.quantize(16)
        img.info["transparency"] = 0
    elif mode != "RGBA":
        img = img.convert(mode)
    assert img.width * img.height > 1 << 20  # the tiled path
    whole = to_rgb(img)
    if factor > 1:
        whole = whole.reduce(factor)
    assert to_rgb_reduced(img, factor).tobytes() == whole.tobytes()


def test_very_wide_rows_are_cut_into_tiles_too() -> None:
    img = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), 12_000)[None, :].repeat(2, axis=0))
    assert img.size == (3_072_000, 2)
    assert to_rgb_reduced(img, 2).tobytes() == to_rgb(img).reduce(2).tobytes()


def test_extreme_aspect_ratio_resizes_only_the_crop_window() -> None:
    image = make_image((6000, 40), seed=4)
    spec = SHORTEST_EDGE.resize
    new = resizing.resized_size(6000, 40, 256)
    assert new == (38400, 256) and new[0] * new[1] > resizing.MAX_INTERMEDIATE_PIXELS  # the window path
    full = image.resize(new, resample=Image.Resampling(spec.resample))
    left = (new[0] - 224) // 2
    expected = np.asarray(full.crop((left, 16, left + 224, 240)), dtype=int)
    got = np.asarray(resizing.apply(image, spec), dtype=int)
    assert got.shape == (224, 224, 3)
    assert int(np.abs(got - expected).max()) <= 1  # Pillow's 8-bit rounding between its two passes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_forty_million_by_one_preprocesses() -> None:
    data = png_raw(40_000_000, 1)
    pixels, original = load_pixels(data, SHORTEST_EDGE, POLICY)
    assert original == (40_000_000, 1) and pixels.shape == (3, 224, 224)


def test_decode_memory_budget_refuses_what_cannot_fit_and_queues_the_rest() -> None:
    data = png_raw(3000, 2000, colour=6)
    with pytest.raises(ImageTooLargeError, match="DFSCAN_DECODE_MEMORY") as caught:
        decode_with_size(data, ImagePolicy(decode_memory=32 * 1024 * 1024))
    assert caught.value.limit == "decode_memory"
    assert decode_with_size(data, ImagePolicy(decode_memory=128 * 1024 * 1024))[1] == (3000, 2000)
    budget = _MemoryBudget(100)
    entered, release = threading.Event(), threading.Event()

    def second() -> None:
        with budget.reserve(60):
            entered.set()
            release.wait(60)

    waiter = threading.Thread(target=second)
    with budget.reserve(60):
        waiter.start()
        assert not entered.wait(0.2)  # 60 + 60 > 100: the second decode waits
        assert budget.used == 60
    assert entered.wait(60) and budget.used == 60  # a ceiling, not a window
    release.set()
    waiter.join(60)
    assert budget.used == 0


def test_decode_memory_goes_to_a_waiting_interactive_decode_before_bulk_ones_queued_earlier() -> None:
    from worker.inference import lanes

    budget = _MemoryBudget(100)
    order: list[str] = []
    release = threading.Event()

    def decode(name: str, lane: int) -> None:
        with lanes.running_in(lane), budget.reserve(60):
            order.append(name)
            release.wait(60)

    def waiting(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(budget._cond._waiters) < count:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.01)

    held = budget.reserve(60)
    held.__enter__()  # a bulk decode holds 60 of 100
    bulk = threading.Thread(target=decode, args=("bulk", lanes.BULK))
    bulk.start()
    waiting(1)
    urgent = threading.Thread(target=decode, args=("interactive", lanes.INTERACTIVE))
    urgent.start()
    waiting(2)
    held.__exit__(None, None, None)  # room for one: the interactive decode, though it came later
    deadline = time.monotonic() + 60
    while not order and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in (bulk, urgent):
        thread.join(60)
    assert order == ["interactive", "bulk"]


def test_tiff_tile_larger_than_the_image_counts_against_the_pixel_cap(cases: dict[str, Case]) -> None:
    with pytest.raises(ImageTooLargeError, match="TIFF tile is 46000x46000") as caught:
        decode_with_size(cases["tiff_46000_tile"].data, POLICY)
    assert caught.value.limit == "image_pixels"


# --- phone formats ----------------------------------------------------------------------------


def _encode(fmt: str, image: Image.Image, **params: object) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    image.save(buf, fmt, quality=95, **params)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_formats_decode_under_the_same_rules(fmt: str) -> None:
    data = _encode(fmt, make_image((64, 48), seed=5))
    img, size = decode_with_size(data, POLICY)
    assert img.mode == "RGB" and size == (64, 48)
    reference = np.asarray(make_image((64, 48), seed=5), dtype=int)
    assert float(np.abs(np.asarray(img, dtype=int) - reference).mean()) < 8  # lossy, but the same picture
    with pytest.raises(ImageTooLargeError, match="over the cap of 3071"):
        decode_with_size(data, ImagePolicy(max_pixels=3071))
    with pytest.raises(UnsupportedFormatError):
        decode_with_size(data, ImagePolicy(formats=frozenset({"JPEG", "PNG"})))
    for cut in (40, len(data) // 2):
        with pytest.raises(CorruptImageError):
            decode_with_size(data[:cut], POLICY)
    pixels, _ = load_pixels(data, SHORTEST_EDGE, POLICY)
    assert pixels.shape == (3, 224, 224)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_formats_honour_exif_orientation(fmt: str) -> None:
    stored = Image.open(io.BytesIO(_rotated_jpeg()))
    data = _encode(fmt, stored, exif=stored.getexif().tobytes())
    img, size = decode_with_size(data, POLICY)
    assert size == img.size == (48, 64)
    arr = np.asarray(img).astype(int)
    assert np.abs(arr[4, 48 - 5] - MARKER).max() < 40  # the stored top-left is now top-right


def test_heif_is_registered_for_the_allow_list_only() -> None:
    data = _encode("HEIF", make_image(seed=6))
    assert decode_with_size(data, ImagePolicy(formats=frozenset({"HEIF"})))[1] == (64, 48)
    with pytest.raises(UnsupportedFormatError, match=r"allowed format \(AVIF, JPEG\)"):
        decode_with_size(data, ImagePolicy(formats=frozenset({"JPEG", "AVIF"})))


def test_a_side_over_65536_is_box_reduced_before_a_fixed_size_resize() -> None:
    ramp = np.tile(np.linspace(0, 255, 1000).astype(np.uint8), 200)[None, :].repeat(3, axis=0)
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    assert image.width == 200_000 > resizing.MAX_RESAMPLED_SIDE
    spec = FIXED.resize
    got = np.asarray(resizing.apply(image, spec), dtype=int)
    direct = np.asarray(image.resize((224, 224), resample=Image.Resampling(spec.resample)), dtype=int)
    assert got.shape == direct.shape == (224, 224, 3)
    assert int(np.abs(got - direct).max()) <= 2
    small = make_image((640, 480), seed=8)  # normal images take the exact path
    assert resizing.apply(small, spec).tobytes() == small.resize((224, 224), spec.resample).tobytes()


def test_a_one_pixel_wide_image_counts_its_row_pointers_against_the_decode_memory() -> None:
    # Pillow holds a pointer per row: a 1 x 4,000,000 PNG is 4 MB of pixels but 32 MB of row pointers
    # for its decode and 32 MB more for its RGB copy. The budget must see them before decoding.
    buf = io.BytesIO()
    Image.new("L", (1, 4_000_000), 7).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 100_000  # a small file
    roomy = ImagePolicy(max_pixels=10_000_000, decode_memory=256 * 1024 * 1024)
    assert decode_with_size(data, roomy)[1] == (1, 4_000_000)
    tight = ImagePolicy(max_pixels=10_000_000, decode_memory=100 * 1024 * 1024)  # ~67 MiB without the rows
    with pytest.raises(ImageTooLargeError, match="decode memory"):
        decode_with_size(data, tight)
