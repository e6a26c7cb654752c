"""Dominant colours: a k-colour palette per image (k-means in CIE L*a*b*), and words for it.

The vector is k entries of [L*, a*, b*, share], sorted by share, so it can be stored and cached like
any other feature; `describe_palette` and `dominant_color_names` turn it back into hex codes and
colour names for people and for the zero-label colour namer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from curata.features.base import Extractor, register
from curata.features.color import as_rgb_image, sample_pixels
from curata.features.colornames import Vocabulary, lab_to_rgb, name_lab_colors, rgb_to_hex, rgb_to_lab

PALETTE_SAMPLE = 4096  # pixels per image (stratified): shares within ~1% of the all-pixel shares
_N_INIT = 3
_MAX_ITER = 50
_TOL = 0.05  # L*a*b* units
BIN_SHIFT = 3  # colour bins of 8 x 8 x 8 RGB levels (see extract_palette)


def _kmeans_pp(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on weighted points (weights = pixel counts of each distinct colour)."""
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.choice(len(x), p=w / w.sum())]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        p = w * d2
        total = p.sum()
        # Fewer distinct points than k is handled before we get here, so total > 0; guard anyway.
        centres[j] = x[rng.choice(len(x), p=p / total)] if total > 0 else x[int(np.argmax(d2))]
        d2 = np.minimum(d2, ((x - centres[j]) ** 2).sum(axis=1))
    return centres


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # argmin |x - c|^2 = argmin (|c|^2 - 2 x.c): one small matmul instead of an (n, k, 3) temporary
    # reduced over its last axis (~10x faster in numpy for 3-D points); |x|^2 does not change it.
    return ((centres**2).sum(axis=1)[None, :] - 2.0 * (x @ centres.T)).argmin(axis=1)


def weighted_kmeans(x: np.ndarray, w: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on weighted points; best of a few seeded k-means++ starts. Returns (centres, labels).

    Written out in numpy rather than calling scikit-learn or cv2.kmeans: the inputs are a few
    thousand 3-D points, where this is ~10x faster than sklearn's KMeans (thread-pool overhead),
    and unlike cv2.kmeans it takes weights (so each distinct colour is clustered once, with its
    pixel count) and draws from its own seeded generator instead of OpenCV's global RNG state.
    """
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for init in range(_N_INIT):
        rng = np.random.default_rng(seed + init)
        centres = _kmeans_pp(x, w, k, rng)
        labels = np.full(len(x), -1)
        for _ in range(_MAX_ITER):
            new_labels = _assign(x, centres)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            mass = np.bincount(labels, weights=w, minlength=k)
            previous = centres.copy()
            for c in range(x.shape[1]):
                sums = np.bincount(labels, weights=w * x[:, c], minlength=k)
                # An emptied cluster keeps its old centre; it ends with share 0 and is dropped.
                centres[:, c] = np.where(mass > 0, sums / np.maximum(mass, 1e-12), centres[:, c])
            # The long tail of Lloyd iterations flips a few border colours and moves centres by
            # hundredths of a Delta E: invisible in a palette, so stop there.
            if np.abs(centres - previous).max() < _TOL:
                break
        labels = _assign(x, centres)
        inertia = float((w * ((x - centres[labels]) ** 2).sum(axis=1)).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres.copy(), labels)
    assert best is not None
    return best[1], best[2]


def extract_palette(image: np.ndarray, k: int = 5, *, seed: int = 0) -> np.ndarray:
    """The k dominant colours of an RGB uint8 image as a (4k,) vector of [L*, a*, b*, share], by share.

    With fewer distinct colours than k, the missing entries repeat the dominant colour with share 0.
    """
    px = sample_pixels(as_rgb_image(image), PALETTE_SAMPLE).reshape(-1, 3)
    # Cluster colour bins weighted by their pixel counts rather than pixels: flat art and pixel art
    # have a handful of colours, which then need no clustering at all and come out with exact shares.
    # Bins are 8 levels wide per channel (at most ~2 Delta E across), each represented by the mean of
    # its pixels, so a flat colour stays exact while a photo's few thousand distinct colours shrink to
    # a few hundred bins: a 64 px product photo's palette in ~4 ms instead of ~9, within ~1 Delta E.
    codes = ((px[:, 0].astype(np.int32) >> BIN_SHIFT) << 16) | ((px[:, 1].astype(np.int32) >> BIN_SHIFT) << 8) \
        | (px[:, 2] >> BIN_SHIFT)
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    rgb = np.stack([np.bincount(inverse, weights=px[:, c], minlength=len(counts)) for c in range(3)], axis=1)
    rgb = np.rint(rgb / counts[:, None]).astype(np.uint8)
    lab = rgb_to_lab(rgb)
    weights = counts.astype(np.float64)
    if len(lab) <= k:
        centres, shares = lab, weights / weights.sum()
    else:
        centres, labels = weighted_kmeans(lab, weights, k, seed)
        shares = np.bincount(labels, weights=weights, minlength=k) / weights.sum()
        keep = shares > 0
        centres, shares = centres[keep], shares[keep]
    # Largest share first; ties broken by lightness so the order never depends on cluster numbering.
    order = np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0], -shares))
    centres, shares = centres[order], shares[order]
    out = np.empty((k, 4))
    out[:, :3] = centres[0]
    out[:, 3] = 0.0
    out[: len(centres), :3] = centres
    out[: len(centres), 3] = shares
    return out.ravel()


@register
class PaletteExtractor(Extractor):
    """k dominant colours by k-means in CIE L*a*b*: k x [L*, a*, b*, share], largest share first."""

    name = "palette"
    version = "2"  # 2: colours binned before k-means (faster, within ~1 Delta E of v1)
    # A palette is a coarse summary: 256 px keeps every region that could win a share of >= 1%.
    max_side = 256

    def __init__(self, k: int = 5):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    @property
    def dim(self) -> int:
        return 4 * self.k

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    def transform(self, batch: list[Any]) -> np.ndarray:
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for i, image in enumerate(batch):
            out[i] = extract_palette(image, self.k)
        return out


def _entries(vector: np.ndarray, k: int | None) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).ravel()
    k = len(v) // 4 if k is None else k
    if len(v) != 4 * k:
        raise ValueError(f"a palette vector of k={k} colours has {4 * k} values, got {len(v)}")
    entries = v.reshape(k, 4)
    return entries[entries[:, 3] > 0]


def describe_palette(vector: np.ndarray, k: int | None = None) -> list[dict[str, Any]]:
    """Readable palette: one dict per colour with a share > 0, largest first.

    Keys: `hex`, `rgb`, `share`, `lab`, `basic` (one of the 12 basic terms), `css` (nearest CSS
    named colour), `delta_e` (CIEDE2000 to that CSS colour), `basic_delta_e` (to the basic term's
    nearest reference point). `k` defaults to len(vector) // 4.
    """
    entries = _entries(vector, k)
    if len(entries) == 0:
        return []
    lab = entries[:, :3]
    rgb = lab_to_rgb(lab)
    basic = name_lab_colors(lab, "basic")
    css = name_lab_colors(lab, "css")
    return [
        {
            "hex": rgb_to_hex(rgb[i]),
            "rgb": tuple(int(c) for c in rgb[i]),
            "share": float(entries[i, 3]),
            "lab": tuple(round(float(c), 2) for c in lab[i]),
            "basic": basic[i][0],
            "css": css[i][0],
            "delta_e": round(css[i][1], 2),
            "basic_delta_e": round(basic[i][1], 2),
        }
        for i in range(len(entries))
    ]


def dominant_color_names(
    vector: np.ndarray, k: int | None = None, vocabulary: Vocabulary = "basic"
) -> list[tuple[str, float]]:
    """Colour names of a palette with their total share, largest first (entries with one name merged).

    E.g. a palette of navy 0.4, sky blue 0.2, white 0.4 gives [("blue", 0.6), ("white", 0.4)].
    """
    entries = _entries(vector, k)
    names = [name for name, _ in name_lab_colors(entries[:, :3], vocabulary)]
    return merge_shares(zip(names, entries[:, 3].tolist(), strict=True))


def merge_shares(named: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(name, share) pairs with equal names added up, largest total first (ties by name)."""
    totals: dict[str, float] = {}
    for name, share in named:
        totals[name] = totals.get(name, 0.0) + float(share)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
