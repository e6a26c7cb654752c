"""Object versus background: which pixels of a picture are the thing, and which the backdrop behind it.

Product photos are shot on a studio backdrop (white, light grey, a gradient, a soft shadow under the
object), and naming the colours of the whole picture names the backdrop first. `split_foreground`
separates them on a small working copy of the image:

  * an alpha channel, where there is one, decides: transparent pixels are the background;
  * otherwise the backdrop is modelled from the image border: a quadratic surface in CIE L*a*b* over
    (x, y), fitted robustly to the border pixels (so a gradient or a vignette is followed, and an
    object that touches the border is left out of the fit); a pixel is backdrop-like when it is close
    to that surface, with darker or lighter neutral pixels forgiven more (shadows, floor reflections);
    the background is the backdrop-like pixels *connected to the border*, stopped by sharp edges, so a
    grey object on a grey backdrop stays object; enclosed regions of the backdrop's very colour (seen
    through a handle or a loop) are background too; when forgiving shadows leaves almost nothing, the
    "shadow" was a grey object and the split is redone without forgiveness;
  * the whole image is the object, and the result says why, when there is no backdrop to remove: a
    border with no dominant colour (a full-bleed painting or photo), a chromatic border (a coloured
    field is part of the picture, as in pixel art and flat art; studio backdrops are near-neutral), or
    a split that leaves (almost) nothing or (almost) everything.

The thresholds were set on the drawn studio benchmark (benchmarks/colour_names.py), not on real labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from curata.features.base import ItemError
from curata.features.colornames import rgb_to_lab

WORK_SIDE = 160  # the split is computed at this long side: fine enough for objects, ~10 ms a picture
BORDER_FRACTION = 0.03  # the border ring the backdrop is learnt from (at least 2 px)
BORDER_TOLERANCE = 8.0  # Delta E (76) from the fitted surface within which a border pixel is backdrop
MIN_BORDER_AGREEMENT = 0.55  # a backdrop covers at least this share of the border
MAX_BACKDROP_CHROMA = 14.0  # C*ab above this: a coloured field, part of the picture, not a studio backdrop
PIXEL_TOLERANCE = 10.0  # Delta E from the surface within which a pixel is backdrop-like...
SHADOW_LIGHTNESS_WEIGHT = 0.45  # ...with darkening at this weight (soft shadows), lightening at full weight
EDGE_TOLERANCE = 4.0  # Delta E to a neighbour pixel above which a pixel is an edge: backdrop never crosses it
HOLE_TOLERANCE = 5.0  # an enclosed region this close to the backdrop (Delta E, no forgiveness) is a hole...
MIN_HOLE = 0.002  # ...when at least this share of the image (the backdrop seen through a handle, a loop)
RETRY_OBJECT_SHARE = 0.05  # an object smaller than this after shadows are forgiven: retry without
MIN_OBJECT_SHARE = 0.01  # an object smaller than this is noise: name the whole image
MIN_BACKGROUND_SHARE = 0.03  # a background smaller than this is not worth removing
MIN_SPECK = 0.0015  # object components smaller than this share of the image are JPEG specks

Method = Literal["alpha", "border", "whole_image"]


@dataclass(frozen=True)
class Foreground:
    """The split of one picture, at working resolution.

    `image` is the working copy (RGB uint8), `mask` True on object pixels. `method` says how the split
    was made; `note` why the whole image is the object when it is. `background_lab` is the mean
    L*a*b* of the background pixels (None without a background, or when it is transparent).
    """

    image: np.ndarray
    mask: np.ndarray
    method: Method
    background_lab: np.ndarray | None
    background_share: float
    note: str | None = None

    @property
    def object_pixels(self) -> np.ndarray:
        """The object's pixels as an (n, 1, 3) uint8 image (the layout the palette code samples)."""
        return self.image[self.mask].reshape(-1, 1, 3)


def working_copy(image: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """`image` shrunk (area average) so that its long side is at most `side`; never enlarged."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


def _as_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8, alpha uint8 or None) from an RGB, RGBA or gray uint8 array."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ItemError(f"expected an RGB or RGBA image array of shape (H, W, 3|4), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ItemError(f"image has no pixels ({arr.shape[1]}x{arr.shape[0]})")
    if arr.dtype != np.uint8:
        raise ItemError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])
    return arr, None


def _design(ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Quadratic terms of the pixel position, scaled to [-1, 1]: 1, x, y, x^2, xy, y^2."""
    x = 2.0 * xs / max(w - 1, 1) - 1.0
    y = 2.0 * ys / max(h - 1, 1) - 1.0
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _fit_backdrop(lab: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust quadratic fit of L*a*b* to the border ring. Returns (coefficients (6, 3), inlier mask of the
    ring pixels). Each round refits on the pixels within max(tolerance, the median residual), so an
    object touching the border (a minority of it) stops pulling the surface after a round or two."""
    h, w = lab.shape[:2]
    ys, xs = np.nonzero(ring)
    design = _design(ys.astype(float), xs.astype(float), h, w)
    values = lab[ys, xs]
    keep = np.ones(len(values), bool)
    # Start from the median colour: the least squares fit of a border half object would be a mixture.
    residual = np.linalg.norm(values - np.median(values, axis=0), axis=1)
    keep = residual <= max(BORDER_TOLERANCE, float(np.median(residual)))
    coef = np.zeros((6, 3))
    for _ in range(4):
        if keep.sum() < 6:
            break
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.linalg.norm(values - design @ coef, axis=1)
        keep = residual <= max(BORDER_TOLERANCE, float(np.median(residual)))
    return coef, residual <= BORDER_TOLERANCE


def _ring(h: int, w: int) -> np.ndarray:
    b = max(2, round(BORDER_FRACTION * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:b] = ring[-b:] = True
    ring[:, :b] = ring[:, -b:] = True
    return ring


def _whole(image: np.ndarray, note: str) -> Foreground:
    return Foreground(image, np.ones(image.shape[:2], bool), "whole_image", None, 0.0, note)


def whole_image(image: np.ndarray, note: str = "asked for the whole image") -> Foreground:
    """No split: every pixel is the object (the namer as it was before backdrops were removed)."""
    return _whole(working_copy(_as_image(image)[0]), note)


def _edges(lab: np.ndarray) -> np.ndarray:
    """Per pixel, the largest Delta E (76) to a 4-neighbour, or 2/3 of the largest across it (a step that
    downscaling blurred over two pixels is still a step), in units of EDGE_TOLERANCE at one pixel."""
    out = np.zeros(lab.shape[:2])
    for axis in (0, 1):
        step = np.linalg.norm(np.diff(lab, axis=axis), axis=2)
        across = np.linalg.norm(lab.take(range(2, lab.shape[axis]), axis) - lab.take(range(lab.shape[axis] - 2),
                                                                                       axis), axis=2)
        inner = [slice(None)] * 2
        for lo, hi in ((1, None), (None, -1)):
            inner[axis] = slice(lo, hi)
            np.maximum(out[tuple(inner)], step, out=out[tuple(inner)])
        inner[axis] = slice(1, -1)
        np.maximum(out[tuple(inner)], across * (2 / 3), out=out[tuple(inner)])
    return out


def _holes(candidates: np.ndarray, min_area: float) -> np.ndarray:
    """The connected regions of `candidates` (enclosed pixels of the backdrop's very colour) large enough to be
    the backdrop seen through the object rather than a stray pixel of it."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=4)
    big = stats[:, cv2.CC_STAT_AREA] >= max(min_area, 4)
    big[0] = False
    return big[labels]


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """The object mask without components smaller than MIN_SPECK of the image (JPEG noise in a backdrop)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < max(2, MIN_SPECK * mask.size)
    small[0] = False  # label 0 is the background of this labelling (mask == False)
    return mask & ~small[labels] if small.any() else mask


def _backdrop(diff: np.ndarray, edges: np.ndarray, shadow_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(background, object) masks from the difference to the backdrop surface and the edge strength."""
    # A soft shadow on a neutral backdrop darkens it without changing its hue: forgive darkening.
    dark = np.where(diff[..., 0] < 0, shadow_weight, 1.0) * diff[..., 0]
    distance = np.sqrt(dark**2 + diff[..., 1] ** 2 + diff[..., 2] ** 2)
    # An object's outline is a sharp step, a shadow's is soft: the backdrop stops at steps, so a grey
    # object on a grey backdrop (or a white shirt on white) stays object however close its colour.
    like = ((distance <= PIXEL_TOLERANCE) & (edges <= EDGE_TOLERANCE)).astype(np.uint8)
    # Backdrop = backdrop-like pixels connected (4-neighbours: no leaking through a diagonal gap) to the edge.
    _, labels = cv2.connectedComponents(like, connectivity=4)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.isin(labels, np.unique(edge[edge > 0]))
    if HOLE_TOLERANCE > 0:
        background |= _holes(~background & (np.linalg.norm(diff, axis=2) <= HOLE_TOLERANCE), MIN_HOLE * like.size)
    return background, _drop_specks(~background)


def split_foreground(image: np.ndarray) -> Foreground:
    """Separate object from background in an RGB(A) uint8 image (see the module docstring)."""
    rgb, alpha = _as_image(image)
    small = working_copy(rgb)
    h, w = small.shape[:2]
    if alpha is not None and (alpha < 128).mean() >= MIN_BACKGROUND_SHARE:
        mask = working_copy(alpha) >= 128
        if mask.mean() < MIN_OBJECT_SHARE:
            return _whole(small, "the image is (almost) entirely transparent: named all of it")
        return Foreground(small, mask, "alpha", None, float(1 - mask.mean()), None)
    if min(h, w) < 8:
        return _whole(small, "too small to tell a backdrop from an object: named the whole image")
    lab = rgb_to_lab(small)
    ring = _ring(h, w)
    coef, inliers = _fit_backdrop(lab, ring)
    if inliers.mean() < MIN_BORDER_AGREEMENT:
        return _whole(small, "no single backdrop colour around the border (a full-bleed picture): "
                             "named the whole image")
    yy, xx = np.mgrid[:h, :w]
    surface = (_design(yy.ravel().astype(float), xx.ravel().astype(float), h, w) @ coef).reshape(h, w, 3)
    ys, xs = np.nonzero(ring)
    border_chroma = float(np.median(np.hypot(surface[ys, xs, 1], surface[ys, xs, 2])[inliers]))
    if border_chroma > MAX_BACKDROP_CHROMA:
        return _whole(small, f"the border is a coloured field (chroma {border_chroma:.0f}), part of the "
                             "picture rather than a studio backdrop: named the whole image")
    diff = lab - surface
    edges = _edges(lab)
    background, mask = _backdrop(diff, edges, SHADOW_LIGHTNESS_WEIGHT)
    if mask.mean() < RETRY_OBJECT_SHARE:
        # Forgiving darkening left (almost) nothing: the "shadow" was a grey object on its own shadow.
        background, mask = _backdrop(diff, edges, 1.0)
    object_share, background_share = float(mask.mean()), float(background.mean())
    if object_share < MIN_OBJECT_SHARE:
        return _whole(small, "nothing but the backdrop (a plain picture): named the whole image")
    if background_share < MIN_BACKGROUND_SHARE:
        return _whole(small, "the backdrop is a sliver of the picture: named the whole image")
    return Foreground(small, mask, "border", lab[background].mean(axis=0), background_share, None)
