"""Clustering a feature matrix: optional normalisation and reduction, five algorithms, choosing k, scores.

    result = cluster(x, "kmeans", k=None, reduce="umap", truth=labels)
    result.labels, result.k, result.scores, result.curve

Algorithms: k-means, Gaussian mixture, agglomerative (Ward or average/complete cosine), spectral
(k-nearest-neighbour graph) and HDBSCAN (density; label -1 marks noise). When k is not given it is
chosen over a range: highest silhouette for k-means / agglomerative / spectral, lowest BIC for the
Gaussian mixture; the whole curve is returned so it can be plotted (`plot_k_curve`).

Reductions run before clustering: PCA (optionally whitened), truncated SVD (tf-idf), t-SNE and
UMAP. Non-linear maps to ~10 dimensions are what lifts k-means on sentence or CNN embeddings
(the Flipkart study reached its best ARI with t-SNE before k-means).

Scores: silhouette always (on a sample of at most SILHOUETTE_SAMPLE items, in the normalised input
space, so it compares runs with and without reduction on the same footing), ARI and NMI against
known labels when given.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curata.storage import is_remote, location
from curata.vectors import l2_rows

METHODS = ("kmeans", "gmm", "agglomerative", "spectral", "hdbscan")
REDUCTIONS = ("none", "pca", "pca-whiten", "svd", "tsne", "umap")
NORMALISATIONS = ("l2", "center", "sqrt", "standard", "none")
LINKAGES = ("ward", "average", "complete")

SILHOUETTE_SAMPLE = 5000  # silhouette is O(n^2): above this, a fixed random sample estimates it
# Agglomerative and spectral clustering need pairwise structure (O(n^2) memory for Ward): above this
# many items they are fitted on a random sample and the rest join the nearest cluster centroid.
PAIRWISE_LIMIT = 8000
DEFAULT_K_RANGE = (2, 12)
# Below this many matrix values (items x dims) BLAS / OpenMP threads cost more than they save; on a
# busy machine they spin-wait and t-SNE or a GMM on a few hundred items runs 20-50x slower.
SMALL_PROBLEM = 2_000_000
UMAP_NEIGHBOURS = 30  # UMAP's documented setting for clustering: more global structure than its default 15


class ClusterInputError(ValueError):
    """The input cannot be clustered as asked; the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# Input checks and preparation


@contextmanager
def compute_threads(x: np.ndarray) -> Iterator[None]:
    """Limit BLAS/OpenMP threads: one for small problems, `default_threads()` for big ones."""
    # Limits reach only the thread pools already loaded: importing scikit-learn loads its OpenMP
    # runtime and SciPy's BLAS, which would otherwise arrive later, unlimited, inside the block.
    import sklearn  # noqa: F401
    from threadpoolctl import threadpool_limits

    from curata.paths import default_threads

    with threadpool_limits(limits=1 if x.size < SMALL_PROBLEM else default_threads()):
        yield


def check_matrix(x: Any, min_rows: int = 2) -> np.ndarray:
    """A finite, non-constant float matrix with at least `min_rows` rows, or a clear ValueError."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ClusterInputError(f"features must be a 2-D matrix (items x dimensions), got shape {x.shape}")
    n = x.shape[0]
    if n < min_rows:
        raise ClusterInputError(f"{n} item(s) to cluster; at least {min_rows} are needed")
    if x.shape[1] == 0:
        raise ClusterInputError("features have 0 dimensions")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ClusterInputError(f"{int(bad.sum())} row(s) contain NaN or infinite values")
    if np.ptp(x, axis=0).max() == 0:
        raise ClusterInputError(
            f"features are constant: all {n} items have the same vector, so there is nothing to cluster "
            "(an empty text or a blank image gives every item the same, often zero, vector)"
        )
    return x


def normalise(x: np.ndarray, how: str = "l2") -> np.ndarray:
    """Rows to unit length ("l2": Euclidean k-means then ranks like cosine); the collection's mean
    removed first ("center": CNN features are non-negative, so all raw cosines are high and similar;
    centring spreads them); signed square root first, then unit length ("sqrt": power normalisation,
    which damps the few dominant activations of pooled CNN features so more dimensions count; fused
    MiniLM + EfficientNet on flipkart: ARI 0.765 against 0.737 with plain l2); columns to zero mean and
    unit variance ("standard": hand-made features of mixed units); or unchanged ("none")."""
    if how in ("l2", "center", "sqrt"):
        if how == "center":
            x = x - x.mean(axis=0)
        elif how == "sqrt":
            x = np.sign(x) * np.sqrt(np.abs(x))
        return l2_rows(x)
    if how == "standard":
        std = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(std == 0, 1.0, std)
    if how == "none":
        return x
    raise ClusterInputError(f"unknown normalisation '{how}': use one of {', '.join(NORMALISATIONS)}")


def reduce(x: np.ndarray, method: str = "pca", n_components: int | float | None = None, seed: int = 0,
           n_neighbors: int = UMAP_NEIGHBOURS) -> np.ndarray:
    """Reduce `x` before clustering (or for a map). Default components: PCA 50, SVD 100, t-SNE 2, UMAP 10.

    A float `n_components` in (0, 1) keeps that fraction of variance (PCA only). t-SNE first runs
    PCA to 50 dimensions (the usual practice: faster, and removes noise directions); more than 3
    t-SNE components need its exact O(n^2) solver and are refused above 5000 items.
    """
    if method == "none":
        return x
    with compute_threads(x):
        return _reduce(x, method, n_components, seed, n_neighbors)


def _reduce(x: np.ndarray, method: str, n_components: int | float | None, seed: int, n_neighbors: int) -> np.ndarray:
    n, d = x.shape
    if method in ("pca", "pca-whiten"):
        from sklearn.decomposition import PCA

        if n_components is None:
            n_components = 50
        if isinstance(n_components, float) and 0 < n_components < 1:
            pca = PCA(n_components=n_components, whiten=method == "pca-whiten", random_state=seed)
        else:
            pca = PCA(n_components=min(int(n_components), n, d), whiten=method == "pca-whiten", random_state=seed)
        return pca.fit_transform(x)
    if method == "svd":
        from sklearn.decomposition import TruncatedSVD

        k = min(int(n_components or 100), d - 1, n - 1)
        if k < 1:
            raise ClusterInputError(f"truncated SVD needs at least 2 dimensions and 2 items, got {x.shape}")
        # LSA practice: re-normalise after the projection so k-means compares directions.
        return normalise(TruncatedSVD(n_components=k, random_state=seed).fit_transform(x), "l2")
    if method == "tsne":
        from sklearn.manifold import TSNE

        k = int(n_components or 2)
        if n < 4:
            raise ClusterInputError(f"t-SNE needs at least 4 items, got {n}")
        if k > 3 and n > 5000:
            raise ClusterInputError(f"t-SNE to {k} dimensions needs the exact O(n^2) solver; {n} items is too many "
                                    "(use 2-3 components or UMAP)")
        if d > 50:
            x = _reduce(x, "pca", 50, seed, n_neighbors)
        tsne = TSNE(n_components=k, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed,
                    method="barnes_hut" if k <= 3 else "exact")
        return tsne.fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as e:  # not a hard dependency of curata
            raise ClusterInputError("UMAP needs the umap-learn package (pip install umap-learn)") from e
        k = int(n_components or 10)
        if n < 4:
            raise ClusterInputError(f"UMAP needs at least 4 items, got {n}")
        # min_dist=0 packs neighbours tightly: with n_neighbors=30, what UMAP's documentation advises
        # for clustering.
        model = umap.UMAP(n_components=min(k, n - 2), n_neighbors=min(n_neighbors, n - 1), min_dist=0.0,
                          metric="cosine", random_state=seed, n_jobs=1)
        return np.asarray(model.fit_transform(x), dtype=np.float64)
    raise ClusterInputError(f"unknown reduction '{method}': use one of {', '.join(REDUCTIONS)}")


# --------------------------------------------------------------------------------------------------
# Scores


def silhouette(x: np.ndarray, labels: np.ndarray, seed: int = 0, sample: int = SILHOUETTE_SAMPLE) -> float | None:
    """Mean silhouette over clustered items (noise, label -1, left out); None with fewer than 2 clusters."""
    from sklearn.metrics import silhouette_score

    keep = labels >= 0
    n_clusters = len(np.unique(labels[keep]))
    if n_clusters < 2 or n_clusters >= keep.sum():
        return None
    size = int(keep.sum())
    return float(silhouette_score(x[keep], labels[keep], sample_size=sample if size > sample else None,
                                  random_state=seed))


def check_truth(truth: Sequence[Any] | np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Known labels as (mask of items that have one, their codes); ValueError when they cannot score."""
    values = list(truth)
    if len(values) != n:
        raise ClusterInputError(f"{len(values)} labels for {n} items")
    mask = np.array([v is not None and v == v and v != "" for v in values], bool)  # v == v: not NaN
    present = [str(v) for v, m in zip(values, mask, strict=True) if m]
    distinct = sorted(set(present))
    if len(distinct) < 2:
        what = f"the single value '{distinct[0]}'" if distinct else "no values"
        raise ClusterInputError(f"the label column has {what}: ARI and NMI need at least 2 distinct labels")
    index = {v: i for i, v in enumerate(distinct)}
    return mask, np.array([index[v] for v in present], int)


def score(x: np.ndarray, labels: np.ndarray, truth: Sequence[Any] | np.ndarray | None = None, seed: int = 0
          ) -> dict[str, float | int | None]:
    """Silhouette (always), noise share, and ARI / NMI against `truth` (items without a label skipped;
    noise counts as one more cluster, so a method is not rewarded for discarding hard items)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    out: dict[str, float | int | None] = {
        "silhouette": silhouette(x, labels, seed),
        "clusters": len(np.unique(labels[labels >= 0])),
        "noise": float(np.mean(labels < 0)),
    }
    if truth is not None:
        mask, codes = check_truth(truth, len(labels))
        out["ari"] = float(adjusted_rand_score(codes, labels[mask]))
        out["nmi"] = float(normalized_mutual_info_score(codes, labels[mask]))
        out["labelled"] = int(mask.sum())
    return out


# --------------------------------------------------------------------------------------------------
# Algorithms


def _check_k(k: int, n: int, method: str) -> int:
    k = int(k)
    if k < 1:
        raise ClusterInputError(f"k must be >= 1, got {k}")
    if k > n:
        raise ClusterInputError(f"{method}: {n} items cannot form {k} clusters; give k <= {n}")
    return k


def _nearest_centroid(x: np.ndarray, fitted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels of all rows of `x` from the clusters of a fitted sample (rows `fitted` of x)."""
    ids = np.unique(labels)
    centres = np.stack([x[fitted][labels == c].mean(axis=0) for c in ids])
    out = np.empty(len(x), int)
    for start in range(0, len(x), 4096):  # blocks bound the distance matrix's memory
        block = x[start : start + 4096]
        d2 = (centres**2).sum(axis=1)[None, :] - 2.0 * block @ centres.T
        out[start : start + 4096] = ids[d2.argmin(axis=1)]
    out[fitted] = labels
    return out


def _sample_rows(n: int, limit: int, seed: int) -> np.ndarray | None:
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _linkage_tree(x: np.ndarray, linkage: str) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    if linkage not in LINKAGES:
        raise ClusterInputError(f"unknown linkage '{linkage}': use one of {', '.join(LINKAGES)}")
    # Ward is defined for Euclidean distances; average/complete use cosine, the embeddings' metric.
    return scipy_linkage(x, method=linkage, metric="euclidean" if linkage == "ward" else "cosine")


def _cut(tree: np.ndarray, k: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster

    return fcluster(tree, t=k, criterion="maxclust").astype(int) - 1


def _gmm(k: int, d: int, seed: int) -> Any:
    from sklearn.mixture import GaussianMixture

    # Full covariances need d(d+1)/2 parameters per component: fine on a reduced space, hopeless on
    # 384-d embeddings with ~100 items per cluster, where diagonal ones are the reasonable model.
    return GaussianMixture(n_components=k, covariance_type="full" if d <= 16 else "diag", n_init=2,
                           reg_covar=1e-5, random_state=seed)


def fit_predict(x: np.ndarray, method: str, k: int | None, seed: int = 0, *, linkage: str = "ward",
                min_cluster_size: int | None = None, tree: np.ndarray | None = None) -> np.ndarray:
    """Labels 0..k-1 (HDBSCAN: -1 for noise) of the rows of `x` by one algorithm."""
    n = len(x)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        size = int(min_cluster_size or max(5, n // 100))
        if size < 2:
            raise ClusterInputError("min_cluster_size must be >= 2")
        if n < size:
            raise ClusterInputError(f"hdbscan: {n} items is fewer than min_cluster_size={size}")
        return HDBSCAN(min_cluster_size=size, copy=True).fit_predict(x).astype(int)
    if k is None:
        raise ClusterInputError(f"{method} needs k (or use choose_k)")
    k = _check_k(k, n, method)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(int)
    if method == "gmm":
        return _gmm(k, x.shape[1], seed).fit(x).predict(x).astype(int)
    if method == "agglomerative":
        sample = _sample_rows(n, PAIRWISE_LIMIT, seed)
        if sample is None:
            return _cut(tree if tree is not None else _linkage_tree(x, linkage), k)
        return _nearest_centroid(x, sample, _cut(_linkage_tree(x[sample], linkage), k))
    if method == "spectral":
        from sklearn.cluster import SpectralClustering

        sample = _sample_rows(n, PAIRWISE_LIMIT, seed)
        rows = x if sample is None else x[sample]
        model = SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=min(10, len(rows) - 1),
                                   assign_labels="cluster_qr", random_state=seed)
        labels = model.fit_predict(rows).astype(int)
        return labels if sample is None else _nearest_centroid(x, sample, labels)
    raise ClusterInputError(f"unknown clustering method '{method}': use one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------------------------------
# Choosing k


@dataclass
class KCurve:
    """Model-selection curve: `scores[i]` is the criterion at `ks[i]`; `best` the chosen k."""

    criterion: str  # "silhouette" (higher is better) or "bic" (lower is better)
    ks: list[int]
    scores: list[float]
    best: int

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "ks": self.ks, "scores": [round(s, 5) for s in self.scores],
                "best": self.best}


def choose_k(x: np.ndarray, method: str = "kmeans", k_range: tuple[int, int] = DEFAULT_K_RANGE, seed: int = 0, *,
             linkage: str = "ward") -> KCurve:
    """Try every k in `k_range` (inclusive): silhouette for k-means / agglomerative / spectral, BIC for GMM."""
    if method == "hdbscan":
        raise ClusterInputError("hdbscan finds the number of clusters itself; tune min_cluster_size instead")
    if method not in METHODS:
        raise ClusterInputError(f"unknown clustering method '{method}': use one of {', '.join(METHODS)}")
    n = len(x)
    lo, hi = int(k_range[0]), int(k_range[1])
    criterion = "bic" if method == "gmm" else "silhouette"
    # Silhouette is defined for 2 <= k <= n - 1; BIC also for k = 1.
    lo = max(lo, 1 if criterion == "bic" else 2)
    hi = min(hi, n - 1 if criterion == "silhouette" else n)
    if lo > hi:
        raise ClusterInputError(f"no k to try: range {k_range} with {n} items (need 2 <= k <= {n - 1})")
    ks = list(range(lo, hi + 1))
    scores: list[float] = []
    with compute_threads(x):
        tree = None
        if method == "agglomerative" and n <= PAIRWISE_LIMIT:
            tree = _linkage_tree(x, linkage)  # one tree, cut at every k
        for k in ks:
            if method == "gmm":
                scores.append(float(_gmm(k, x.shape[1], seed).fit(x).bic(x)))
            else:
                labels = fit_predict(x, method, k, seed, linkage=linkage, tree=tree)
                s = silhouette(x, labels, seed)
                scores.append(-1.0 if s is None else s)
    best = ks[int(np.argmin(scores) if criterion == "bic" else np.argmax(scores))]
    return KCurve(criterion, ks, scores, best)


def plot_k_curve(curve: KCurve, path: str | Path, title: str = "") -> Path:
    """The model-selection curve as a PNG, the chosen k marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot(curve.ks, curve.scores, "o-", color="#3366aa")
    ax.axvline(curve.best, color="#cc4444", linestyle="--", label=f"chosen k = {curve.best}")
    ax.set_xlabel("k")
    ax.set_ylabel("BIC (lower is better)" if curve.criterion == "bic" else "silhouette (higher is better)")
    ax.set_title(title or f"choosing k by {curve.criterion}")
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    fig.tight_layout()
    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):  # matplotlib writes files or file objects: one PUT of the drawn bytes
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix.lstrip(".") or "png")
        path.write_bytes(buffer.getvalue())
    else:
        fig.savefig(path)
    _pyplot().close(fig)
    return path


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("plots need matplotlib (pip install matplotlib)") from e
    return plt


# --------------------------------------------------------------------------------------------------
# One call


@dataclass
class ClusterResult:
    labels: np.ndarray  # one per row; -1 = noise (HDBSCAN)
    method: str
    k: int  # clusters found, noise excluded
    scores: dict[str, float | int | None]
    params: dict[str, Any]
    curve: KCurve | None = None
    space: np.ndarray | None = field(default=None, repr=False)  # the matrix the algorithm ran on

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "params": self.params,
                "scores": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.scores.items()},
                "curve": self.curve.to_dict() if self.curve else None,
                "sizes": {int(c): int(s) for c, s in zip(*np.unique(self.labels, return_counts=True), strict=True)}}


def cluster(x: Any, method: str = "kmeans", k: int | None = None, *, k_range: tuple[int, int] = DEFAULT_K_RANGE,
            normalisation: str = "l2", reduction: str = "none", n_components: int | float | None = None,
            truth: Sequence[Any] | np.ndarray | None = None, seed: int = 0, linkage: str = "ward",
            min_cluster_size: int | None = None, n_neighbors: int = UMAP_NEIGHBOURS) -> ClusterResult:
    """Normalise, optionally reduce, cluster (choosing k over `k_range` when k is None), and score.

    `truth` (one label or None per row) adds ARI and NMI. Silhouette is measured in the normalised
    input space; `silhouette_reduced` in the reduced space the algorithm saw (t-SNE/UMAP inflate it).
    """
    if method not in METHODS:
        raise ClusterInputError(f"unknown clustering method '{method}': use one of {', '.join(METHODS)}")
    if method == "hdbscan" and k is not None:
        raise ClusterInputError("hdbscan finds the number of clusters itself: leave k out (tune min_cluster_size)")
    x = normalise(check_matrix(x), normalisation)
    n = len(x)
    if k is not None:
        _check_k(k, n, method)
    if truth is not None:
        check_truth(truth, n)  # fail before the (possibly slow) clustering
    space = reduce(x, reduction, n_components, seed, n_neighbors)
    curve = None
    if method != "hdbscan" and k is None:
        curve = choose_k(space, method, k_range, seed, linkage=linkage)
        k = curve.best
    with compute_threads(x):
        labels = fit_predict(space, method, k, seed, linkage=linkage, min_cluster_size=min_cluster_size)
        scores = score(x, labels, truth, seed)
        if reduction != "none":
            scores["silhouette_reduced"] = silhouette(space, labels, seed)
    params = {"normalisation": normalisation, "reduction": reduction, "n_components": n_components or None,
              "seed": seed, "k_given": k is not None and curve is None}
    if reduction == "umap":
        params["n_neighbors"] = n_neighbors
    if method == "agglomerative":
        params["linkage"] = linkage
    if method == "hdbscan":
        params["min_cluster_size"] = int(min_cluster_size or max(5, n // 100))
    if n > PAIRWISE_LIMIT and method in ("agglomerative", "spectral"):
        params["fitted_on_sample"] = PAIRWISE_LIMIT
    return ClusterResult(labels, method, int(scores["clusters"] or 0), scores, params, curve, space)
