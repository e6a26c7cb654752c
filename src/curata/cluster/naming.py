"""Readable names for clusters: their distinctive words, tags and dominant colours.

Words and tags are ranked class-based tf-idf style (as in BERTopic's c-TF-IDF): a term scores high
when a large share of the cluster's items have it, few other clusters do, and it is not common
across the whole collection. Shares are document
frequencies (share of the cluster's items containing the term), not raw counts, so one long
description repeating a word thirty times cannot name its cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curata.cluster.themes import humanise
from curata.cluster.topics import WORD_PATTERN

COLOUR_SAMPLE = 100  # items per cluster whose palettes are named: colour shares within a few %
NOISE_NAME = "unclustered"
MIN_LIFT = 1.5


@dataclass
class ClusterName:
    cluster: int
    size: int
    name: str
    terms: list[tuple[str, float]] = field(default_factory=list)  # (word, share of items with it)
    tags: list[tuple[str, float]] = field(default_factory=list)  # (tag, share of items with it)
    colours: list[tuple[str, float]] = field(default_factory=list)  # (colour name, share of pixels)

    def to_dict(self) -> dict[str, Any]:
        rounded = {k: [(t, round(s, 3)) for t, s in getattr(self, k)] for k in ("terms", "tags", "colours")}
        return {"cluster": self.cluster, "size": self.size, "name": self.name, **rounded}


def _distinctive(presence: Any, labels: np.ndarray, clusters: np.ndarray, vocab: list[str], n: int,
                 min_share: float) -> dict[int, list[tuple[str, float]]]:
    """Top-n terms per cluster from a binary (items x terms) presence matrix (dense or sparse)."""
    shares = np.zeros((len(clusters), len(vocab)))
    rest = np.zeros((len(clusters), len(vocab)))  # share among the items outside the cluster
    total = np.asarray(presence.sum(axis=0)).ravel()
    n_items = len(labels)
    for row, c in enumerate(clusters):
        members = labels == c
        inside = np.asarray(presence[members].sum(axis=0)).ravel()
        size = int(members.sum())
        shares[row] = inside / max(size, 1)
        rest[row] = (total - inside) / (n_items - size) if n_items > size else 0.0
    # Score = share in this cluster x log(1 + clusters / summed share over clusters) (a term every item
    # of every cluster has scores log 2 per unit share, one unique to this cluster log(1 + K)) x
    # (1 - sqrt(share of all items)), which sinks a collection's boilerplate ("great discounts",
    # "genuine products") that some clusters happen to use more than others. (A full log idf here
    # would double-count rarity and let words of one or two items win.)
    spread = shares.sum(axis=0)
    class_idf = np.log1p(len(clusters) / np.where(spread > 0, spread, 1))
    scores = shares * class_idf * (1 - np.sqrt(total / n_items))
    counts = np.array([int((labels == c).sum()) for c in clusters])
    out: dict[int, list[tuple[str, float]]] = {}
    for row, c in enumerate(clusters):
        order = np.argsort(-scores[row], kind="stable")
        # A term must be clearly more common inside than outside (lift >= MIN_LIFT): a word every
        # item has ("nft", "product") is frequent everywhere and names nothing.
        # ... and be used by at least two of its items: one item's words never name a cluster.
        least = max(min_share, min(2, counts[row]) / counts[row] - 1e-9)
        out[int(c)] = [(vocab[j], float(shares[row, j])) for j in order
                       if shares[row, j] >= least and shares[row, j] >= MIN_LIFT * rest[row, j]][:n]
    return out


def distinctive_terms(texts: Sequence[str | None], labels: Sequence[int] | np.ndarray, n_terms: int = 5,
                      stop_words: str | None = "english", min_share: float = 0.1) -> dict[int, list[tuple[str, float]]]:
    """The words that set each cluster's texts apart, with the share of its items using them.

    Empty texts are allowed (they contribute nothing); clusters with no usable word get an empty list.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    labels = np.asarray(labels)
    docs = ["" if t is None else str(t) for t in texts]
    if len(docs) != len(labels):
        raise ValueError(f"{len(docs)} texts for {len(labels)} labels")
    clusters = np.unique(labels)
    if not any(d.strip() for d in docs):
        return {int(c): [] for c in clusters}
    vec = CountVectorizer(stop_words=stop_words, token_pattern=WORD_PATTERN, binary=True,
                          min_df=2 if len(docs) >= 50 else 1)
    try:
        presence = vec.fit_transform(docs).tocsr()
    except ValueError:  # no usable word anywhere
        return {int(c): [] for c in clusters}
    return _distinctive(presence, labels, clusters, list(vec.get_feature_names_out()), n_terms, min_share)


def distinctive_tags(tags: Sequence[Sequence[str]], labels: Sequence[int] | np.ndarray, n_tags: int = 5,
                     min_share: float = 0.2) -> dict[int, list[tuple[str, float]]]:
    """The tags most typical of each cluster (held by a large share of it, rarer elsewhere)."""
    from scipy.sparse import csr_matrix

    labels = np.asarray(labels)
    if len(tags) != len(labels):
        raise ValueError(f"{len(tags)} tag lists for {len(labels)} labels")
    clusters = np.unique(labels)
    vocab = sorted({t for item in tags for t in item})
    if not vocab:
        return {int(c): [] for c in clusters}
    index = {t: j for j, t in enumerate(vocab)}
    rows, cols = [], []
    for i, item in enumerate(tags):
        for j in {index[t] for t in item}:
            rows.append(i)
            cols.append(j)
    presence = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tags), len(vocab)))
    return _distinctive(presence, labels, clusters, vocab, n_tags, min_share)


def dominant_colours(palettes: np.ndarray, labels: Sequence[int] | np.ndarray, n_colours: int = 3,
                     min_share: float = 0.1, seed: int = 0) -> dict[int, list[tuple[str, float]]]:
    """Basic colour names covering most pixels of each cluster's images, from `palette` feature vectors, or of
    its objects from `object_palette` vectors (4k + 6 values: the names /v1/colours gives each item, averaged
    over the cluster's items and ranked as the namer ranks an object's colours)."""
    from curata.features.object_palette import is_object_palette
    from curata.features.palette import dominant_color_names

    labels = np.asarray(labels)
    palettes = np.asarray(palettes, dtype=np.float64)
    if palettes.ndim == 2 and is_object_palette(palettes.shape[1]):
        return _object_colours(palettes, labels, n_colours, min_share, seed)
    out: dict[int, list[tuple[str, float]]] = {}
    for c, rows in _sampled_clusters(labels, seed):
        # One call names the palettes of all sampled items: their entries side by side, each item's
        # shares divided by the item count, so merged totals are shares of the cluster's pixels.
        entries = palettes[rows].reshape(len(rows), -1, 4).copy()
        entries[:, :, 3] /= len(rows)
        named = dominant_color_names(entries.reshape(-1))
        out[int(c)] = [(name, share) for name, share in named[:n_colours] if share >= min_share]
    return out


def _sampled_clusters(labels: np.ndarray, seed: int) -> list[tuple[int, np.ndarray]]:
    """(cluster, its rows) for every cluster, at most COLOUR_SAMPLE rows each (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) > COLOUR_SAMPLE:
            rows = rng.choice(rows, COLOUR_SAMPLE, replace=False)
        out.append((int(c), rows))
    return out


def _object_colours(vectors: np.ndarray, labels: np.ndarray, n_colours: int, min_share: float, seed: int
                    ) -> dict[int, list[tuple[str, float]]]:
    """`dominant_colours` of object palettes: each sampled item's object colour names (shares of the object) added
    up and divided by the item count; gray ranks at the namer's weight (shading in a cut-out object), its share
    reported as it is. Rows of zeros (no vector) count as items without colours."""
    from curata.features.colour_names import rank_colours
    from curata.features.object_palette import object_names
    from curata.features.palette import merge_shares

    out: dict[int, list[tuple[str, float]]] = {}
    for c, rows in _sampled_clusters(labels, seed):
        per_item = object_names(vectors[rows])
        totals = rank_colours(merge_shares((name, share / len(rows)) for names in per_item for name, share in names),
                              cut_out=True)
        out[int(c)] = [(name, share) for name, share in totals[:n_colours] if share >= min_share]
    return out


def name_clusters(labels: Sequence[int] | np.ndarray, texts: Sequence[str | None] | None = None,
                  tags: Sequence[Sequence[str]] | None = None, palettes: np.ndarray | None = None,
                  n_terms: int = 3) -> list[ClusterName]:
    """One ClusterName per cluster (largest first): words if there is text, else tags, plus colours."""
    labels = np.asarray(labels)
    clusters, sizes = np.unique(labels, return_counts=True)
    terms = distinctive_terms(texts, labels, n_terms + 2) if texts is not None else {}
    tag_lists = distinctive_tags(tags, labels, n_terms + 2) if tags is not None else {}
    colours = dominant_colours(palettes, labels) if palettes is not None else {}
    names: list[ClusterName] = []
    for c, size in zip(clusters, sizes, strict=True):
        c = int(c)
        words = [w for w, _ in terms.get(c, [])[:n_terms]] or [humanise(t) for t, _ in tag_lists.get(c, [])[:n_terms]]
        name = " · ".join(words) if words else f"cluster {c}"
        if colours.get(c):
            name += f" ({', '.join(n for n, _ in colours[c][:2])})"
        if c < 0:
            name = NOISE_NAME
        names.append(ClusterName(c, int(size), name, terms.get(c, []), tag_lists.get(c, []), colours.get(c, [])))
    names.sort(key=lambda n: (n.cluster < 0, -n.size, n.cluster))
    return names
