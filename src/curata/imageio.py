"""The one image loader every stage uses: ingest verification, feature extraction, the service.

Why one loader: the edge cases of real collections (CMYK JPEGs, 16-bit PNGs, palette images with
transparency, animated GIFs, decompression bombs, truncated files) must be handled identically
everywhere, otherwise a feature computed at ingest and one computed in the service disagree.
"""

from __future__ import annotations

import contextlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curata.objectstore import is_object_uri, read_bytes

# We enforce our own pixel cap (configurable, with a clear message) instead of PIL's global one.
Image.MAX_IMAGE_PIXELS = None
# Truncated files must fail loudly, never decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# What Pillow's plugins raise on malformed data besides OSError: a damaged header or frame table
# surfaces as any of these (RuntimeError: the AVIF decoder), and must become an ImageError rather
# than abort the caller's whole batch.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, RuntimeError,
                  struct.error)

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; a 100-megapixel image is refused by default
DEFAULT_BACKGROUND = (255, 255, 255)

ImageSource = str | Path | bytes


class ImageError(ValueError):
    """An image that cannot be used, with a short machine code and a human reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What verification learnt about an image, before any conversion."""

    width: int
    height: int
    mode: str
    format: str
    n_frames: int
    notes: tuple[str, ...] = ()


def _open(source: ImageSource) -> Image.Image:
    if is_object_uri(source):  # an image on object storage: its bytes first (curata.objectstore)
        try:
            source = read_bytes(str(source))
        except FileNotFoundError as e:
            raise ImageError("missing_file", str(e)) from e
        except OSError as e:
            raise ImageError("unreadable", str(e)) from e
    try:
        if isinstance(source, bytes):
            return Image.open(io.BytesIO(source))
        return Image.open(source)
    except FileNotFoundError as e:
        raise ImageError("missing_file", f"file not found: {source}") from e
    except IsADirectoryError as e:
        raise ImageError("missing_file", f"is a directory, not an image: {source}") from e
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "not a recognised image format") from e
    except OSError as e:
        # A file cut inside its header fails here, before any decoding ("Truncated File Read").
        code = "truncated" if "truncated" in str(e).lower() else "unreadable"
        raise ImageError(code, f"cannot open image: {e}") from e
    except _DECODE_ERRORS as e:  # a recognised format whose header is damaged (e.g. AVIF: RuntimeError)
        raise ImageError("corrupt", f"cannot open image: {type(e).__name__}: {e}") from e


def _check_pixels(im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("empty_image", f"image has no pixels ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"{w}x{h} = {w * h / 1e6:.1f} megapixels exceeds the cap of {max_pixels / 1e6:.1f} MP "
            "(decompression-bomb guard; raise --max-pixels to accept it)",
        )


def _decode(im: Image.Image, max_side: int | None) -> None:
    """Fully decode `im` (catching truncation), at reduced size for JPEG when allowed."""
    if max_side and im.format == "JPEG" and max(im.size) > 2 * max_side:
        # Draft mode asks libjpeg for a DCT-scaled decode (1/2, 1/4, 1/8): the whole entropy-coded
        # stream is still read, so truncation is still caught, at a fraction of the cost.
        im.draft("RGB", (max_side, max_side))
    try:
        im.load()
    except _DECODE_ERRORS as e:
        msg = str(e)
        code = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise ImageError(code, f"cannot decode image: {msg}") from e


def verify_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Open and fully decode an image; raise ImageError with a precise reason if it is unusable."""
    im = _open(source)
    with im:
        _check_pixels(im, max_pixels)
        fmt = im.format or "unknown"
        mode = im.mode
        width, height = im.size  # before draft mode shrinks it
        n_frames = _frame_count(im)
        notes: list[str] = []
        if n_frames > 1:
            notes.append(f"animated ({n_frames} frames): the first frame is used")
        if mode == "CMYK":
            notes.append("CMYK converted to RGB")
        elif mode.startswith("I;16") or mode in ("I", "F"):
            notes.append(f"{mode} (high bit depth) scaled to 8-bit")
        if im.has_transparency_data:
            notes.append("transparency composited on the background")
        # A reduced decode is enough to prove the file is whole (see _decode).
        _decode(im, max_side=512)
        return ImageInfo(width, height, mode, fmt, n_frames, tuple(notes))


def _frame_count(im: Image.Image) -> int:
    """Frames in the file. Counting walks every frame header, where damage after the first frame
    shows up (as TypeError, IndexError, struct.error... depending on the plugin)."""
    try:
        return int(getattr(im, "n_frames", 1))
    except _DECODE_ERRORS as e:
        raise ImageError("corrupt", f"cannot read the frames of this image: {type(e).__name__}: {e}") from e


def _high_depth(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


_CHUNK_PIXELS = 1 << 20


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image scaled to 8-bit L. Scaled in float32 chunks of rows: a
    float64 copy of a 40 MP image and its temporaries took ~1 GB (the result is the same for 16-bit: the
    nearest 8-bit level is never within float32 error of a rounding boundary)."""
    top = float(im.getextrema()[1])
    if im.mode == "F" and top <= 1.0:
        hi = 1.0  # float images are conventionally 0..1
    elif im.mode.startswith("I;16") or top > 255:
        hi = max(65535.0, top)  # 32-bit integers beyond 16 bits are scaled, not clipped to white
    else:
        hi = 255.0
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    scale = np.float32(255.0 / hi)
    step = max(1, _CHUNK_PIXELS // max(1, width))
    for y in range(0, height, step):
        # Cropped rows, not np.asarray(im): that copies the whole image twice (tobytes) before any scaling.
        chunk = np.array(im.crop((0, y, width, min(height, y + step))), dtype=np.float32)
        chunk *= scale
        chunk += np.float32(0.5)
        np.clip(chunk, 0, 255, out=chunk)
        out[y: y + step] = chunk  # truncation of x + 0.5: rounding
    return Image.fromarray(out, "L")


# Modes Image.reduce averages exactly (alpha premultiplied); others are reduced once converted to RGB.
_REDUCE_MODES = ("RGB", "RGBA", "L", "LA")


def _reduced(im: Image.Image, max_side: int) -> Image.Image:
    """`im` shrunk by the largest integer factor that keeps its long side >= max_side (a box average)."""
    factor = max(im.size) // max_side
    if factor < 2 or im.mode not in _REDUCE_MODES or (im.mode in ("L", "RGB") and im.has_transparency_data):
        return im  # a tRNS colour key must be matched on the original pixels, before any averaging
    return im.reduce(factor)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if _high_depth(im.mode):
        im = _to_8bit(im)
    mode = im.mode
    if mode in ("P", "L", "RGB") and im.has_transparency_data:
        # A palette transparency, or a tRNS colour key on L/RGB: the keyed pixels are transparent.
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode == "P":
        im = im.convert("RGB")
        mode = "RGB"
    if mode in ("LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        canvas = Image.new("RGB", im.size, background)
        canvas.paste(im, mask=im.getchannel("A"))
        return canvas
    if mode != "RGB":
        return im.convert("RGB")
    return im


def load_image(
    source: ImageSource,
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    reduce: bool = False,
    check_frames: bool = False,
) -> np.ndarray:
    """Load an image as an RGB uint8 array of shape (H, W, 3).

    `max_side` is a hint that the caller needs no more than that many pixels on the long side:
    JPEGs are then decoded in draft mode at the smallest DCT scale that is still >= max_side
    (the result may be larger than max_side; resizing is the caller's choice). EXIF orientation
    is applied, alpha composited on `background`, the first frame of an animation is used.

    `reduce` extends the hint to every format: the decoded image is shrunk by an integer factor
    (Image.reduce, a box average) to no less than max_side before conversion, so a 40 MP image
    needed at 512 px is never converted or copied at full size (the service; the feature engine
    leaves it off, so cached features keep their values). `check_frames` walks every frame header,
    as `verify_image` does, so a file damaged after its first frame is refused as at ingest.
    """
    im = _open(source)
    with im:
        _check_pixels(im, max_pixels)
        if check_frames:
            _frame_count(im)
            im.seek(0)
        # Image.open is positioned on the first frame and _decode loaded it. No n_frames/seek(0)
        # by default: counting frames walks the whole animation and fails on damage in later frames.
        _decode(im, max_side)
        with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image
            im = ImageOps.exif_transpose(im)
        try:
            if reduce and max_side:
                im = _reduced(_to_8bit(im) if _high_depth(im.mode) else im, max_side)
            rgb = _to_rgb(im, background)
            if reduce and max_side:
                rgb = _reduced(rgb, max_side)  # palette, 1-bit, CMYK...: once they are RGB
        except _DECODE_ERRORS as e:  # a mode Pillow cannot convert to RGB
            raise ImageError("unsupported_mode", f"cannot convert {im.mode} to RGB: {e}") from e
        return np.asarray(rgb, dtype=np.uint8).copy()


def resize_to(image: np.ndarray, size: int, *, pixel_art: bool | None = None) -> np.ndarray:
    """Resize an RGB array to size x size. Tiny pixel-art images are upscaled with NEAREST so their
    hard edges survive; everything else uses a box/bicubic filter suitable for the direction."""
    h, w = image.shape[:2]
    if h == size and w == size:
        return image  # already there (e.g. resized by an extractor's prepare step)
    if pixel_art is None:
        pixel_art = max(h, w) <= 128 and size > max(h, w)
    im = Image.fromarray(image)
    if pixel_art:
        resample = Image.Resampling.NEAREST
    elif max(h, w) > size:
        resample = Image.Resampling.BOX if max(h, w) > 2 * size else Image.Resampling.BILINEAR
    else:
        resample = Image.Resampling.BICUBIC
    return np.asarray(im.resize((size, size), resample), dtype=np.uint8)
