"""Photos in: every odd mode to the right RGB pixels, EXIF orientation, big photos, clear errors."""

from __future__ import annotations

import datetime
import gc
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz import render
from attnviz.photos import (
    ImageLoadError,
    display_copy,
    load_image,
    load_sample,
    prepare,
    sample_path,
    sample_photos,
)

WHITE = (255, 255, 255)


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    assert image.mode == "RGB"
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)]


def _palette_image(transparent: int | None = None) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50])
    image.putdata([0, 1])
    if transparent is not None:
        image.info["transparency"] = transparent
    return image


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (1, 1), 100), [(100, 100, 100)]),
        (Image.new("1", (1, 1), 1), [WHITE]),
        (Image.new("LA", (1, 1), (100, 255)), [(100, 100, 100)]),
        (Image.new("LA", (1, 1), (100, 0)), [WHITE]),
        (_palette_image(), [(10, 20, 30), (200, 100, 50)]),
        (_palette_image(transparent=0), [WHITE, (200, 100, 50)]),
        (Image.new("RGBA", (1, 1), (255, 0, 0, 255)), [(255, 0, 0)]),
        (Image.new("RGBA", (1, 1), (255, 0, 0, 0)), [WHITE]),
        (Image.new("CMYK", (1, 1), (0, 0, 0, 0)), [WHITE]),
        (Image.new("CMYK", (1, 1), (0, 0, 0, 255)), [(0, 0, 0)]),
        (Image.new("CMYK", (1, 1), (255, 0, 0, 0)), [(0, 255, 255)]),
    ],
    ids=[
        "L",
        "1",
        "LA-opaque",
        "LA-clear",
        "P",
        "P-transparency",
        "RGBA-opaque",
        "RGBA-clear",
        "CMYK-white",
        "CMYK-black",
        "CMYK-cyan",
    ],
)
def test_modes_convert_to_the_rgb_a_viewer_shows(image, expected):
    assert _pixels(load_image(image)) == expected


def test_half_transparent_red_is_composited_over_white():
    # rgb * a + 255 * (1 - a) with a = 128 / 255: (255, 127, 127), Pillow rounds within 1
    [(r, g, b)] = _pixels(load_image(Image.new("RGBA", (1, 1), (255, 0, 0, 128))))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_sixteen_bit_images_are_divided_by_257():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    expected = [(v, v, v) for v in (0, 1, 128, 255)]
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    assert _pixels(load_image(image)) == expected
    assert _pixels(load_image(values)) == expected  # the same from a uint16 array
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert _pixels(load_image(png.getvalue())) == expected  # and from a 16-bit PNG file


def test_mode_I_reads_0_to_65535_as_16_bit_and_stretches_other_ranges():
    as_16bit = Image.fromarray(np.array([[0, 257, 65535]], np.int32))
    assert as_16bit.mode == "I"
    assert _pixels(load_image(as_16bit)) == [(0, 0, 0), (1, 1, 1), WHITE]
    signed = Image.fromarray(np.array([[-100, 0, 100]], np.int32))
    assert _pixels(load_image(signed)) == [(0, 0, 0), (128, 128, 128), WHITE]


def test_float_images_in_0_1_are_intensities_and_other_ranges_are_stretched():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    assert _pixels(load_image(unit)) == [(0, 0, 0), (128, 128, 128), WHITE]
    wide = Image.fromarray(np.array([[10.0, 20.0, 30.0]], np.float32))
    assert _pixels(load_image(wide)) == [(0, 0, 0), (128, 128, 128), WHITE]
    rgb = np.zeros((1, 1, 3), np.float64)
    rgb[..., 0] = 1.0
    assert _pixels(load_image(rgb)) == [(255, 0, 0)]


def test_arrays_bytes_files_and_paths_read_the_same(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    path = tmp_path / "tiny.png"
    Image.fromarray(arr).save(path)
    for source in (arr, path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        assert np.array_equal(np.asarray(load_image(source)), arr), type(source)


def test_the_callers_image_is_neither_returned_nor_changed():
    image = Image.new("RGB", (400, 200), (1, 2, 3))
    out = load_image(image, max_side=100)
    assert out is not image and image.size == (400, 200) and out.size == (100, 50)


def _two_colour_jpeg(orientation: int) -> bytes:
    """Stored 40 wide x 20 high: left half red, right half blue, with an EXIF orientation."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def _colour_at(image: Image.Image, x: int, y: int) -> str:
    r, g, b = image.getpixel((x, y))
    return "red" if r > 200 and b < 60 else "blue" if b > 200 and r < 60 else f"{(r, g, b)}"


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, "red", "blue"), (8, "blue", "red")],  # 6: turn 90 degrees clockwise; 8: anticlockwise
)
def test_exif_orientation_is_honoured(orientation, top, bottom):
    stored = Image.open(io.BytesIO(_two_colour_jpeg(orientation)))
    assert stored.size == (40, 20) and stored.getexif()[0x0112] == orientation
    shown = load_image(_two_colour_jpeg(orientation))
    assert shown.size == (20, 40)  # upright: 20 wide, 40 high
    assert (_colour_at(shown, 10, 5), _colour_at(shown, 10, 35)) == (top, bottom)


def test_exif_orientation_is_honoured_for_an_opened_pil_image():
    shown = load_image(Image.open(io.BytesIO(_two_colour_jpeg(6))))
    assert shown.size == (20, 40) and _colour_at(shown, 10, 5) == "red"


def test_a_truncated_jpeg_names_the_file_and_says_truncated(tmp_path):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="JPEG")
    path = tmp_path / "holiday.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"(?s)holiday\.jpg.*truncated") as info:
        load_image(path)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)


def test_a_text_file_names_the_file_and_says_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a photo at all\n")
    with pytest.raises(ValueError, match=r"notes\.txt.*not an image"):
        load_image(path)
    with pytest.raises(OSError, match="not an image"):
        load_image(b"plain bytes")


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="source must be"):
        load_image(42)
    with pytest.raises(ValueError, match="max_side"):
        load_image(Image.new("RGB", (2, 2)), max_side=0)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(FileNotFoundError):
        load_image("/no/such/photo.jpg")


def test_sample_photos_load_and_are_licensed():
    names = sample_photos()
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(names)
    licence = (sample_path("chelsea").parent / "LICENSE.md").read_text()
    for name in names:
        assert f"`{name}.jpg`" in licence
        assert sample_path(name).stat().st_size < 200_000
    cat = load_sample("chelsea")
    assert cat.mode == "RGB" and cat.size == (451, 300)
    assert max(load_sample("coffee", max_side=128).size) == 128
    with pytest.raises(ValueError, match="chelsea"):
        load_sample("dog")


def test_prepare_gives_a_batch_of_one():
    from torchvision.models import MobileNet_V3_Small_Weights

    x = prepare(load_sample("chelsea"), MobileNet_V3_Small_Weights.DEFAULT.transforms())
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with pytest.raises(TypeError, match="transforms must"):
        prepare(load_sample("chelsea"), np.asarray)


class _PeakRSS:
    """Samples this process's resident memory every few milliseconds."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.base = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _overlay(image: Image.Image, attention: torch.Tensor) -> np.ndarray:
    """render.overlay where this checkout has it, else the same blend written out."""
    if hasattr(render, "overlay"):
        return render.overlay(image, attention)
    heat = torch.nn.functional.interpolate(
        attention, size=image.size[::-1], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    base = render.to_uint8_rgb(image).astype(np.float32)
    return (0.5 * base + 0.5 * 255 * heat[..., None]).astype(np.uint8)


def test_a_24_megapixel_photo_is_prepared_and_overlaid_at_display_size(tmp_path):
    pytest.importorskip("psutil")
    from torchvision.models import MobileNet_V3_Small_Weights

    path = tmp_path / "big.jpg"
    ramp = Image.linear_gradient("L").resize((6000, 4000))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_180), ramp)).save(path)
    del ramp
    gc.collect()
    transforms = MobileNet_V3_Small_Weights.DEFAULT.transforms()
    with _PeakRSS() as memory:
        photo = load_image(path)
        x = prepare(photo, transforms)
        shown = display_copy(photo, max_side=1024)
        straight = display_copy(path, max_side=1024)  # a JPEG decoded at reduced scale
        attention = torch.rand(1, 1, 7, 7)  # e.g. a CBAM map of the last stage
        overlay = _overlay(shown, attention)
    assert photo.size == (6000, 4000)
    assert x.shape == (1, 3, 224, 224)
    assert shown.size == straight.size == (1024, 683)
    assert overlay.shape == (683, 1024, 3)
    assert memory.peak - memory.base < 600 * 2**20


# -- attnviz.widgets.PhotoPicker -------------------------------------------------------------
def _upload(picker, name: str, content: bytes, mime: str = "image/jpeg") -> None:
    """Set the FileUpload's value as ipywidgets 8 does when a user picks a file."""
    picker.controls["upload"].value = (
        {
            "name": name,
            "type": mime,
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc),
        },
    )


def test_photo_picker_starts_with_a_sample_and_switches_to_an_upload_and_back():
    from attnviz.widgets import PhotoPicker

    picker = PhotoPicker(value="coffee")
    seen = []
    picker.on_change(seen.append)
    assert picker.source == "sample:coffee" and picker.image.size == (600, 400)
    assert picker.controls["upload"].accept == "image/*" and not picker.controls["upload"].multiple
    assert picker.pictures()["preview"][:4] == b"\x89PNG"

    _upload(picker, "phone.jpg", _two_colour_jpeg(6))
    assert picker.source == "upload:phone.jpg" and picker.image.size == (20, 40)  # upright
    assert picker.controls["sample"].value is None and seen == [picker.image]

    picker.controls["sample"].value = "chelsea"
    assert picker.source == "sample:chelsea" and picker.controls["upload"].value == ()
    assert len(seen) == 2 and seen[-1].size == (451, 300)
    picker.close()
    picker.close()


def test_photo_picker_reports_a_bad_upload_and_keeps_the_photo():
    from attnviz.widgets import PhotoPicker

    picker = PhotoPicker(["astronaut"])
    before = picker.image
    _upload(picker, "notes.txt", b"hello", mime="text/plain")
    assert picker.image is before and picker.source == "sample:astronaut"
    text = "".join(o.get("text", "") for o in picker.log.outputs)
    assert "notes.txt" in text and "not an image" in text and "Traceback" not in text
    with pytest.raises(ValueError, match="unknown sample"):
        PhotoPicker(["dog"])
    picker.close()


def test_photo_picker_routes_callback_errors_to_its_output():
    from attnviz.widgets import PhotoPicker

    picker = PhotoPicker()

    @picker.on_change
    def broken(image):
        raise RuntimeError("boom")

    picker.controls["sample"].value = "rocket"
    assert picker.source == "sample:rocket"
    assert "boom" in "".join(o.get("text", "") for o in picker.log.outputs)
    picker.on_change(broken, remove=True)
    picker.close()


# -- bounded images --------------------------------------------------------------------------
def _transforms():
    from torchvision.models import MobileNet_V3_Large_Weights

    return MobileNet_V3_Large_Weights.DEFAULT.transforms()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 2 KB image 3 x 100000 and a 480 KB PNG of 13000 x 13000 (under Pillow's bomb limit
    for warnings only): the reproductions of the issue."""
    d = tmp_path_factory.mktemp("hostile")
    Image.new("RGB", (3, 100_000)).save(d / "thin.png")
    big = Image.new("L", (13_000, 13_000))
    big.save(d / "big.png")
    del big
    gc.collect()
    return d


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("thin.png", r"3 x 100000 pixels, an aspect ratio of 33333:1.*max_aspect"),
        ("big.png", r"13000 x 13000 = 169.0 megapixels.*max_pixels"),
    ],
)
def test_hostile_images_are_refused_from_the_header_before_any_decoding(hostile, name, message):
    from attnviz.photos import ImageTooLargeError

    path = hostile / name
    with _PeakRSS() as memory:
        start = time.perf_counter()
        for source in (path, path.read_bytes(), io.BytesIO(path.read_bytes())):
            with pytest.raises(ImageTooLargeError, match=message):
                prepare(source, _transforms())
            with pytest.raises(ImageTooLargeError, match=message):
                display_copy(source, max_side=256)
        seconds = time.perf_counter() - start
    assert memory.peak - memory.base < 50 * 2**20 and seconds < 5


def test_limits_apply_to_arrays_and_pil_images_and_can_be_raised():
    from attnviz.photos import LIMITS, ImageTooLargeError, set_image_limits

    with pytest.raises(ImageTooLargeError, match="aspect ratio of 25:1"):
        load_image(np.zeros((4, 100), np.uint8))
    with pytest.raises(ImageTooLargeError, match="aspect ratio of 25:1"):
        load_image(Image.new("RGB", (100, 4)))
    before = (LIMITS.max_pixels, LIMITS.max_aspect)
    try:
        set_image_limits(max_aspect=30, max_pixels=1000)
        assert load_image(np.zeros((4, 100), np.uint8)).size == (100, 4)
        with pytest.raises(ImageTooLargeError, match="40 x 40 .* up to 1,000 pixels"):
            load_image(np.zeros((40, 40), np.uint8))
        for bad in ({"max_aspect": 0.5}, {"max_pixels": 0}, {"max_pixels": 1.5}):
            with pytest.raises(ValueError, match="max_"):
                set_image_limits(**bad)
    finally:
        set_image_limits(max_pixels=before[0], max_aspect=before[1])


def test_a_jpeg_over_the_pixel_limit_is_decoded_at_reduced_scale(tmp_path):
    from attnviz.photos import LIMITS, set_image_limits

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (2000, 1000), (200, 30, 60)).save(path)
    before = LIMITS.max_pixels
    try:
        set_image_limits(max_pixels=600_000)  # 2 MP: decoded at 1/2, 1000 x 500 = 0.5 MP
        image = load_image(path)
        assert image.size == (1000, 500) and image.getpixel((10, 10))[0] > 180
        with pytest.raises(ValueError, match="megapixels"):
            load_image(Image.open(path))  # already decoded by the caller: refused, not shrunk
    finally:
        set_image_limits(max_pixels=before)


_MEASURE = """
import gc, sys, threading, time, psutil
from torchvision.models import MobileNet_V3_Large_Weights
from attnviz.photos import display_copy, prepare
transforms = MobileNet_V3_Large_Weights.DEFAULT.transforms()
proc = psutil.Process()
gc.collect()
base = peak = proc.memory_info().rss
done = threading.Event()
def poll():
    global peak
    while not done.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.002)
thread = threading.Thread(target=poll)
thread.start()
x = prepare(sys.argv[1], transforms)
shown = display_copy(sys.argv[1], max_side=512)
done.set()
thread.join()
assert tuple(x.shape) == (1, 3, 224, 224) and max(shown.size) == 512
print((max(peak, proc.memory_info().rss) - base) / 2**20)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "mode", "suffix"),
    [
        ((8000, 5000), "RGBA", "png"),
        ((8000, 5000), "I;16", "png"),
        ((8000, 5000), "F", "tif"),
        ((28_000, 1_400), "RGB", "png"),
    ],
)
def test_the_worst_images_the_limits_allow_stay_under_500_mb(tmp_path, size, mode, suffix):
    """40 megapixels with transparency, 16 bits or floats, or the widest aspect ratio
    allowed; each measured in a fresh process (peak RSS sampled every 2 ms)."""
    import subprocess
    import sys

    path = tmp_path / f"worst.{suffix}"
    fill = {"I;16": 1000, "F": 0.5}.get(mode, (40, 90, 200, 128)[: len(mode)])
    image = Image.new(mode, size, fill)
    image.save(path)
    del image
    gc.collect()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    grown = float(done.stdout.strip())
    assert grown < 500, f"peak RSS grew {grown:.0f} MiB"


def test_multi_page_tiffs_do_not_keep_files_open(tmp_path):
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "pages.tif"
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first.save(path, save_all=True, append_images=[second])
    proc = psutil.Process()
    before = proc.num_fds()
    images = [load_image(path) for _ in range(80)]
    gc.collect()
    assert proc.num_fds() == before
    assert images[-1].getpixel((0, 0)) == (255, 0, 0)  # the first page


def test_folders_and_missing_files_are_named(tmp_path):
    with pytest.raises(ImageLoadError, match="is a folder, not an image"):
        load_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="no image file at"):
        load_image(tmp_path / "nothing.png")
