"""Plots of evaluation results: every function returns PNG bytes and also writes them to `path` when given.

Figures use matplotlib's object API (`Figure` + Agg), never pyplot: no global figure state, no GUI backend,
nothing to close by hand. Sizes are bounded and labels shortened, so 60+ classes stay readable; labels
come from user data, so mathtext (`$...$`) is switched off and they are drawn as plain text.
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

DPI = 100
MAX_LABEL_CHARS = 32
MAX_BARS = 60  # beyond this, bar charts show the best and worst halves
ANNOTATE_MAX = 20  # confusion matrices up to this size get their counts written in the cells
P = ParamSpec("P")
# Label colours, strongest first: tab10 and its light halves without the greys (grey means "other"),
# plus navy and black to reach 20.
_TAB20 = [matplotlib.colormaps["tab20"](i) for i in range(20)]
_PALETTE = [c for i, c in enumerate(_TAB20[0::2]) if i != 7] + ["#1b1f6b", "#111111"] + \
           [c for i, c in enumerate(_TAB20[1::2]) if i != 7]


def _plain_text(fn: Callable[P, bytes]) -> Callable[P, bytes]:
    """Draw user labels literally: a label like '$5 & up' must not be parsed (or fail) as mathtext.
    Missing glyphs (emoji, CJK in DejaVu) render as boxes; their warnings are noise here."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> bytes:
        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*Glyph .* missing from font")
            return fn(*args, **kwargs)

    return wrapper


def short(label: Any, limit: int = MAX_LABEL_CHARS) -> str:
    """A label cut to `limit` characters (with an ellipsis), one line."""
    text = " ".join(str(label).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Figure, path: Path | str | None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    data = buffer.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def _empty(message: str, path: Path | str | None) -> bytes:
    """A small figure saying why there is nothing to plot, so a report never has a hole."""
    fig = _figure(6, 1.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555")
    return _png(fig, path)


def _tick_fontsize(rows: int, inches: float) -> float:
    """A font that fits one label per row of an axis `inches` long (points), between 4.5 and 10 pt."""
    return float(np.clip(inches * 72 / max(rows, 1) * 0.8, 4.5, 10))


Row = tuple[str, float, Any]  # label, value, note payload (support, std...)


def _bar_rows(values: list[Row], max_bars: int) -> tuple[list[Row | int], str]:
    """Rows sorted highest first; past `max_bars`, the highest and lowest halves around an int: the number
    of rows left out, drawn as a gap."""
    rows = sorted(values, key=lambda r: (-r[1], r[0]))
    if len(rows) <= max_bars:
        return list(rows), ""
    half = max_bars // 2
    return [*rows[:half], len(rows) - 2 * half, *rows[-half:]], f" (top {half} and bottom {half} of {len(rows)})"


def _hbars(rows: Sequence[Row | int], *, title: str, xlabel: str, note: Callable[[float, Any], str],
           xerr: list[float] | None = None, xlim: tuple[float, float] | None = None,
           colour: Callable[[float], Any] | None = None, width: float = 8.0) -> Figure:
    """Horizontal bars, first row at the top; an int row is a gap standing for that many left-out rows."""
    n = len(rows)
    height = float(np.clip(1.2 + 0.24 * n, 2.6, 16))
    fig = _figure(width, height)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    bars = [(yi, r, 0.0 if xerr is None else xerr[i]) for i, (yi, r) in enumerate(zip(y, rows, strict=True))
            if not isinstance(r, int)]
    values = [r[1] for _, r, _ in bars]
    ax.barh([b[0] for b in bars], values, xerr=None if xerr is None else [b[2] for b in bars],
            color=[colour(v) if colour else "#4c78a8" for v in values], edgecolor="none", height=0.75,
            error_kw={"ecolor": "#333", "capsize": 2, "lw": 0.8})
    size = _tick_fontsize(n, height - 1)
    ax.set_yticks(y, [f"⋯ {r} more ⋯" if isinstance(r, int) else short(r[0]) for r in rows], fontsize=size)
    low, high = xlim or (min(0.0, *values), max(1e-9, *(v + e for _, (_, v, _), e in bars)))
    ax.set_xlim(low, high + (high - low) * 0.22)  # room for the notes right of the bars
    ax.set_xticks([t for t in ax.get_xticks() if low - 1e-9 <= t <= high + 1e-9])  # no ticks in the note margin
    ax.set_ylim(-0.7, n - 0.3)
    for yi, (_, value, payload), e in bars:
        ax.text(max(value + e, 0) + (high - low) * 0.01, yi, note(value, payload), va="center",
                fontsize=min(8.0, size), color="#333")
    if low < 0:
        ax.axvline(0, color="#333", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(axis="x", color="#ddd", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


@_plain_text
def confusion_heatmap(confusion: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[str], normalise: bool = True,
                      *, title: str | None = None, path: Path | str | None = None) -> bytes:
    """Rows are true classes, columns predictions; normalised per row (recall) unless `normalise=False`.
    Counts are written in the cells while the matrix is at most ANNOTATE_MAX classes wide."""
    counts = np.asarray(confusion, dtype=float)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {n} labels")
    if n == 0:
        return _empty("no classes", path)
    totals = counts.sum(axis=1, keepdims=True)
    shown = counts / np.where(totals == 0, 1, totals) if normalise else counts
    side = float(np.clip(3.0 + 0.16 * n, 5.5, 16))
    fig = _figure(side + 1.3, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalise else max(1.0, float(shown.max()))
    image = ax.imshow(shown, cmap="Blues", norm=Normalize(0, vmax), interpolation="nearest", aspect="equal")
    size = _tick_fontsize(n, side * 0.75)
    step = max(1, math.ceil(n / 150))  # past 150 classes, label every other row/column
    ticks = np.arange(0, n, step)
    names = [short(labels[i], 24) for i in ticks]
    ax.set_xticks(ticks, names, fontsize=size, rotation=90)
    ax.set_yticks(ticks, names, fontsize=size)
    if n <= ANNOTATE_MAX:
        cell = float(np.clip(side * 72 / n * 0.3, 6, 11))
        for i in range(n):
            for j in range(n):
                if counts[i, j] or i == j:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=cell,
                            color="white" if shown[i, j] > 0.55 * vmax else "#222")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    default = "Confusion matrix" + (", row-normalised" if normalise else " (counts)")
    ax.set_title(title or default, fontsize=11, loc="left")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02,
                 label="share of the true class" if normalise else "items")
    return _png(fig, path)


@_plain_text
def per_class_bars(per_class: dict[str, dict[str, float]], metric: str = "f1", *, title: str | None = None,
                   path: Path | str | None = None, max_bars: int = MAX_BARS) -> bytes:
    """One bar per class for `metric` (precision, recall, f1), sorted best first, support written beside."""
    values = [(str(k), float(v[metric]), v.get("support")) for k, v in per_class.items() if metric in v]
    if not values:
        return _empty(f"no per-class {metric}", path)
    rows, cut = _bar_rows(values, max_bars)
    cmap = matplotlib.colormaps["RdYlGn"]

    def note(value: float, support: Any) -> str:
        return f"{value:.2f}" + (f"  n={support}" if support is not None else "")

    heading = (title or f"Per-class {metric.replace('f1', 'F1')}") + cut
    fig = _hbars(rows, title=heading, xlabel=metric, note=note, xlim=(0.0, 1.0),
                 colour=lambda v: cmap(0.15 + 0.7 * float(np.clip(v, 0, 1))))
    return _png(fig, path)


@_plain_text
def comparison_bars(rows: Sequence[dict[str, Any]], metric: str, *, title: str | None = None,
                    path: Path | str | None = None) -> bytes:
    """Models side by side on `metric` (mean over folds) with ± one std as error bars; the best is highlighted.
    `rows` are `comparison_table` rows."""
    values = [(str(r["model"]), float(r[metric]), float(r.get(f"{metric}_std") or 0.0))
              for r in rows if r.get(metric) is not None]
    if not values:
        return _empty(f"no model has {metric}", path)
    ordered = sorted(values, key=lambda r: (-r[1], r[0]))
    best = ordered[0][1]
    top = max(v + s for _, v, s in ordered)
    bounded = all(0 <= v <= 1 for _, v, _ in ordered)
    heading = title or f"Model comparison: {metric} (mean ± std over folds)"
    fig = _hbars(list(ordered), title=heading,
                 xlabel=metric, note=lambda v, s: f"{v:.3f} ± {s:.3f}", xerr=[s for _, _, s in ordered],
                 xlim=(0.0, max(1.0, top)) if bounded else None,
                 colour=lambda v: "#f58518" if v == best else "#4c78a8")
    return _png(fig, path)


@_plain_text
def feature_importance_bars(items: Sequence[tuple[str, float, float]], top: int = 20, *, title: str | None = None,
                            path: Path | str | None = None) -> bytes:
    """The `top` most important features (mean ± std, e.g. permutation importance over repeats)."""
    values = sorted(((str(n), float(m), float(s)) for n, m, s in items), key=lambda r: (-r[1], r[0]))
    if not values:
        return _empty("no feature importance", path)
    shown = values[:top]
    heading = title or "Feature importance" + (f" (top {top} of {len(values)})" if len(values) > top else "")
    fig = _hbars([(n, m, s) for n, m, s in shown], title=heading, xlabel="importance (mean ± std)",
                 note=lambda m, s: f"{m:.3f}" if 1e-3 <= abs(m) < 1e4 else f"{m:.2e}", xerr=[s for _, _, s in shown],
                 width=8.5)
    return _png(fig, path)


@_plain_text
def threshold_bars(thresholds: dict[str, float], *, title: str | None = None, path: Path | str | None = None,
                   max_bars: int = MAX_BARS) -> bytes:
    """Per-label decision thresholds of a multi-label model, highest first, against the default 0.5."""
    values = [(str(k), float(v), None) for k, v in thresholds.items()]
    if not values:
        return _empty("no thresholds", path)
    rows, cut = _bar_rows(values, max_bars)
    fig = _hbars(rows, title=(title or "Per-label decision thresholds") + cut, xlabel="threshold on the score",
                 note=lambda v, _: f"{v:.2f}", xlim=(0.0, 1.0), colour=lambda _: "#54a24b")
    ax = fig.axes[0]
    ax.axvline(0.5, color="#b00", lw=0.9, ls="--")
    ax.text(0.505, 1.0, "default 0.5", transform=ax.get_xaxis_transform(), color="#b00", fontsize=8, va="bottom")
    return _png(fig, path)


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of `x` and the method actually used.

    t-SNE and UMAP first reduce to at most 50 dimensions with PCA (faster, less noise). Fewer than 5 rows
    fall back to PCA (the neighbour methods need more); one row or identical rows give zeros. Fixed seeds:
    the same input gives the same map."""
    method = method.lower()
    if method not in ("pca", "tsne", "umap"):
        raise ValueError(f"unknown embedding method '{method}'; choose pca, tsne or umap")
    data = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if data.ndim == 1:
        data = data[:, None]
    n = data.shape[0]
    if n == 0:
        raise ValueError("no items to map")
    if n < 5:
        method = "pca"
    if n == 1 or np.ptp(data, axis=0).max() == 0:
        return np.zeros((n, 2)), method
    from sklearn.decomposition import PCA

    k = min(2 if method == "pca" else 50, n, data.shape[1])
    reduced = PCA(n_components=k, random_state=seed).fit_transform(data)
    if reduced.shape[1] < 2:  # a single feature or two rows: pad with a zero axis
        reduced = np.hstack([reduced, np.zeros((n, 2 - reduced.shape[1]))])
    if method == "pca":
        return reduced[:, :2], method
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))  # must stay below n
        model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
        # t-SNE's OpenMP loops collapse when threads outnumber free cores (3x slower seen on a busy 2-core
        # box, 10x on small inputs): one thread for small maps, at most half the cores otherwise.
        threads = 1 if n < 500 else max(1, min(4, (os.cpu_count() or 1) // 2))
        with threadpool_limits(limits=threads, user_api="openmp"):
            return model.fit_transform(reduced), method
    import umap  # imported late: numba compiles on first use, several seconds

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed forces one thread: intended
        model = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed,
                          init="spectral" if n > 20 else "random")
        return np.asarray(model.fit_transform(reduced)), method


@_plain_text
def embedding_map(x: np.ndarray, labels: Sequence[str], method: str = "pca", seed: int = 0, *, top: int = 20,
                  max_points: int = 2000, title: str | None = None, path: Path | str | None = None) -> bytes:
    """Items in 2-D (PCA, t-SNE or UMAP of their features) coloured by label; the `top` most frequent labels
    get their own colour and legend entry, the rest are grey 'other'. Past `max_points` items a fixed-seed
    random sample is drawn (t-SNE and UMAP are slow on thousands of points)."""
    labels = [str(v) for v in labels]
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} rows but {len(labels)} labels")
    if len(labels) == 0:
        return _empty("no items to map", path)
    index = np.arange(len(labels))
    if len(index) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(len(index), max_points, replace=False))
    coords, used = project_2d(np.asarray(x)[index], method, seed)
    shown = [labels[i] for i in index]
    counts = Counter(shown)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    kept, rest = ranked[:top], ranked[top:]
    palette = _PALETTE
    fig = _figure(10, 7)
    ax = fig.add_subplot()
    size = float(np.clip(6000 / len(index), 6, 60))
    alpha = 0.85 if len(index) < 500 else 0.65
    group = np.array(shown, dtype=object)
    if rest:
        mask = ~np.isin(group, kept)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, c="#c8c8c8", alpha=alpha, linewidths=0,
                   label=f"other: {len(rest)} labels ({int(mask.sum())})")
    for i, label in enumerate(kept):
        mask = group == label
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=palette[i % len(palette)], alpha=alpha,
                   linewidths=0, label=f"{short(label, 28)} ({counts[label]})")
    handles, names = ax.get_legend_handles_labels()
    if rest:  # 'other' is drawn first (underneath) but listed last
        handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
              markerscale=max(1.0, 40 / size) ** 0.5, title="label (items)", title_fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.margins(0.06)
    names_used = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
    heading = f"{names_used[used]} map of {len(labels)} items"
    if len(index) < len(labels):
        heading += f" ({len(index)} sampled)"
    if used != method.lower():
        heading += f" (too few for {names_used.get(method.lower(), method)})"
    ax.set_title(title or heading, fontsize=11, loc="left")
    return _png(fig, path)
