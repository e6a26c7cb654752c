"""The shared image loader on real files of every awkward kind, built in the test."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from conftest import jpeg_bytes
from curata.imageio import ImageError, load_image, resize_to, verify_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.new("RGB", size, color)


def palette_image(transparent: bool) -> bytes:
    """24x24 palette PNG: left half index 0 (red), right half index 1 (blue); index 0 transparent if asked."""
    im = Image.new("P", (24, 24), 0)
    im.putpalette([*RED, *BLUE] + [0] * 762)
    im.paste(1, (12, 0, 24, 24))
    return encode(im, "PNG", **({"transparency": 0} if transparent else {}))


def sixteen_bit() -> bytes:
    """I;16 PNG: left half 0, right half 65535 (full scale), so 8-bit scaling must give 0 and 255."""
    arr = np.zeros((12, 20), np.uint16)
    arr[:, 10:] = 65535
    return encode(Image.fromarray(arr), "PNG")


def animated_gif() -> bytes:
    frames = [solid(c) for c in (RED, (0, 255, 0), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def one_bit() -> bytes:
    arr = np.zeros((12, 20), bool)
    arr[:, 10:] = True
    return encode(Image.fromarray(arr), "PNG")


# name -> (encoded file, expected pixel at the top-left, expected pixel at the bottom-right, tolerance)
CASES: dict[str, tuple[Callable[[], bytes], tuple[int, int, int], tuple[int, int, int], int]] = {
    "rgb_png": (lambda: encode(solid((200, 30, 30)), "PNG"), (200, 30, 30), (200, 30, 30), 0),
    "l_png": (lambda: encode(Image.new("L", (20, 12), 77), "PNG"), (77, 77, 77), (77, 77, 77), 0),
    "la_png_opaque": (lambda: encode(Image.new("LA", (20, 12), (77, 255)), "PNG"), (77, 77, 77), (77, 77, 77), 0),
    "rgba_png_opaque": (lambda: encode(Image.new("RGBA", (20, 12), (10, 20, 30, 255)), "PNG"),
                        (10, 20, 30), (10, 20, 30), 0),
    "p_png": (lambda: palette_image(False), RED, BLUE, 0),
    "p_png_transparency": (lambda: palette_image(True), WHITE, BLUE, 0),
    "cmyk_jpeg": (lambda: encode(Image.new("CMYK", (20, 12), (0, 255, 255, 0)), "JPEG", quality=95), RED, RED, 8),
    "i16_png": (sixteen_bit, (0, 0, 0), WHITE, 0),
    "1bit_png": (one_bit, (0, 0, 0), WHITE, 0),
    "animated_gif": (animated_gif, RED, RED, 0),  # the first frame, not a later one
    "webp_lossless": (lambda: encode(solid((30, 200, 30)), "WEBP", lossless=True), (30, 200, 30), (30, 200, 30), 0),
    "tiff": (lambda: encode(solid((5, 6, 250)), "TIFF"), (5, 6, 250), (5, 6, 250), 0),
    "jpeg": (lambda: jpeg_bytes((20, 12), (10, 120, 200)), (10, 120, 200), (10, 120, 200), 4),
}


@pytest.mark.parametrize("from_path", [False, True], ids=["bytes", "path"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_loads_as_rgb_uint8(tmp_path, name, from_path):
    make, top_left, bottom_right, tol = CASES[name]
    data = make()
    source: bytes | Path = data
    if from_path:
        source = tmp_path / f"{name}.img"
        source.write_bytes(data)
    arr = load_image(source)
    assert arr.dtype == np.uint8
    expected_shape = (24, 24, 3) if name.startswith("p_png") else (12, 20, 3)
    assert arr.shape == expected_shape
    assert arr.flags.writeable  # a copy, safe for the caller to modify
    np.testing.assert_allclose(arr[0, 0], top_left, atol=tol)
    np.testing.assert_allclose(arr[-1, -1], bottom_right, atol=tol)


def test_alpha_is_composited_on_white_by_default_and_on_a_given_background():
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255  # red everywhere
    arr[0, 0, 3] = 0  # fully transparent
    arr[0, 1, 3] = 128  # half transparent
    arr[0, 2, 3] = 255  # opaque
    data = encode(Image.fromarray(arr, "RGBA"), "PNG")
    white = load_image(data)
    assert tuple(white[0, 0]) == WHITE
    np.testing.assert_allclose(white[0, 1], (255, 128, 128), atol=2)
    assert tuple(white[0, 2]) == RED
    grey = load_image(data, background=(10, 20, 30))
    assert tuple(grey[0, 0]) == (10, 20, 30)
    np.testing.assert_allclose(grey[0, 1], (0.5 * 255 + 0.5 * 10, 0.5 * 20, 0.5 * 30), atol=2)
    assert tuple(grey[0, 2]) == RED
    # LA (grey + alpha) goes through the same compositing.
    la = encode(Image.new("LA", (3, 3), (0, 0)), "PNG")
    assert tuple(load_image(la, background=(1, 2, 3))[1, 1]) == (1, 2, 3)


def test_trns_colour_key_on_rgb_png_is_transparent():
    """A PNG tRNS chunk on an RGB image makes one colour transparent: it must not show as that colour."""
    im = solid(RED, (6, 4))
    im.paste(BLUE, (0, 0, 3, 4))
    arr = load_image(encode(im, "PNG", transparency=BLUE))
    assert tuple(arr[0, 0]) == WHITE
    assert tuple(arr[0, 5]) == RED
    assert "transparency composited on the background" in verify_image(encode(im, "PNG", transparency=BLUE)).notes


def test_float_image_in_unit_range_is_scaled_not_black():
    ramp = np.linspace(0.0, 1.0, 11, dtype=np.float32).reshape(1, 11).repeat(3, axis=0)
    arr = load_image(encode(Image.fromarray(ramp, "F"), "TIFF"))
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255
    np.testing.assert_allclose(arr[0, 5], (128, 128, 128), atol=1)


def test_exif_orientation_is_applied():
    im = solid(RED, (40, 20))
    im.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
    arr = load_image(data)
    assert arr.shape == (40, 20, 3)  # portrait after rotation
    np.testing.assert_allclose(arr[5, 10], RED, atol=10)  # the left half is now on top
    np.testing.assert_allclose(arr[35, 10], BLUE, atol=10)
    info = verify_image(data)
    assert (info.width, info.height) == (40, 20)  # the stored (sensor) size, before orientation


def smooth_jpeg(size: tuple[int, int]) -> bytes:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def test_jpeg_draft_decode_with_max_side():
    data = smooth_jpeg((2400, 1600))
    full = load_image(data)
    small = load_image(data, max_side=300)
    assert full.shape == (1600, 2400, 3)
    assert max(small.shape[:2]) < 2400
    assert max(small.shape[:2]) >= 300  # never smaller than asked for
    assert small.shape[1] * 1600 == small.shape[0] * 2400  # aspect ratio kept
    np.testing.assert_allclose(small.reshape(-1, 3).mean(0), full.reshape(-1, 3).mean(0), atol=3)
    # Not JPEG: the hint is ignored, the full image comes back.
    png = encode(Image.new("RGB", (900, 600), RED), "PNG")
    assert load_image(png, max_side=100).shape == (600, 900, 3)


def test_pixel_cap():
    data = encode(solid(RED, (100, 60)), "PNG")
    with pytest.raises(ImageError) as e:
        load_image(data, max_pixels=5000)
    assert e.value.code == "too_many_pixels"
    assert "100x60" in e.value.reason and "exceeds the cap" in e.value.reason
    assert load_image(data, max_pixels=6000).shape == (60, 100, 3)
    # 100 megapixels is refused by default, from the header alone (1-bit PNG: a few kB on disk).
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")
    for fn in (load_image, verify_image):
        with pytest.raises(ImageError) as e:
            fn(bomb)
        assert e.value.code == "too_many_pixels"


def corrupt_png() -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = bytearray(encode(Image.fromarray(arr), "PNG"))
    start = data.find(b"IDAT") + 64
    data[start : start + 200] = bytes(200)  # damage the compressed pixel stream, keep the length
    return bytes(data)


def two_frame_tiff_with_bad_second_frame() -> bytes:
    """A multi-page TIFF whose first page is fine and whose second page header is damaged."""
    frames = [solid(RED, (8, 8)), solid(BLUE, (8, 8))]
    data = bytearray(encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        entry = second + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<H", data, entry, 65000)  # an unknown tag: the page has no size
    return bytes(data)


def test_bad_inputs_raise_image_error_with_a_code(tmp_path):
    truncated = jpeg_bytes((400, 300))
    cases: dict[str, tuple[bytes | Path, set[str]]] = {
        "truncated": (truncated[: len(truncated) // 2], {"truncated"}),
        "truncated_in_header": (truncated[:300], {"truncated"}),  # was "unreadable"
        "corrupt": (corrupt_png(), {"corrupt"}),
        "noise": (np.random.default_rng(1).bytes(2048), {"not_an_image"}),
        "empty_bytes": (b"", {"not_an_image"}),
        "missing": (tmp_path / "nope.png", {"missing_file"}),
        "directory": (tmp_path, {"missing_file"}),
    }
    for name, (source, codes) in cases.items():
        for fn in (load_image, verify_image):
            with pytest.raises(ImageError) as e:
                fn(source)
            assert e.value.code in codes, (name, fn.__name__, e.value.code, e.value.reason)
            assert e.value.reason
            assert isinstance(e.value, ValueError)  # callers catching ValueError keep working
    (tmp_path / "t.jpg").write_bytes(truncated[:-300])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "t.jpg")


def test_damaged_later_frame_is_an_image_error_not_a_crash():
    """Regression: counting the frames of a multi-page file raised TypeError out of the loader,
    which aborted a whole ingest run."""
    data = two_frame_tiff_with_bad_second_frame()
    with pytest.raises(ImageError) as e:
        verify_image(data)
    assert e.value.code == "corrupt" and "frames" in e.value.reason
    # Only the first frame is used, and it is intact.
    assert tuple(load_image(data)[0, 0]) == RED


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_damaged_avif_is_an_image_error():
    """Regression: the AVIF plugin raises RuntimeError, on open and on decode, which escaped the loader."""
    good = encode(solid(RED, (40, 56)), "AVIF")
    bad_pixels = bytearray(good)
    payload = bad_pixels.find(b"mdat") + 8
    bad_pixels[payload:] = bytes(len(bad_pixels) - payload)
    bad_header = bytearray(good)
    item_locations = bad_header.find(b"iloc") + 4
    bad_header[item_locations : item_locations + 16] = bytes(16)
    for data in (bad_pixels, bad_header):
        for fn in (load_image, verify_image):
            with pytest.raises(ImageError) as e:
                fn(bytes(data))
            assert e.value.code == "corrupt", e.value.reason


def test_verify_image_reports_the_original_image():
    info = verify_image(smooth_jpeg((2400, 1600)))
    assert (info.width, info.height, info.mode, info.format, info.n_frames, info.notes) == (
        2400, 1600, "RGB", "JPEG", 1, ())
    gif = verify_image(animated_gif())
    assert (gif.format, gif.n_frames, gif.mode) == ("GIF", 3, "P")
    assert any("animated (3 frames)" in n for n in gif.notes)
    assert "CMYK converted to RGB" in verify_image(CASES["cmyk_jpeg"][0]()).notes
    assert "I;16 (high bit depth) scaled to 8-bit" in verify_image(sixteen_bit()).notes
    assert "transparency composited on the background" in verify_image(palette_image(True)).notes
    assert "transparency composited on the background" not in verify_image(palette_image(False)).notes


def test_resize_keeps_pixel_art_crisp_and_gives_exact_size():
    cells = (np.add.outer(np.arange(24) // 3, np.arange(24) // 3) % 2).astype(bool)
    art = np.where(cells[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8))
    up = resize_to(art, 96)
    assert up.shape == (96, 96, 3) and up.dtype == np.uint8
    assert len(np.unique(up.reshape(-1, 3), axis=0)) == 2  # NEAREST: no blended edge colours
    assert np.array_equal(up[::4, ::4], art)
    # The same upscale with a smooth filter blends edges: the check above can tell the difference.
    assert len(np.unique(resize_to(art, 96, pixel_art=False).reshape(-1, 3), axis=0)) > 2
    photo = load_image(smooth_jpeg((500, 300)))
    for size in (64, 299, 1000):
        assert resize_to(photo, size).shape == (size, size, 3)
    assert resize_to(art[:10, :17], 50).shape == (50, 50, 3)
