"""Raw pixels: the image at a small fixed size, flattened — the feature for pixel art.

A pretrained CNN sees a 24x24 CryptoPunk upscaled to 224 px and blurred by its early layers: a
1-pixel earring or a 2-pixel cigarette barely moves the embedding. On pixel art every pixel is a
design decision and the images of a collection share one grid, so the pixels themselves, at the
art's own resolution, are the sharpest description there is (CryptoPunks accessories, 5-fold
micro-F1: 0.943 with logistic regression on EfficientNet + colour histograms, 0.976 with ridge on
`pixels`, 0.988 on `pixels_onehot`; see README "Benchmarks").

Resampling matters. Pixel art (a tiny image, or one with few distinct colours such as art upscaled
by an integer or non-integer factor) is resized with NEAREST: sampling at cell centres gives the
original cells back exactly, with no blended colours that exist nowhere in the art. Photos are
reduced by area averaging (box filter), which is the anti-aliased estimate of each output pixel.
Transparency was already composited on the loader's fixed background.

`levels` > 0 adds, per pixel, a one-hot code of the pixel's colour on a fixed `levels`^3 RGB grid:
"this pixel is dark red" becomes one linear feature, which a linear model cannot form from the three
channel values. It multiplies the width by levels^3, so it is off by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from curata.features.base import Extractor, ItemError, register
from curata.features.color import as_rgb_image, sample_pixels

if TYPE_CHECKING:
    import pandas as pd

Resample = Literal["auto", "nearest", "area"]

# An image with at most this many distinct colours is treated as pixel art (or flat graphics) by
# resample="auto". Photos have thousands; the pixel-art collections measured here have 60 to 219;
# GIF-style palettes hold 256. JPEG-compressed pixel art has many more and is reduced by area.
PIXEL_ART_MAX_COLOURS = 256
# Distinct colours are counted on a jittered sample of at most this many pixels (a photo already
# shows more than PIXEL_ART_MAX_COLOURS on a sample this size).
_COLOUR_SAMPLE = 256 * 256
MAX_SIZE = 128


def is_pixel_art(image: np.ndarray, size: int) -> bool:
    """True if `image` should be resized to `size` with NEAREST: it is not larger than the target
    (upscaling: nothing to average, and every source pixel stays exact), or it has at most
    PIXEL_ART_MAX_COLOURS distinct colours."""
    h, w = image.shape[:2]
    if max(h, w) <= size:
        return True
    px = sample_pixels(image, _COLOUR_SAMPLE).reshape(-1, 3).astype(np.uint32)
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    return len(np.unique(packed)) <= PIXEL_ART_MAX_COLOURS


def looks_like_pixel_art(items: pd.DataFrame, sample: int = 24, seed: int = 0) -> bool:
    """Whether most of a seeded sample of the items' images is pixel art, by the test the `pixels`
    extractors resize with (`is_pixel_art`: at most 256 distinct colours, or no larger than the 24 x 24
    grid). Reads `sample` images, whatever the collection's size."""
    from curata.imageio import load_image

    votes = []
    for path in items["image"].dropna().sample(min(sample, int(items["image"].notna().sum())),
                                               random_state=seed).tolist():
        try:
            votes.append(is_pixel_art(load_image(path), 24))
        except Exception:  # an unreadable file votes for nothing
            continue
    return bool(votes) and float(np.mean(votes)) > 0.5


def resize_pixels(image: np.ndarray, size: int, resample: Resample = "auto") -> np.ndarray:
    """An RGB uint8 image resized to size x size (aspect ratio not kept: every collection image maps
    onto the same grid). NEAREST for pixel art, box (area) averaging otherwise; see the module doc."""
    image = as_rgb_image(image)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    nearest = resample == "nearest" or (resample == "auto" and is_pixel_art(image, size))
    if nearest:
        method = Image.Resampling.NEAREST
    elif max(h, w) > size:
        method = Image.Resampling.BOX
    else:  # a photo smaller than the grid ("area" asked for explicitly): smooth upscaling
        method = Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), method), dtype=np.uint8)


@register
class Pixels(Extractor):
    """The image at `size` x `size`, RGB in 0..1, row-major (y, x, channel), plus an optional one-hot
    colour code per pixel on a `levels`^3 grid (`levels` = 0: none)."""

    name = "pixels"
    version = "1"
    # JPEGs far larger than this are decoded at reduced DCT scale; still >= 2x MAX_SIZE, so the box
    # filter has real pixels to average.
    max_side = 2 * MAX_SIZE

    def __init__(self, size: int | str = 24, resample: Resample = "auto", levels: int | str = 0):
        self.size = int(size)
        self.resample = resample
        self.levels = int(levels)
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"pixels size must be 1..{MAX_SIZE}, got {self.size}")
        if resample not in ("auto", "nearest", "area"):
            raise ValueError(f"pixels resample must be auto, nearest or area, got {resample!r}")
        if self.levels == 1 or not 0 <= self.levels <= 6:
            raise ValueError(f"pixels levels must be 0 (off) or 2..6, got {self.levels}")

    @property
    def dim(self) -> int:
        return self.size * self.size * (3 + self.levels ** 3)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"size": self.size, "resample": self.resample}
        if self.levels:
            params["levels"] = self.levels
        return params

    def prepare(self, item: Any) -> np.ndarray:
        # In the loader threads: a batch then holds size x size thumbnails, not full images.
        return resize_pixels(item, self.size, self.resample)

    def transform(self, batch: list[Any]) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), np.float32)
        n_px = self.size * self.size
        for i, image in enumerate(batch):
            small = np.asarray(image)
            if small.shape[:2] != (self.size, self.size) or small.ndim != 3:
                small = self.prepare(small)  # called without the engine: reduce here
            if small.dtype != np.uint8:
                raise ItemError(f"expected a uint8 image, got dtype {small.dtype}")
            out[i, : n_px * 3] = small.reshape(-1) / np.float32(255)
            if self.levels:
                q = (small.reshape(-1, 3).astype(np.int32) * (self.levels - 1) + 127) // 255
                code = (q[:, 0] * self.levels + q[:, 1]) * self.levels + q[:, 2]
                out[i, n_px * 3 + np.arange(n_px) * self.levels ** 3 + code] = 1.0
        return out


@register
class PixelsOneHot(Pixels):
    """`pixels` plus the per-pixel one-hot colour code on a 3-level RGB grid (27 colours) by default:
    the feature for linear models on pixel art. Measured on the CryptoPunks accessories with ridge
    (one outer fold): raw pixels 0.973 micro-F1, + 2-level code 0.982, + 3-level code 0.987.
    Tasks name extractors without parameters, hence a name of its own."""

    name = "pixels_onehot"

    def __init__(self, size: int | str = 24, resample: Resample = "auto", levels: int | str = 3):
        super().__init__(size, resample, levels)
