"""The evaluation report: plots from real cross-validation results, a self-contained, escaped HTML page, JSON."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from curata.evaluate import plots
from curata.evaluate.cv import CVResult, comparison_table, cross_validate
from curata.evaluate.report import best_result, write_report
from curata.evaluate.splits import make_folds

HOSTILE = "<script>alert(1)</script>"
QUOTES = "say \"hi\" & 'bye'"
MATH = "$\\frac{x unbalanced $5"  # broken mathtext: would raise if matplotlib parsed it
LABELS = [HOSTILE, QUOTES, MATH]


def blobs(n_per: int = 30, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping Gaussian classes: learnable, but not perfectly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.9, (len(LABELS), dim))
    x = np.vstack([rng.normal(c, 1.0, (n_per, dim)) for c in centres])
    y = np.repeat(np.array(LABELS, dtype=object), n_per)
    return x, y


class MultiLabelLR:
    """One logistic regression per label; predicts a 0/1 matrix and per-label probabilities."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> MultiLabelLR:
        self.models_ = [LogisticRegression(max_iter=200).fit(x, y[:, j]) for j in range(y.shape[1])]
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([m.predict_proba(x)[:, 1] for m in self.models_])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x) >= 0.5


@pytest.fixture(scope="module")
def single() -> tuple[list[CVResult], np.ndarray, np.ndarray]:
    x, y = blobs()
    folds = make_folds(y, n_splits=3, seed=0)
    results = [cross_validate("logreg", lambda: LogisticRegression(max_iter=300), x, y, folds, labels=LABELS),
               cross_validate("<b>majority</b>", lambda: DummyClassifier(strategy="most_frequent"), x, y, folds,
                              labels=LABELS)]
    return results, x, y


@pytest.fixture(scope="module")
def multi() -> list[CVResult]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 5))
    y = np.column_stack([x[:, 0] > 0, x[:, 1] + 0.5 * rng.normal(size=90) > 0, x[:, 2] > 0.3]).astype(int)
    folds = make_folds(None, n_splits=3, seed=0, n_items=90)
    return [cross_validate("per-label logreg", MultiLabelLR, x, y, folds, labels=["red", HOSTILE, QUOTES])]


def check_png(data: bytes, max_side: int = 2000, ink: float = 0.01) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert 200 <= image.width <= max_side and 100 <= image.height <= max_side, image.size
    grey = np.asarray(image.convert("L"), dtype=float)
    assert grey.std() > 0
    assert (grey < 250).mean() > ink  # something is drawn, not a blank page with a title
    return image


def check_html(html: str) -> list[bytes]:
    """No outside resources, no scripts; returns the decoded inline images."""
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    sources = re.findall(r"src=['\"]([^'\"]*)['\"]", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources]


def test_single_label_report(tmp_path: Path, single) -> None:
    results, x, y = single
    importance = [(f"feature {i}", 0.1 * (6 - i), 0.02) for i in range(6)] + [(HOSTILE, -0.01, 0.005)]
    paths = write_report(tmp_path / "rep", "colour <test> & co", results,
                         protocol={"task": "colour", "target": "label", "folds": 3, "seed": 0,
                                   "split": "3-fold stratified", "items_used": len(y),
                                   "skipped": {"no label": 4, HOSTILE: 1}, "features": {"rgb": "rgb-hist@1"}},
                         embedding=(x, list(y)), embedding_method="pca", importance=importance,
                         notes=[f"note with {HOSTILE}"], extra={"nan": float("nan"), "array": np.arange(3)})
    html = paths["html"].read_text(encoding="utf-8")
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))

    # Every plot was drawn, written, inlined unchanged, and looks like a picture.
    names = sorted(p.name for p in paths["plots"])
    assert names == sorted(["comparison-macro_f1.png", "logreg-confusion.png", "logreg-per-class-f1.png",
                            "b-majority-b-confusion.png", "b-majority-b-per-class-f1.png", "importance.png",
                            "embedding-pca.png"])
    assert payload["plot_errors"] == []
    inline = check_html(html)
    assert sorted(inline) == sorted(p.read_bytes() for p in paths["plots"])
    for p in paths["plots"]:
        check_png(p.read_bytes())

    # User text is escaped everywhere it appears.
    assert HOSTILE not in html and "<b>majority" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "say &quot;hi&quot; &amp; &#x27;bye&#x27;" in html
    assert "&lt;b&gt;majority&lt;/b&gt;" in html and "logreg" in html
    assert "colour &lt;test&gt; &amp; co" in html

    # The comparison table: the real model wins and is highlighted.
    assert best_result(results).name == "logreg"
    assert re.search(r"<tr class=best><td class='name'>logreg <span class=tag>best</span>", html)
    assert payload["best_model"] == "logreg"
    assert payload["comparison"] == comparison_table(results)
    assert [r["name"] for r in payload["results"]] == ["logreg", "<b>majority</b>"]
    assert payload["results"][0]["overall"]["confusion"] == results[0].overall["confusion"]
    assert payload["extra"] == {"nan": None, "array": [0, 1, 2]}
    assert payload["notes"] == [f"note with {HOSTILE}"]
    assert payload["protocol"]["skipped"]["no label"] == 4
    assert "items used" in html and "no label: 4" in html


def test_multilabel_report(tmp_path: Path, multi) -> None:
    thresholds = {"red": 0.35, HOSTILE: 0.6, QUOTES: 0.5}
    paths = write_report(tmp_path, "tags", multi, protocol={"task": "tags", "folds": 3, "seed": 0},
                         thresholds=thresholds)
    names = sorted(p.name for p in paths["plots"])
    assert names == ["per-label-logreg-per-label-f1.png", "thresholds.png"]
    html = paths["html"].read_text(encoding="utf-8")
    check_html(html)
    for p in paths["plots"]:
        check_png(p.read_bytes())
    assert HOSTILE not in html and "micro F1" in html
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert payload["primary_metric"] == "micro_f1" and payload["thresholds"] == thresholds
    assert payload["results"][0]["overall"]["per_label"]["red"]["support"] > 0
    assert payload["comparison"][0]["micro_f1"] == pytest.approx(multi[0].summary["micro_f1"]["mean"])


def test_rewrite_drops_stale_plots(tmp_path: Path, single) -> None:
    results, _, _ = single
    write_report(tmp_path, "two", results, protocol={})
    paths = write_report(tmp_path, "one", results[:1], protocol={})
    on_disk = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert on_disk == sorted(p.name for p in paths["plots"]) == ["logreg-confusion.png", "logreg-per-class-f1.png"]


def test_a_failing_plot_becomes_a_note(tmp_path: Path, single) -> None:
    results, x, _ = single
    paths = write_report(tmp_path, "bad", results[:1], protocol={}, embedding=(x, ["a"] * 3))  # labels too short
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert len(payload["plot_errors"]) == 1 and "embedding" in payload["plot_errors"][0]
    assert "rows but 3 labels" in paths["html"].read_text(encoding="utf-8")


def test_many_classes_stay_bounded() -> None:
    n = 70
    rng = np.random.default_rng(0)
    labels = [f"class number {i} with a rather long descriptive name" for i in range(n)]
    confusion = rng.integers(0, 3, (n, n)) + np.diag(rng.integers(5, 30, n))
    check_png(plots.confusion_heatmap(confusion.tolist(), labels))
    per_class = {lab: {"f1": float(v), "support": 10} for lab, v in zip(labels * 2, rng.random(2 * n), strict=True)}
    per_class.update({f"extra {i}": {"f1": float(rng.random()), "support": 3} for i in range(80)})
    check_png(plots.per_class_bars(per_class))  # 150 classes: best and worst 30 shown, height capped
    check_png(plots.threshold_bars({lab: float(rng.random()) for lab in labels}))
    check_png(plots.feature_importance_bars([(f"f{i}", float(rng.normal()), 0.1) for i in range(300)], top=20))


def test_embedding_map_edge_cases() -> None:
    rng = np.random.default_rng(0)
    check_png(plots.embedding_map(rng.normal(size=(3, 8)), ["a", "b", "a"], method="tsne"))  # falls back to PCA
    check_png(plots.embedding_map(rng.normal(size=(12, 4)), ["only"] * 12, method="pca"))
    check_png(plots.embedding_map(rng.normal(size=(1, 4)), ["one"], method="umap"))
    check_png(plots.embedding_map(np.ones((6, 3)), list("abcabc")))  # identical rows
    coords, used = plots.project_2d(rng.normal(size=(3, 8)), "tsne")
    assert coords.shape == (3, 2) and used == "pca"
    with pytest.raises(ValueError, match="unknown embedding method"):
        plots.project_2d(np.zeros((4, 2)), "mds")


def test_embedding_map_is_deterministic_and_groups_rare_labels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10))
    labels = [f"label {i % 25}" for i in range(40)]  # 25 labels: 5 end up in "other"
    first, used = plots.project_2d(x, "tsne", seed=3)
    again, _ = plots.project_2d(x, "tsne", seed=3)
    assert used == "tsne" and np.array_equal(first, again)
    assert plots.embedding_map(x, labels, "pca", seed=1) == plots.embedding_map(x, labels, "pca", seed=1)
    check_png(plots.embedding_map(x, labels, "tsne"))


def test_embedding_map_samples_large_inputs() -> None:
    x = np.random.default_rng(0).normal(size=(600, 5))
    coords, _ = plots.project_2d(x[:100], "pca")
    assert coords.shape == (100, 2)
    check_png(plots.embedding_map(x, ["a", "b", "c"] * 200, "pca", max_points=100))


def test_comparison_bars_from_table(single) -> None:
    results, _, _ = single
    check_png(plots.comparison_bars(comparison_table(results), "accuracy"))
    check_png(plots.comparison_bars(comparison_table(results), "fit_seconds"))  # not bounded by 1
    check_png(plots.per_class_bars({}), ink=0)  # nothing to plot still gives an image saying so


def test_plot_writes_file(tmp_path: Path) -> None:
    data = plots.threshold_bars({"a": 0.2, "b": 0.7}, path=tmp_path / "sub" / "t.png")
    assert (tmp_path / "sub" / "t.png").read_bytes() == data


@pytest.mark.slow
def test_umap_map() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(c, 0.3, (20, 6)) for c in (0, 3)])
    coords, used = plots.project_2d(x, "umap", seed=0)
    assert used == "umap" and coords.shape == (40, 2) and np.isfinite(coords).all()
    check_png(plots.embedding_map(x, ["left"] * 20 + ["right"] * 20, "umap"))
