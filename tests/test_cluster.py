"""Clustering, choosing k, scores, topic models, naming, and bad input (small synthetic data only)."""

from __future__ import annotations

import sys
from typing import ClassVar

import numpy as np
import pytest

from curata.cluster import choose_k, cluster, distinctive_tags, distinctive_terms, name_clusters
from curata.cluster.core import check_truth, plot_k_curve, reduce, score
from curata.cluster.naming import dominant_colours
from curata.cluster.topics import topics


def blobs(k: int = 4, per: int = 40, dim: int = 8, spread: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs around random centres far apart (not through the origin, so
    L2-normalising rows keeps them apart)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, dim))
    centres = 10 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), per)
    return centres[y] + rng.normal(0, spread, (k * per, dim)), y


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("method", ["kmeans", "gmm", "agglomerative", "spectral", "hdbscan"])
def test_every_method_recovers_blobs(method: str) -> None:
    x, y = blobs()
    result = cluster(x, method, k=None if method == "hdbscan" else 4, truth=list(y), min_cluster_size=10)
    assert result.scores["ari"] > 0.99
    assert result.scores["nmi"] > 0.99
    assert result.k == 4
    assert result.scores["silhouette"] > 0.7


@pytest.mark.parametrize(("method", "criterion"), [("kmeans", "silhouette"), ("agglomerative", "silhouette"),
                                                   ("gmm", "bic")])
def test_k_chosen_is_the_true_k(method: str, criterion: str, tmp_path) -> None:
    x, y = blobs(k=5, per=30, dim=4, seed=3)
    result = cluster(x, method, k_range=(2, 9), truth=list(y), reduction="pca", n_components=4)
    assert result.curve is not None and result.curve.criterion == criterion
    assert result.curve.best == 5 == result.k
    assert result.curve.ks == list(range(2, 10))
    assert result.scores["ari"] > 0.99
    pytest.importorskip("matplotlib")
    png = plot_k_curve(result.curve, tmp_path / "k.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choose_k_directly_and_its_limits() -> None:
    x, _ = blobs(k=3, per=5, dim=3)
    curve = choose_k(x, "kmeans", (2, 50))
    assert curve.ks[-1] == len(x) - 1  # silhouette is undefined for k = n
    assert curve.best == 3
    with pytest.raises(ValueError, match="hdbscan finds the number"):
        choose_k(x, "hdbscan")
    with pytest.raises(ValueError, match="no k to try"):
        choose_k(x[:2], "kmeans", (2, 5))


def test_reductions_keep_blobs_separable() -> None:
    x, y = blobs(k=3, per=30, dim=60)
    for reduction, dims in [("pca", 5), ("pca-whiten", 5), ("svd", 10), ("tsne", 2)]:
        r = cluster(x, "kmeans", 3, reduction=reduction, n_components=dims, truth=list(y))
        assert r.space is not None and r.space.shape == (90, dims), reduction
        assert r.scores["ari"] > 0.99, reduction
        assert "silhouette_reduced" in r.scores
    assert reduce(x, "pca", 0.9).shape[1] < 60  # a fraction keeps that share of the variance


class FakeUMAP:
    """Stands in for umap.UMAP, whose numba compilation takes 20-40 s in every fresh process (too slow
    for a unit test; the benchmark runs the real one). Records its parameters; embeds by PCA."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, **params):
        FakeUMAP.calls.append(params)
        self.params = params

    def fit_transform(self, x):
        from sklearn.decomposition import PCA

        return PCA(self.params["n_components"]).fit_transform(x)


def test_umap_is_called_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    FakeUMAP.calls.clear()
    x, y = blobs(k=3, per=30, dim=60)
    r = cluster(x, "kmeans", 3, reduction="umap", truth=list(y), seed=4)
    assert r.space.shape == (90, 10) and r.scores["ari"] > 0.99
    assert FakeUMAP.calls[-1] == {"n_components": 10, "n_neighbors": 30, "min_dist": 0.0, "metric": "cosine",
                                  "random_state": 4, "n_jobs": 1}
    assert r.params["n_neighbors"] == 30
    reduce(x[:8], "umap", 10)  # tiny inputs: fewer components and neighbours than asked
    assert FakeUMAP.calls[-1]["n_components"] == 6 and FakeUMAP.calls[-1]["n_neighbors"] == 7


def test_umap_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(ValueError, match="umap-learn"):
        reduce(np.eye(10), "umap")


def test_silhouette_is_sampled_on_large_inputs() -> None:
    x, y = blobs(k=3, per=2000, dim=4)
    s = score(x, y, seed=0)
    assert s["silhouette"] is not None and s["silhouette"] > 0.8
    assert s["clusters"] == 3 and s["noise"] == 0.0


def test_hdbscan_marks_noise_and_scores_it() -> None:
    x, _ = blobs(k=3, per=40, dim=2, spread=0.2)
    rng = np.random.default_rng(1)
    outliers = rng.uniform(-40, 40, (6, 2))
    result = cluster(np.vstack([x, outliers]), "hdbscan", normalisation="none", min_cluster_size=10)
    assert result.k == 3
    assert (result.labels[-6:] == -1).sum() >= 4
    assert 0 < result.scores["noise"] < 0.1


def test_result_serialises() -> None:
    x, y = blobs(k=2, per=10)
    d = cluster(x, "kmeans", truth=list(y), k_range=(2, 4)).to_dict()
    assert d["k"] == 2 and d["sizes"] == {0: 10, 1: 10}
    assert d["curve"]["criterion"] == "silhouette"


# -- bad input ------------------------------------------------------------------------------------


def test_fewer_items_than_clusters() -> None:
    x, _ = blobs(k=2, per=2)
    with pytest.raises(ValueError, match="4 items cannot form 5 clusters"):
        cluster(x, "kmeans", 5)


def test_constant_features() -> None:
    with pytest.raises(ValueError, match="features are constant"):
        cluster(np.ones((10, 4)), "kmeans", 2)
    with pytest.raises(ValueError, match="features are constant"):  # all-empty text embeds to zeros
        cluster(np.zeros((10, 384)), "kmeans", 2)


def test_other_bad_matrices() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        cluster(np.ones((1, 3)), "kmeans", 1)
    with pytest.raises(ValueError, match="NaN"):
        cluster(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 0.0]]), "kmeans", 2)
    with pytest.raises(ValueError, match="unknown clustering method"):
        cluster(np.eye(3), "dbscan", 2)
    with pytest.raises(ValueError, match="unknown reduction"):
        cluster(np.eye(3), "kmeans", 2, reduction="isomap")
    with pytest.raises(ValueError, match="hdbscan finds the number of clusters itself"):
        cluster(np.eye(3), "hdbscan", 2)
    with pytest.raises(ValueError, match="unknown normalisation"):
        cluster(np.eye(3), "kmeans", 2, normalisation="minmax")


def test_single_label_and_wrong_length_truth() -> None:
    x, _ = blobs(k=2, per=5)
    with pytest.raises(ValueError, match="single value 'cat'"):
        cluster(x, "kmeans", 2, truth=["cat"] * 10)
    with pytest.raises(ValueError, match="9 labels for 10 items"):
        cluster(x, "kmeans", 2, truth=["a", "b"] * 4 + ["a"])
    mask, codes = check_truth(["a", None, "b", "", float("nan"), "a"], 6)
    assert mask.tolist() == [True, False, True, False, False, True]
    assert codes.tolist() == [0, 1, 0]


# -- topic models -----------------------------------------------------------------------------------

SPORT = "football match goal striker team league referee stadium"
COOKING = "recipe oven flour butter sugar bake dough kitchen"
SPACE = "rocket orbit planet astronaut telescope galaxy launch moon"


def themed_texts(seed: int = 0, per: int = 15) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for c, vocab in enumerate([SPORT, COOKING, SPACE]):
        words = vocab.split()
        for _ in range(per):
            texts.append("the new " + " ".join(rng.choice(words, 6)) + " and more")
            y.append(c)
    return texts, np.array(y)


@pytest.mark.parametrize("method", ["lda", "nmf"])
def test_topic_models_find_the_themes(method: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    texts, y = themed_texts()
    model = topics([*texts, ""], 3, method, n_words=5)
    assert model.labels[-1] == -1  # an empty text has no topic
    assert adjusted_rand_score(y, model.labels[:-1]) > 0.9
    found = {frozenset(w for w, _ in words) for words in model.words}
    for vocab in (SPORT, COOKING, SPACE):
        assert any(len(words & set(vocab.split())) >= 4 for words in found)
    assert model.doc_topics.shape == (46, 3)
    assert np.allclose(model.doc_topics[:-1].sum(axis=1), 1)
    assert len(model.to_dict()["topics"]) == 3


def test_topic_models_refuse_empty_text() -> None:
    with pytest.raises(ValueError, match="all 3 texts are empty"):
        topics(["", None, "  "], 2)
    with pytest.raises(ValueError, match="no usable words"):
        topics(["the and of", "12 34", "a an the"], 2)
    with pytest.raises(ValueError, match="2 texts cannot form 3 topics"):
        topics(["a b", "c d"], 3)


# -- naming -----------------------------------------------------------------------------------------


def test_distinctive_terms_pick_each_clusters_own_words() -> None:
    texts, y = themed_texts(per=12)
    terms = distinctive_terms(texts, y, n_terms=4)
    for c, vocab in enumerate([SPORT, COOKING, SPACE]):
        words = [w for w, _ in terms[c]]
        assert len(words) == 4
        assert set(words) <= set(vocab.split()), (c, words)
        assert "new" not in words  # shared by every cluster: not distinctive


def test_one_long_repetitive_text_does_not_name_its_cluster() -> None:
    texts = ["red apple fruit"] * 5 + ["green pear fruit"] * 5
    texts[0] += " shipping" * 50
    terms = distinctive_terms(texts, [0] * 5 + [1] * 5, n_terms=2)
    assert [w for w, _ in terms[0]] == ["apple", "red"]


def test_distinctive_tags_and_colours_and_names() -> None:
    y = np.array([0] * 10 + [1] * 10)
    tags = [["style=pixel", "kind=nft"] for _ in range(10)] + [["style=watercolour", "kind=nft"] for _ in range(10)]
    tags[3].append("hat=red")
    found = distinctive_tags(tags, y, n_tags=2)
    assert found[0][0] == ("style=pixel", 1.0)
    assert found[1][0] == ("style=watercolour", 1.0)
    # Palettes in L*a*b* + share: cluster 0 mostly pure red, cluster 1 mostly blue with some white.
    red, blue, white = [53.2, 80.1, 67.2], [32.3, 79.2, -107.9], [100.0, 0.0, 0.0]
    palettes = np.array([[*red, 0.9, *white, 0.1]] * 10 + [[*blue, 0.6, *white, 0.4]] * 10)
    colours = dominant_colours(palettes, y)
    assert colours[0][0][0] == "red" and abs(colours[0][0][1] - 0.9) < 1e-6
    assert [c for c, _ in colours[1]] == ["blue", "white"]
    names = name_clusters(y, texts=[""] * 20, tags=tags, palettes=palettes)
    assert [n.name for n in names] == ["pixel style (red)", "watercolour style (blue, white)"]


def test_names_prefer_text_and_label_noise() -> None:
    texts, y = themed_texts(per=6)
    y = y.copy()
    y[0] = -1
    names = name_clusters(y, texts=texts)
    assert names[-1].cluster == -1 and names[-1].name == "unclustered"
    by_cluster = {n.cluster: n for n in names}
    assert set(by_cluster[1].name.split(" · ")) <= set(COOKING.split())
    assert by_cluster[1].size == 6


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("method", ["agglomerative", "spectral"])
def test_pairwise_methods_fit_a_sample_of_big_inputs(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import curata.cluster.core as module

    monkeypatch.setattr(module, "PAIRWISE_LIMIT", 60)
    x, y = blobs(k=3, per=100)
    result = cluster(x, method, 3, truth=list(y))
    assert result.params["fitted_on_sample"] == 60
    assert result.scores["ari"] > 0.99  # the items outside the sample joined the right centroid


def test_center_normalisation() -> None:
    from curata.cluster.core import normalise

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(50, 6))) + 3  # all positive, like ReLU features: raw cosines all high
    z = normalise(x, "center")
    assert np.allclose(np.linalg.norm(z, axis=1), 1)
    raw = normalise(x, "l2")
    assert (raw @ raw.T).min() > 0.8 and (z @ z.T).min() < 0


def test_sqrt_normalisation_damps_dominant_dimensions() -> None:
    from curata.cluster.core import normalise

    x = np.array([[100.0, 1.0, 1.0], [-4.0, 0.0, 9.0]])
    z = normalise(x, "sqrt")
    assert np.allclose(np.linalg.norm(z, axis=1), 1)
    assert np.allclose(z[0], np.array([10.0, 1.0, 1.0]) / np.sqrt(102))  # 100:1 becomes 10:1
    assert np.allclose(z[1], np.array([-2.0, 0.0, 3.0]) / np.sqrt(13))  # the sign is kept
