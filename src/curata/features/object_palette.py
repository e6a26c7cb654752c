"""The object's palette as a cached feature: what /v1/colours says about an image, stored per content hash.

`object_palette` caches `curata.features.colour_names.object_palette_vector`: the k-colour palette of the
object's pixels (the studio backdrop removed by `split_foreground`), then the backdrop's colour and share, the
split method and the object's share. `read_object_palette` / `object_colour_names` name it back exactly as
`name_colours` names the decoded image, so the service's item colours, facet and filter, cluster names and the
zero-label namer agree with /v1/colours for the same file. The whole-image `palette` feature is unchanged;
callers read `object_palette` where the workspace has it and fall back to `palette` otherwise
(`colour_feature`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curata.features.base import register
from curata.features.colornames import Vocabulary
from curata.features.colour_names import (
    OBJECT_PALETTE_EXTRA,
    object_palette_k,
    object_palette_vector,
    read_object_palette,
)
from curata.features.foreground import working_copy
from curata.features.palette import PaletteExtractor

OBJECT_PALETTE = "object_palette"
PALETTE = "palette"


@register
class ObjectPaletteExtractor(PaletteExtractor):
    """The object's k-colour palette, backdrop apart: k x [L*, a*, b*, share] + [background L*, a*, b*, share,
    method code, object share] (see `curata.features.colour_names.OBJECT_PALETTE_EXTRA`); `k` as `palette`'s."""

    name = OBJECT_PALETTE
    version = "1"
    # The full decode, as /v1/colours and `curata describe` do: a JPEG draft decode gives other pixels, and the
    # cached names must equal theirs. `prepare` then shrinks to the split's working size in the loader threads.
    max_side = None

    @property
    def dim(self) -> int:
        return 4 * self.k + OBJECT_PALETTE_EXTRA

    def prepare(self, item: Any) -> Any:
        # Exact: `split_foreground` works on this very working copy (shrinking it again is a no-op). RGBA is
        # left whole: its transparency test reads the full-size alpha.
        arr = np.asarray(item)
        return working_copy(arr) if arr.ndim == 3 and arr.shape[2] == 3 else arr

    def transform(self, batch: list[Any]) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        out = np.empty((len(batch), self.dim), dtype=np.float32)
        # The backdrop fit is a few tiny least-squares problems per image: one BLAS thread each is ~3x faster
        # than OpenBLAS spreading them over busy cores (measured: ~28 vs ~86 ms a picture on 2 shared cores).
        with threadpool_limits(1, "blas"):
            for i, image in enumerate(batch):
                out[i] = object_palette_vector(image, self.k)
        return out


def is_object_palette(vector_or_width: np.ndarray | int) -> bool:
    """Whether a vector (or a width) is an object palette (4k + 6 values) rather than a palette (4k)."""
    width = vector_or_width if isinstance(vector_or_width, int) else np.asarray(vector_or_width).shape[-1]
    return width >= 4 + OBJECT_PALETTE_EXTRA and (width - OBJECT_PALETTE_EXTRA) % 4 == 0


def object_colour_names(vector: np.ndarray, vocabulary: Vocabulary = "basic") -> list[tuple[str, float]]:
    """(name, share of the object) of an object palette vector, in the namer's order (its first is the top name
    /v1/colours gives): the `dominant_color_names` of the object palette."""
    return [(c.name, float(c.share)) for c in read_object_palette(vector, vocabulary).object]


def object_names(matrix: np.ndarray, vocabulary: Vocabulary = "basic") -> list[list[tuple[str, float]]]:
    """`object_colour_names` of every row of a matrix of object palette vectors, the colours of all rows named
    in one call (~5x faster than row by row: the service names a whole collection's colour index this way).
    A row of zeros names nothing."""
    from curata.features.colornames import name_lab_colors
    from curata.features.colour_names import METHOD_CODES, basic_names, rank_colours
    from curata.features.palette import merge_shares

    rows = np.asarray(matrix, np.float32)
    rows = rows[None, :] if rows.ndim == 1 else rows
    if not len(rows):
        return []
    if vocabulary not in ("basic", "css"):
        raise ValueError(f"unknown colour vocabulary '{vocabulary}': use basic or css")
    k = object_palette_k(rows[0])
    entries = rows[:, :4 * k].astype(np.float64).reshape(len(rows), k, 4)
    keep = entries[:, :, 3] > 0
    lab = entries[keep][:, :3]
    if vocabulary == "basic":  # named on the palette's rounded L*a*b*, as `read_object_palette` does
        flat = basic_names(np.array([[round(float(c), 2) for c in row] for row in lab]).reshape(-1, 3))
    else:
        flat = [n for n, _ in name_lab_colors(lab, "css")] if len(lab) else []
    cut_out = np.rint(rows[:, 4 * k + 4]) != METHOD_CODES["whole_image"]
    out: list[list[tuple[str, float]]] = []
    at = 0
    for i in range(len(rows)):
        n = int(keep[i].sum())
        merged = rank_colours(merge_shares(zip(flat[at:at + n], entries[i, keep[i], 3].tolist(), strict=True)),
                              cut_out=vocabulary == "basic" and bool(cut_out[i]))
        at += n
        out.append([(name, round(share, 4)) for name, share in merged])
    return out


def colour_names_of(vector: np.ndarray, vocabulary: Vocabulary = "basic") -> list[tuple[str, float]]:
    """Colour names with shares of either kind of vector: the object's names for an object palette, the whole
    image's (`dominant_color_names`) for a palette. A row of zeros names nothing."""
    from curata.features.palette import dominant_color_names

    if not np.any(vector):
        return []
    if is_object_palette(vector):
        return object_colour_names(vector, vocabulary)
    return dominant_color_names(vector, None, vocabulary)


def palette_part(vector: np.ndarray) -> np.ndarray:
    """The k x [L*, a*, b*, share] palette of either kind of vector (an object palette's object colours)."""
    v = np.asarray(vector)
    return v[..., :4 * object_palette_k(v[0] if v.ndim > 1 else v)] if is_object_palette(v) else v


def computed(features_dir: Path, name: str) -> bool:
    """Whether the workspace's feature folder holds a store of the extractor `name` as made by default (this
    version, default parameters): an old version's store answers no lookup."""
    from curata.features.engine import make_extractor
    from curata.features.store import FeatureStore

    return FeatureStore.for_extractor(features_dir, make_extractor(name)).table_path.is_dir()


def colour_feature(features_dir: Path) -> str | None:
    """Which colour feature to read: `object_palette` where it was computed, else `palette`, else None."""
    for name in (OBJECT_PALETTE, PALETTE):
        if computed(features_dir, name):
            return name
    return None
