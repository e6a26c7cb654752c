"""k-means over a feature matrix larger than the memory budget (`curata.budget`), read in chunks.

    1. a seeded sample of rows that fits in half the budget is loaded whole: it fits the normalisation
       statistics ("center", "standard"), chooses k when it is not given (silhouette over `k_range`,
       as in memory), and gives the starting centres (full k-means on the sample);
    2. Lloyd iterations refine those centres over every item, streamed: each pass assigns every chunk
       to its nearest centre and adds it to per-cluster sums and counts, and the centres become the means
       (exact k-means steps, so the result does not depend on the order of the chunks; mini-batch
       updates started from zero counts overwrote the sample's centres with noisy batch means);
    3. labels are those of the last pass, in item order;
    4. silhouette (O(n^2)) and the 2-D map are computed on the sample; ARI / NMI on every item.

Only k-means streams: the other methods need all rows at once (pairwise structure, densities), and so
do the reductions, so both are refused over budget with what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curata.budget import ENV, format_bytes, memory_budget, rows_within_budget
from curata.cluster.core import (
    DEFAULT_K_RANGE,
    NORMALISATIONS,
    SILHOUETTE_SAMPLE,
    ClusterInputError,
    KCurve,
    check_matrix,
    check_truth,
    choose_k,
    compute_threads,
    silhouette,
)
from curata.tasks.base import concat_blocks
from curata.tasks.data import feature_row_bytes, iter_features, load_features
from curata.vectors import l2_rows
from curata.workspace import Workspace

SAMPLE_SHARE = 0.5  # of the budget, for the sample held whole (the rest: one chunk and its copies)
CHUNK_SHARE = 1 / 16  # of the budget, per streamed chunk: its lookup, fused and normalised copies stay small
SAMPLE_CAP = 20_000  # rows: enough for k, the starting centres and the map
LLOYD_PASSES = 3  # streamed k-means iterations after the sample's start (each reads every vector once)
LLOYD_TOL = 1e-4  # stop earlier once no centre moves more than this (in the normalised space)


@dataclass
class StreamedKMeans:
    """What a streamed run found: labels of every kept item (item order), the kept mask over the items
    given, the sample (row indices into the kept items) with its normalised matrix, and the summary."""

    labels: np.ndarray
    keep: np.ndarray
    sample_rows: np.ndarray
    sample_x: np.ndarray = field(repr=False)
    k: int
    scores: dict[str, float | int | None]
    params: dict[str, Any]
    curve: KCurve | None
    skipped: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"method": "kmeans", "k": self.k, "params": self.params,
                "scores": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.scores.items()},
                "curve": self.curve.to_dict() if self.curve else None,
                "sizes": {int(c): int(s) for c, s in zip(*np.unique(self.labels, return_counts=True), strict=True)}}


class _Normaliser:
    """`curata.cluster.core.normalise`, with the column statistics ("center", "standard") fitted on the
    sample so every chunk is transformed identically."""

    def __init__(self, how: str, sample: np.ndarray):
        if how not in NORMALISATIONS:
            raise ClusterInputError(f"unknown normalisation '{how}': use one of {', '.join(NORMALISATIONS)}")
        self.how = how
        self.mean = sample.mean(axis=0)
        std = sample.std(axis=0)
        self.std = np.where(std == 0, 1.0, std)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)  # float32 like the features: a float64 copy of a chunk doubles it
        if self.how == "center":
            return l2_rows(x - self.mean)
        if self.how == "sqrt":
            return l2_rows(np.sign(x) * np.sqrt(np.abs(x)))
        if self.how == "l2":
            return l2_rows(x)
        if self.how == "standard":
            return (x - self.mean) / self.std
        return x


def over_budget_refusal(method: str, reduction: str, need: int) -> ClusterInputError | None:
    """The error for a run that cannot stream (None when it can)."""
    what = (f"the features of this run take {format_bytes(need)}, over the memory budget of "
            f"{format_bytes(memory_budget())}")
    if method != "kmeans":
        return ClusterInputError(f"{what}, and {method} needs every row in memory: use --method kmeans (which "
                                 f"streams) or raise {ENV}")
    if reduction != "none":
        return ClusterInputError(f"{what}, and the {reduction} reduction needs every row in memory: use "
                                 f"--reduce none (k-means then streams) or raise {ENV}")
    return None


def streamed_kmeans(workspace: Workspace, features: Sequence[str], items: pd.DataFrame, k: int | None = None, *,
                    k_range: tuple[int, int] = DEFAULT_K_RANGE, normalisation: str = "l2",
                    truth: Sequence[Any] | None = None, seed: int = 0, batch_rows: int | None = None
                    ) -> StreamedKMeans:
    """k-means over `items`' fused `features` (each block L2-normalised, as `load_features(...).concat()`)
    without holding their matrix; see the module doc. `truth`: one label or None per item of `items`."""
    from sklearn.cluster import KMeans

    names = list(features)
    n = len(items)
    row_bytes = feature_row_bytes(names)
    chunk = int(batch_rows or rows_within_budget(row_bytes, CHUNK_SHARE))
    rng = np.random.default_rng(seed)
    size = min(n, SAMPLE_CAP, rows_within_budget(row_bytes, SAMPLE_SHARE))
    drawn = np.sort(rng.choice(n, size, replace=False))
    fs, sample_keep = load_features(workspace, names, items.iloc[drawn])
    raw = check_matrix(fs.concat(normalise=True))
    normalise = _Normaliser(normalisation, raw)
    sample_x = normalise(raw)
    curve = None
    if k is None:
        curve = choose_k(sample_x, "kmeans", k_range, seed)
        k = curve.best
    if not 1 <= int(k) <= len(sample_x):
        raise ClusterInputError(f"kmeans: the sample of {len(sample_x)} items cannot form {k} clusters")
    k = int(k)
    with compute_threads(sample_x):
        # 3 restarts, not 10: the sample only gives the start; the Lloyd passes refine over every item
        start_centres = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(sample_x).cluster_centers_
    centres = start_centres.astype(np.float32)
    passes, shift = 0, float("inf")
    keep = np.zeros(n, bool)
    all_labels = np.array([], int)
    while passes < LLOYD_PASSES and shift > LLOYD_TOL:
        sums = np.zeros_like(centres, dtype=np.float64)
        counts = np.zeros(k, np.int64)
        labels: list[np.ndarray] = []
        for start, blocks, chunk_keep in iter_features(workspace, names, items, chunk):
            keep[start:start + len(chunk_keep)] = chunk_keep
            if chunk_keep.any():
                x = normalise(concat_blocks(blocks))
                assigned = _nearest(x, centres)
                labels.append(assigned)
                sums += _cluster_sums(x, assigned, k)
                counts += np.bincount(assigned, minlength=k)
        all_labels = np.concatenate(labels) if labels else np.array([], int)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
        shift = float(np.abs(moved - centres).max()) if len(moved) else 0.0
        centres, passes = moved, passes + 1
    if not keep.any():
        raise ClusterInputError(f"no item has all of the features {', '.join(names)}")

    # The sample's rows among the kept items, for the silhouette and the map.
    kept_index = np.cumsum(keep) - 1
    sample_rows = kept_index[drawn[sample_keep]]
    sample_labels = all_labels[sample_rows]
    scores: dict[str, float | int | None] = {
        "silhouette": silhouette(sample_x, sample_labels, seed, SILHOUETTE_SAMPLE),
        "clusters": len(np.unique(all_labels)), "noise": 0.0}
    if truth is not None:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        mask, codes = check_truth([t for t, kept in zip(truth, keep, strict=True) if kept], len(all_labels))
        scores["ari"] = float(adjusted_rand_score(codes, all_labels[mask]))
        scores["nmi"] = float(normalized_mutual_info_score(codes, all_labels[mask]))
        scores["labelled"] = int(mask.sum())
    missing = int((~keep).sum())
    skipped = {f"no {'+'.join(names)} vector": missing} if missing else {}
    params = {"normalisation": normalisation, "reduction": "none", "n_components": None, "seed": seed,
              "k_given": curve is None, "streamed": {"chunk_rows": chunk, "sample_rows": len(sample_x),
                                                     "lloyd_passes": passes, "last_shift": round(shift, 6)}}
    return StreamedKMeans(all_labels, keep, sample_rows, sample_x, k, scores, params, curve, skipped)


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centre (squared euclidean, without forming the row-centre differences)."""
    scores = x @ centres.T
    scores -= 0.5 * np.einsum("ij,ij->i", centres, centres)[None, :]
    return scores.argmax(axis=1)


def _cluster_sums(x: np.ndarray, assigned: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of `x` (a sparse one-hot product: np.add.at is unbuffered and slow)."""
    from scipy import sparse

    onehot = sparse.csr_matrix((np.ones(len(x), np.float32), (assigned, np.arange(len(x)))), shape=(k, len(x)))
    return np.asarray(onehot @ x, np.float64)
