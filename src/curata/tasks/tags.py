"""Multi-label tags: predict an item's tags, suggest the ones it is missing.

Every candidate is a `ThresholdedTagger` around a base scorer (one-vs-rest logistic regression, a
small PyTorch MLP, or multi-output ridge regression). Its `fit` sees only the training rows it is
given (under `cross_validate`, the training fold) and does three things there:

1. scores every training row out of fold (inner K-fold, K=5 by default, fixed seed, a fresh base model
   per inner fold; with K=3 the inner models, trained on 2/3 of the rows, were visibly less confident
   than the refit model and their thresholds transferred worse),
2. picks one threshold per tag that maximises that tag's F1 on those out-of-fold scores — a common tag
   and a rare one need very different cut-offs, and 0.5 is right for neither when classes are
   imbalanced; tags with fewer than `min_positives` positives share one global threshold tuned for
   micro-F1 over all tags pooled (a per-tag F1 optimum on 2 or 3 positives is noise; the pooled
   threshold is dominated by common tags, so a rare tag may rarely be predicted — it still ranks in
   `suggest` with `include_below`),
3. refits the base model on all its training rows.

A tag that is constant in some training rows (always absent, or on every item) is not given to the
base model there — logistic regression cannot fit a single class — and scores that constant instead.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from curata.tasks.base import Blocks, Task, concat_blocks

Rank = Literal["ratio", "score"]
Suggestion = tuple[str, float]


# Base scorers: (n, d) matrix and a 0/1 (n, L) matrix in which every column has both values. ---------


class LogRegTagger(BaseEstimator):
    """One-vs-rest logistic regression on standardised features; scores are P(tag).

    `class_weight=None` by default: the per-tag thresholds already move the cut-off for rare tags,
    while "balanced" would up-weight a tag with 3 positives ~100x and overfit those 3 items. Pass
    "balanced" to try it anyway.
    """

    def __init__(self, C: float = 0.1, class_weight: str | None = None, scale: bool = True,
                 max_iter: int = 2000, blas_threads: int | None = 1) -> None:
        self.C = C
        self.class_weight = class_weight
        self.scale = scale
        self.max_iter = max_iter
        self.blas_threads = blas_threads

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogRegTagger:
        # Standardising after the per-block L2 norm puts every dimension on one scale, so one C suits
        # embeddings of any width and lbfgs converges quickly.
        self.scaler_ = StandardScaler().fit(x) if self.scale else None
        z = self._z(x)
        # One BLAS thread: these per-tag problems are small, and on busy cores extra threads made lbfgs
        # ~10x slower (measured on 240 x 64 and 2000 x 1664); None leaves the BLAS setting alone.
        with threadpool_limits(self.blas_threads):
            self.models_ = [LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter)
                            .fit(z, y[:, j]) for j in range(y.shape[1])]
        return self

    def _z(self, x: np.ndarray) -> np.ndarray:
        return self.scaler_.transform(x) if self.scaler_ is not None else x

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self._z(x)
        return np.column_stack([m.predict_proba(z)[:, 1] for m in self.models_]).astype(np.float32)


class RidgeTagger(BaseEstimator):
    """Ridge regression of the whole 0/1 tag matrix on standardised features: one linear solve for all tags.

    Why: one-vs-rest logistic regression runs an iterative fit per tag, per inner fold, per outer fold
    (87 tags x 6 x 5 = 2610 lbfgs fits for the CryptoPunks: 14 minutes), while ridge shares a single
    Gram matrix (or kernel) and factorisation across every tag — the CryptoPunks tags in about a
    minute, and on raw pixels plus a colour code more accurate than logistic regression on CNN
    embeddings (README "Benchmarks"). The per-tag thresholds turn its least-squares scores into
    decisions, so calibration is not needed. Scores are the regression estimates of P(tag), clipped
    to 0..1 (beyond them the estimate only says "certainly" / "certainly not").

    `alpha` is the penalty per training row on standardised features (the solve adds alpha * n to
    the Gram diagonal), so one value suits collections of any size. The primal (d x d) or dual
    (n x n) system is solved, whichever is smaller; constant columns are dropped first.
    """

    def __init__(self, alpha: float = 0.003, clip: bool = True) -> None:
        self.alpha = alpha
        self.clip = clip

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeTagger:
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float64)
        n = len(x)
        mean, std = x.mean(axis=0), x.std(axis=0)
        self.keep_ = std > 1e-6
        self.n_features_in_ = x.shape[1]
        z = (x[:, self.keep_] - mean[self.keep_]) / std[self.keep_]
        centred = y - y.mean(axis=0)
        penalty = self.alpha * n
        # float32 products (the bulk of the work), float64 Cholesky solve.
        if z.shape[1] <= n:
            gram = (z.T @ z).astype(np.float64)
            gram[np.diag_indices_from(gram)] += penalty
            w = scipy.linalg.solve(gram, (z.T @ centred.astype(np.float32)).astype(np.float64), assume_a="pos")
        else:
            kernel = (z @ z.T).astype(np.float64)
            kernel[np.diag_indices_from(kernel)] += penalty
            dual = scipy.linalg.solve(kernel, centred, assume_a="pos")
            w = (z.T @ dual.astype(np.float32)).astype(np.float64)
        # Fold the standardisation into the weights: scores are x[:, keep] @ coef_ + intercept_.
        coef = w / std[self.keep_, None]
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = (y.mean(axis=0) - mean[self.keep_] @ coef).astype(np.float32)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        scores = np.asarray(x, np.float32)[:, self.keep_] @ self.coef_ + self.intercept_
        return np.clip(scores, 0, 1) if self.clip else scores


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use `n` intra-op threads for the block only: the setting is process-wide and cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _network(n_in: int, hidden: int, n_out: int, dropout: float) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(hidden, n_out))


class MLPTagger(BaseEstimator):
    """One hidden layer with dropout, sigmoid outputs, trained with BCE-with-logits and Adam on CPU.

    `pos_weight` per tag is sqrt(negatives / positives) capped at `max_pos_weight`: rare tags get
    gradient enough to be learnt without the full ratio's over-prediction (thresholds fix the rest).
    Early stopping watches the loss on `val_fraction` of the training rows (held out with `seed`) and
    keeps the best epoch's weights; with fewer than `min_val` held-out rows there is no hold-out and
    it trains `max_epochs`. Pickles as numpy weights plus shapes; the network is rebuilt on first use.
    One torch thread by default: on shared cores, 2 threads made cross-validation ~9x slower than 1
    (the matrices are small); raise `n_threads` on an idle many-core machine with large collections.
    """

    def __init__(self, hidden: int = 256, dropout: float = 0.3, lr: float = 3e-3, weight_decay: float = 1e-4,
                 max_epochs: int = 60, patience: int = 8, batch_size: int = 128, val_fraction: float = 0.15,
                 min_val: int = 10, max_pos_weight: float = 10.0, seed: int = 0, n_threads: int = 1) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.min_val = min_val
        self.max_pos_weight = max_pos_weight
        self.seed = seed
        self.n_threads = n_threads

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLPTagger:
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.std_ = np.where(std < 1e-8, 1, std).astype(np.float32)
        z = (x - self.mean_) / self.std_
        n = len(z)
        order = np.random.default_rng(self.seed).permutation(n)
        n_val = round(n * self.val_fraction)
        if n_val < self.min_val or n - n_val < self.min_val:
            n_val = 0
        val, train = order[:n_val], order[n_val:]
        positives = y[train].sum(axis=0)
        negatives = len(train) - positives
        pos_weight = np.clip(np.sqrt(negatives / np.maximum(positives, 1)), 1, self.max_pos_weight)
        self.n_features_in_, self.n_outputs_ = z.shape[1], y.shape[1]
        # fork_rng: seeding here must not reset the caller's global torch RNG.
        with _torch_threads(self.n_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _network(self.n_features_in_, self.hidden, self.n_outputs_, self.dropout)
            loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor(pos_weight, dtype=torch.float32))
            optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            zt, yt = torch.from_numpy(z[train]), torch.from_numpy(y[train])
            zv, yv = torch.from_numpy(z[val]), torch.from_numpy(y[val])
            best, best_state, best_epoch, waited = np.inf, None, self.max_epochs - 1, 0
            for epoch in range(self.max_epochs):
                net.train()
                for batch in torch.randperm(len(train)).split(self.batch_size):
                    optimiser.zero_grad()
                    loss_fn(net(zt[batch]), yt[batch]).backward()
                    optimiser.step()
                if not n_val:
                    continue
                net.eval()
                with torch.no_grad():
                    loss = float(loss_fn(net(zv), yv))
                if loss < best - 1e-5:
                    best, best_state, best_epoch, waited = loss, copy.deepcopy(net.state_dict()), epoch, 0
                else:
                    waited += 1
                    if waited >= self.patience:
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
        net.eval()
        self.n_epochs_ = best_epoch + 1
        self.state_ = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        self._net = net
        return self

    def _module(self) -> torch.nn.Module:
        net = getattr(self, "_net", None)
        if net is None:
            net = _network(self.n_features_in_, self.hidden, self.n_outputs_, self.dropout)
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_.items()})
            net.eval()
            self._net = net
        return net

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(((np.asarray(x, np.float32) - self.mean_) / self.std_).astype(np.float32))
        net = self._module()
        with _torch_threads(self.n_threads), torch.no_grad():
            out = [torch.sigmoid(net(part)) for part in z.split(4096)]
        return (torch.cat(out).numpy() if out else np.zeros((0, self.n_outputs_))).astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_net", None)  # the weights live in state_ as numpy arrays
        return state


BASES: dict[str, Callable[[], BaseEstimator]] = {"logreg": LogRegTagger, "mlp": MLPTagger, "ridge": RidgeTagger}


# Thresholds ---------------------------------------------------------------------------------------


def best_f1_threshold(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The cut-off t (predict `score >= t`) with the best F1 of `y` given `scores`, and that F1.

    t lies halfway between the lowest score kept and the next lower one, so it does not sit exactly on
    a training score. Without any positive there is nothing to tune: (0.5, 0.0). A cut that keeps every
    item (the scores cannot tell the positives from the rest, e.g. all of them tied at 0) is refused for a
    label on fewer than half the items: the label would be predicted for everything, so no item gets it
    (t just above the highest score, F1 0.0).
    """
    scores = np.asarray(scores, np.float64).ravel()
    y = np.asarray(y).ravel().astype(bool)
    total = int(y.sum())
    if total == 0 or len(scores) == 0:
        return 0.5, 0.0
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], np.cumsum(y[order])
    f1 = 2 * hits / (np.arange(1, len(s) + 1) + total)
    # Only cuts between distinct scores are possible: tied scores are kept or dropped together.
    f1[:-1][s[1:] == s[:-1]] = -1
    i = int(np.argmax(f1))
    if i + 1 == len(s):
        if 2 * total < len(s):
            return float(np.nextafter(s[0], np.inf)), 0.0
        return float(s[i]), float(f1[i])
    return float((s[i] + s[i + 1]) / 2), float(f1[i])


def tune_thresholds(scores: np.ndarray, y: np.ndarray, min_positives: int = 5,
                    tunable: np.ndarray | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per-label thresholds from out-of-fold `scores`: (thresholds, source per label, F1 at threshold).

    Source is "label" (its own F1 optimum), "global" (fewer than `min_positives` positives: the one
    threshold maximising micro-F1 over the `tunable` labels pooled) or "constant" (not tunable: the
    label did not vary in training; it keeps 0.5 and scores its constant 0 or 1).
    """
    y = np.asarray(y).astype(bool)
    n_labels = y.shape[1]
    tunable = np.ones(n_labels, bool) if tunable is None else np.asarray(tunable, bool)
    thresholds = np.full(n_labels, 0.5, np.float32)
    f1 = np.zeros(n_labels, np.float32)
    sources = ["constant"] * n_labels
    if tunable.any():
        shared, _ = best_f1_threshold(scores[:, tunable], y[:, tunable])
        for j in np.flatnonzero(tunable):
            if y[:, j].sum() >= min_positives:
                thresholds[j], f1[j] = best_f1_threshold(scores[:, j], y[:, j])
                sources[j] = "label"
            else:
                predicted = scores[:, j] >= shared
                thresholds[j], sources[j] = shared, "global"
                f1[j] = 2 * (predicted & y[:, j]).sum() / max(predicted.sum() + y[:, j].sum(), 1)
    return thresholds, sources, f1


# The estimator ------------------------------------------------------------------------------------


class _Guarded:
    """A base model fitted only on the labels that vary in its training rows; the others score their constant."""

    def __init__(self, base: BaseEstimator, x: np.ndarray, y: np.ndarray) -> None:
        self.varying = y.min(axis=0) != y.max(axis=0) if len(y) else np.zeros(y.shape[1], bool)
        self.constant = (y[0] if len(y) else np.zeros(y.shape[1])).astype(np.float32)
        self.model = clone(base).fit(x, y[:, self.varying]) if self.varying.any() else None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = np.tile(self.constant, (len(x), 1))
        if self.model is not None and len(x):
            out[:, self.varying] = self.model.predict_proba(x)
        return out


class ThresholdedTagger(BaseEstimator):
    """Base scorer + per-label thresholds tuned on inner cross-validated scores of the training data.

    `base` is "logreg", "mlp" or an unfitted estimator with `fit(matrix, Y)` / `predict_proba(matrix)`.
    Blocks are concatenated (each L2-normalised when `normalise`). Fitted: `thresholds_` (one per
    label), `threshold_source_`, `threshold_f1_` (out-of-fold F1 at the threshold), `model_`.
    No `classes_`: scores are aligned to the label order of `Y`.
    """

    def __init__(self, base: str | BaseEstimator = "logreg", inner_folds: int = 5, min_positives: int = 5,
                 normalise: bool = True, seed: int = 0) -> None:
        self.base = base
        self.inner_folds = inner_folds
        self.min_positives = min_positives
        self.normalise = normalise
        self.seed = seed

    def _base(self) -> BaseEstimator:
        if isinstance(self.base, str):
            if self.base not in BASES:
                raise ValueError(f"unknown base model '{self.base}'; choose from {', '.join(BASES)}")
            return BASES[self.base]()
        return self.base

    def _matrix(self, x: Blocks | np.ndarray, fitting: bool = False) -> np.ndarray:
        names = sorted(x) if isinstance(x, dict) else None
        if fitting:
            self.blocks_ = names
        elif names != self.blocks_:
            raise ValueError(f"model was fitted on feature blocks {self.blocks_}, got {names}")
        if isinstance(x, dict):
            return concat_blocks(x, self.normalise)
        return np.asarray(x, np.float32)

    def fit(self, x: Blocks | np.ndarray, y: np.ndarray) -> ThresholdedTagger:
        z = self._matrix(x, fitting=True)
        y = np.asarray(y)
        if y.ndim != 2:
            raise ValueError(f"tags need a 2-D 0/1 matrix (items x tags), got shape {y.shape}")
        y = (y > 0).astype(np.int8)
        base = self._base()
        self.n_labels_ = y.shape[1]
        oof = self.oof_scores(z, y, base)
        varying = y.min(axis=0) != y.max(axis=0) if len(y) else np.zeros(self.n_labels_, bool)
        if oof is None:  # too few rows for inner folds: no evidence to tune on
            self.thresholds_ = np.full(self.n_labels_, 0.5, np.float32)
            self.threshold_source_ = ["default"] * self.n_labels_
            self.threshold_f1_ = np.zeros(self.n_labels_, np.float32)
        else:
            self.thresholds_, self.threshold_source_, self.threshold_f1_ = tune_thresholds(
                oof, y, self.min_positives, tunable=varying)
        self.model_ = _Guarded(base, z, y)
        return self

    def oof_scores(self, z: np.ndarray, y: np.ndarray, base: BaseEstimator) -> np.ndarray | None:
        """Out-of-fold scores of the rows of `z` (inner K-fold within the data `fit` was given)."""
        k = min(self.inner_folds, len(z))
        if k < 2:
            return None
        out = np.zeros(y.shape, np.float32)
        for train, test in KFold(n_splits=k, shuffle=True, random_state=self.seed).split(z):
            out[test] = _Guarded(base, z[train], y[train]).predict_proba(z[test])
        return out

    def predict_proba(self, x: Blocks | np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(self._matrix(x))

    def predict(self, x: Blocks | np.ndarray) -> np.ndarray:
        return (self.predict_proba(x) >= self.thresholds_).astype(np.int8)


# Suggestions --------------------------------------------------------------------------------------


def rank_suggestions(scores: np.ndarray, thresholds: np.ndarray, labels: Sequence[str], present: Iterable[str],
                     top_k: int = 5, include_below: bool = False, rank: Rank = "ratio") -> list[Suggestion]:
    """Tags of one item worth adding, best first, as (tag, score); tags in `present` are never returned.

    rank="ratio" orders by score / threshold: every tag is measured against its own cut-off, so a
    rare tag at 0.3 with threshold 0.1 outranks a common one at 0.6 with threshold 0.55. rank="score"
    orders by the raw score. The returned number is always the raw score. Only tags at or above their
    threshold unless `include_below`.
    """
    if rank not in ("ratio", "score"):
        raise ValueError(f"rank must be 'ratio' or 'score', not {rank!r}")
    have = set(present)
    scores = np.asarray(scores, np.float64).ravel()
    key = scores / np.maximum(np.asarray(thresholds, np.float64), 1e-3) if rank == "ratio" else scores
    out = []
    for j in np.argsort(-key, kind="stable"):
        if len(out) >= max(top_k, 0):
            break
        if labels[j] in have or (not include_below and scores[j] < thresholds[j]):
            continue
        out.append((labels[j], float(scores[j])))
    return out


class TagTask(Task):
    """Multi-label tags of items: fit on a 0/1 tag matrix, predict tags, suggest missing ones.

    `labels` (the tag names, column order of `y`) may be given here or to `fit`; without them tags are
    named "0", "1", ... like `cross_validate` does.
    """

    task = "tags"
    multilabel = True
    default_features = ("effnet_lite0",)
    default_target = "tags"

    def __init__(self, model: str | None = None, *, labels: Sequence[str] | None = None, inner_folds: int = 5,
                 min_positives: int = 5, seed: int = 0) -> None:
        self.model = model
        self.labels = list(labels) if labels is not None else None
        self.inner_folds = inner_folds
        self.min_positives = min_positives
        self.seed = seed

    @classmethod
    def features_for(cls, workspace: Any, items: Any) -> list[str]:
        """`pixels_onehot` on pixel art where it was computed (micro-F1 0.52 against 0.32 for EfficientNet on a
        1,000-token pixel-art sample), else the default image embedding."""
        from curata.features.engine import stored_count
        from curata.features.pixels import looks_like_pixel_art

        if stored_count(workspace, "pixels_onehot") and looks_like_pixel_art(items):
            return ["pixels_onehot"]
        return list(cls.default_features)

    @staticmethod
    def model_for(features: Sequence[str]) -> str | None:
        """The default model for these blocks: ridge (one solve for every tag) on the pixel blocks, where one
        logistic regression per tag over 17,280 one-hot columns takes minutes and ridge measured best; else
        None (the first candidate)."""
        return "ridge" if any(f.startswith("pixels") for f in features) else None

    def candidates(self) -> dict[str, Callable[[], Any]]:
        common = {"inner_folds": self.inner_folds, "min_positives": self.min_positives, "seed": self.seed}
        return {
            "logreg": partial(ThresholdedTagger, LogRegTagger(), **common),
            "mlp": partial(ThresholdedTagger, MLPTagger(seed=self.seed), **common),
            "ridge": partial(ThresholdedTagger, RidgeTagger(), **common),
        }

    def fit(self, x: Blocks, y: np.ndarray, labels: Sequence[str] | None = None) -> TagTask:
        super().fit(x, y)
        names = list(labels) if labels is not None else self.labels
        if names is not None and len(names) != np.shape(y)[1]:
            raise ValueError(f"{len(names)} labels for {np.shape(y)[1]} tag columns")
        self.labels_ = [str(t) for t in names] if names is not None else [str(j) for j in range(np.shape(y)[1])]
        self.classes_ = self.labels_ if names is not None else None
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        """Tag -> tuned threshold of the fitted model."""
        return {t: float(v) for t, v in zip(self.labels_, self.estimator_.thresholds_, strict=True)}

    def suggest(self, x_row_blocks: Blocks, present_tags: Iterable[str], top_k: int = 5, *,
                include_below: bool = False, rank: Rank = "ratio") -> list[Suggestion]:
        """Missing tags for one item (blocks of one row, 1-D or 1 x d), best first; see `rank_suggestions`."""
        row = {k: np.asarray(v).reshape(1, -1) for k, v in x_row_blocks.items()}
        return self.fill_missing(row, [present_tags], top_k, include_below=include_below, rank=rank)[0]

    def fill_missing(self, x_blocks: Blocks, present_tags: Sequence[Iterable[str]], top_k: int = 5, *,
                     include_below: bool = False, rank: Rank = "ratio") -> list[list[Suggestion]]:
        """`suggest` for many items at once: one list of (tag, score) per row of `x_blocks`."""
        scores = self.predict_proba(x_blocks)
        if len(present_tags) != len(scores):
            raise ValueError(f"{len(present_tags)} tag lists for {len(scores)} items")
        thresholds = self.estimator_.thresholds_
        return [rank_suggestions(s, thresholds, self.labels_, tags, top_k, include_below, rank)
                for s, tags in zip(scores, present_tags, strict=True)]
