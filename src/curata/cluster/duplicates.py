"""Near-duplicate detection, grouped: perceptual hashes within a Hamming distance, or embeddings above a
cosine similarity. Neither ever builds an n x n matrix.

pHash: the 64-bit DCT perceptual hash (the imagehash library's `phash`: 32x32 greyscale, 2-D DCT, the
8x8 lowest frequencies thresholded at their median), computed here with scipy so it adds no
dependency. Pairs within distance t are found by multi-index hashing: split the hash into t + 1
bands; by the pigeonhole principle two hashes within t bits agree exactly on at least one band, so
only items sharing a band value are compared. Buckets are compared in row blocks, so memory stays
bounded even when one band value is very common (blank backgrounds).

Embeddings: rows L2-normalised, pairs with inner product >= threshold by blockwise matrix products
(memory bounded by the block size), or FAISS range search on request.

Pairs become groups by connected components (a chain a~b~c is one group even if a and c are further
apart than the threshold; each group reports its largest pair distance). The pairs reported are the
edges that joined the groups: for items with identical hashes, each is paired with the first only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curata.cluster.core import ClusterInputError

HASH_BITS = 64
DEFAULT_HAMMING = 8  # JPEG re-encoding, resizing and mild edits stay within ~0-6 bits of 64
DEFAULT_COSINE = 0.95
_BLOCK = 2048  # rows per block in bucket and matrix comparisons: bounds memory
_COLUMNS = 8192  # columns per similarity block: 2048 x 8192 float32 = 64 MB at most


@dataclass
class DuplicateGroups:
    """Groups of near-duplicate items (2 or more each, largest first) and the pairs that joined them."""

    method: str
    threshold: float
    groups: list[list[str]]
    pairs: list[tuple[str, str, float]] = field(repr=False)  # (id, id, distance or similarity)
    spread: list[float] = field(default_factory=list)  # per group: the largest pair distance / lowest similarity
    items: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why it was left out (unreadable image)

    @property
    def duplicates(self) -> int:
        """Items that could be removed while keeping one per group."""
        return sum(len(g) - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "items": self.items,
                "groups": len(self.groups), "redundant_items": self.duplicates,
                "skipped": self.skipped,
                "members": [{"ids": g, "spread": round(s, 4)} for g, s in zip(self.groups, self.spread, strict=True)]}


# --------------------------------------------------------------------------------------------------
# Perceptual hash


def phash_image(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an RGB uint8 array (bit-for-bit imagehash.phash of the same pixels)."""
    from PIL import Image
    from scipy.fft import dct

    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def phash_files(sources: Sequence[str | Path | bytes], workers: int = 4) -> tuple[np.ndarray, dict[int, str]]:
    """Hashes of image files as uint64 (decoded in parallel through the shared loader), and
    {row: reason} for the ones that could not be read (their hash is 0 and must be ignored)."""
    from curata.imageio import load_image

    def one(source: str | Path | bytes) -> tuple[int, str | None]:
        try:
            # Draft-decoding a big JPEG straight to ~128 px changes the hash by a bit or two at most.
            return phash_image(load_image(source, max_side=128)), None
        except (OSError, ValueError) as e:  # ImageError is a ValueError
            return 0, str(e)

    hashes = np.zeros(len(sources), np.uint64)
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (h, error) in enumerate(pool.map(one, sources)):
            hashes[i] = h
            if error is not None:
                errors[i] = error
    return hashes, errors


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)  # uint8: a block of distances stays small


def _bands(threshold: int) -> list[tuple[int, int]]:
    """(shift, mask) of threshold + 1 contiguous bands covering the 64 bits as evenly as possible."""
    m = threshold + 1
    widths = [HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, (1 << w) - 1))
        shift += w
    return out


def hamming_pairs(hashes: np.ndarray, threshold: int = DEFAULT_HAMMING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of every pair i < j of hashes within `threshold` bits, by multi-index hashing."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    threshold = int(threshold)
    if not 0 <= threshold < HASH_BITS // 2:
        raise ClusterInputError(f"Hamming threshold must be between 0 and {HASH_BITS // 2 - 1}, got {threshold}")
    found_i, found_j, found_d = [], [], []
    for shift, mask in _bands(threshold):
        keys = (hashes >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            members = np.sort(order[s:e])
            block_hashes = hashes[members]
            for b in range(0, len(members), _BLOCK):
                rows = slice(b, b + _BLOCK)
                d = _popcount(block_hashes[rows, None] ^ block_hashes[None, :])
                ii, jj = np.nonzero(d <= threshold)
                upper = jj > ii + b  # each unordered pair once
                found_i.append(members[ii[upper] + b])
                found_j.append(members[jj[upper]])
                found_d.append(d[ii[upper], jj[upper]])
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    i, j = np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)
    d = np.concatenate(found_d).astype(np.int64)
    # A pair agreeing on several bands was found several times.
    _, first = np.unique(i.astype(np.int64) * len(hashes) + j, return_index=True)
    return i[first], j[first], d[first]


def hamming_pairs_brute(hashes: np.ndarray, threshold: int = DEFAULT_HAMMING
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same pairs by comparing everything with everything (reference for tests; O(n^2))."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    d = _popcount(hashes[:, None] ^ hashes[None, :]).astype(np.int64)
    i, j = np.nonzero(np.triu(d <= threshold, k=1))
    return i, j, d[i, j]


# --------------------------------------------------------------------------------------------------
# Embeddings


def cosine_pairs(vectors: Any, threshold: float = DEFAULT_COSINE, use_faiss: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every pair i < j of rows with cosine similarity >= threshold. Zero rows (no
    vector, e.g. empty text) are never anyone's duplicate.

    Exact search either way. Blockwise BLAS products are the default: on 20k x 384 vectors they took
    3 s where FAISS's flat range search took 16-20 s (2 cores); `use_faiss=True` is there for indexes
    that FAISS can accelerate later (GPU, IVF)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ClusterInputError(f"vectors must be a 2-D matrix, got shape {x.shape}")
    if not -1.0 <= threshold <= 1.0:
        raise ClusterInputError(f"cosine threshold must be between -1 and 1, got {threshold}")
    if not np.isfinite(x).all():
        raise ClusterInputError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    valid = np.flatnonzero(norms > 0)
    x = np.ascontiguousarray(x[valid] / norms[valid, None])
    i, j, s = _faiss_range(x, threshold) if use_faiss else _block_range(x, threshold)
    keep = i < j
    return valid[i[keep]], valid[j[keep]], s[keep]


def _faiss_range(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    found_i, found_j, found_s = [], [], []
    for b in range(0, len(x), _BLOCK):  # queries in blocks: results of one block at a time in memory
        # Range search keeps results with inner product > radius; a hair below the threshold keeps "=".
        lims, sims, idx = index.range_search(x[b : b + _BLOCK], float(threshold) - 1e-6)
        counts = np.diff(lims.astype(np.int64))
        found_i.append(np.repeat(np.arange(b, b + len(counts)), counts))
        found_j.append(idx.astype(np.int64))
        found_s.append(sims)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def _block_range(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found_i, found_j, found_s = [], [], []
    for b in range(0, len(x), _BLOCK):
        rows = x[b : b + _BLOCK]
        # Only column blocks from b on (pairs with j >= i), each product _BLOCK x _COLUMNS floats.
        for c in range(b, len(x), _COLUMNS):
            sims = rows @ x[c : c + _COLUMNS].T
            ii, jj = np.nonzero(sims >= threshold - 1e-6)
            found_i.append(ii + b)
            found_j.append(jj + c)
            found_s.append(sims[ii, jj])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


# --------------------------------------------------------------------------------------------------
# Grouping


def group_pairs(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components of the pair graph with 2+ members, largest first (rows sorted within)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    counts = np.bincount(comp)
    groups = [np.flatnonzero(comp == c) for c in np.flatnonzero(counts >= 2)]
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


def _groups(method: str, threshold: float, ids: Sequence[str], i: np.ndarray, j: np.ndarray, v: np.ndarray,
            worst: str, skipped: dict[str, str] | None = None) -> DuplicateGroups:
    ids = [str(x) for x in ids]
    rows = group_pairs(len(ids), i, j)
    comp = np.full(len(ids), -1)
    for g, members in enumerate(rows):
        comp[members] = g
    spread = []
    for g in range(len(rows)):
        values = v[comp[i] == g]
        spread.append(float(values.max() if worst == "max" else values.min()))
    pairs = [(ids[a], ids[b], float(d)) for a, b, d in zip(i, j, v, strict=True)]
    return DuplicateGroups(method, threshold, [[ids[r] for r in g] for g in rows], pairs, spread, len(ids),
                           skipped or {})


def phash_groups(ids: Sequence[str], hashes: np.ndarray, threshold: int = DEFAULT_HAMMING,
                 errors: dict[int, str] | None = None) -> DuplicateGroups:
    """Groups of items whose perceptual hashes are within `threshold` bits (rows in `errors` ignored)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(ids) != len(hashes):
        raise ValueError(f"{len(ids)} ids for {len(hashes)} hashes")
    errors = errors or {}
    ok = np.array([r not in errors for r in range(len(ids))], bool)
    rows = np.flatnonzero(ok)
    # Identical hashes are one group without comparing them (thousands of blank images would
    # otherwise make millions of pairs): search the distinct hashes, then join each copy to the
    # first item with its hash by a distance-0 edge.
    distinct, first, inverse = np.unique(hashes[rows], return_index=True, return_inverse=True)
    ui, uj, d = hamming_pairs(distinct, threshold)
    copies = np.flatnonzero(first[inverse] != np.arange(len(rows)))
    i = np.concatenate([first[ui], first[inverse[copies]]])
    j = np.concatenate([first[uj], copies])
    d = np.concatenate([d, np.zeros(len(copies), np.int64)])
    skipped = {str(ids[r]): reason for r, reason in errors.items()}
    return _groups("phash", threshold, [ids[r] for r in rows], i, j, d.astype(float), "max", skipped)


def image_duplicates(ids: Sequence[str], images: Sequence[str | Path | bytes], threshold: int = DEFAULT_HAMMING,
                     workers: int = 4) -> DuplicateGroups:
    """Hash every image and group the near-duplicates (unreadable images listed in `skipped`)."""
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    hashes, errors = phash_files(images, workers)
    return phash_groups(ids, hashes, threshold, errors)


def embedding_duplicates(ids: Sequence[str], vectors: Any, threshold: float = DEFAULT_COSINE,
                         use_faiss: bool = False) -> DuplicateGroups:
    """Groups of items whose embeddings have cosine similarity >= `threshold`."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    i, j, s = cosine_pairs(vectors, threshold, use_faiss)
    return _groups("embedding", threshold, ids, i, j, s.astype(float), "min")
