"""`classify`: one closed-set classifier for any single label, from whatever features the items have.

A user with "images and one label each" (genre, style, artist, category, collection) needs no task of its
own: `ClassifyTask` learns any single-label target from the feature blocks it is given — image, text or
both — and, when none are named, from the ones the workspace has computed (`features_for`: an image block,
`pixels` for pixel art, plus a text block when the items have text).

Candidates, over the same (vector) blocks:
- "logreg": the linear probe — logistic regression with C chosen on inner folds, on per-block balanced
  features (`curata.tasks.estimators.BlockBalancer`: each block standardised and weighted so that it
  counts as much as every other, so a 1280-d embedding does not drown a 384-d one);
- "svm": an RBF SVM on the same balanced features, with a gamma grid scaled to the data (scikit-learn's
  "scale" heuristic times a factor), C and gamma chosen on inner folds of at most 2,000 training items;
- "mlp": one hidden layer on the standardised blocks;
- "stacking" (two blocks or more): a calibrated probe per block, combined by a logistic regression learned
  from their out-of-fold probabilities;
- "finetune" (when `image`, the images themselves, is among the features: `--features effnet_lite0,image`):
  EfficientNet-Lite0's last block, head convolution and a new classifier trained on the collection
  (`curata.tasks.finetune`), minutes on CPU where the others take seconds, so it is only weighed when asked for;
- "auto" (the default): picks one of the above on a stratified validation part of its own training data
  (the simplest within one paired standard error of the most accurate: `ValidatedChoice`), then refits it
  on all of it. The default is thus chosen by validation inside
  every fit, never by the benchmark it is later scored on, and its cross-validated score is honest
  (nested: the selection never sees the test fold).

Open-set answers ("unknown" for items unlike the training classes, `curata.tasks.openset`) are an option
(`open_set=True`), not the default: on a closed problem every "unknown" is a lost answer. When on,
evaluation reports coverage (share of items answered) and accuracy on the answered items beside accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegressionCV

from curata.evaluate.cv import take
from curata.tasks.base import Blocks, Task
from curata.tasks.estimators import MLP, BlockClassifier, Calibrated, TunedSVC, check_labels, default_logreg
from curata.tasks.finetune import FineTunedClassifier
from curata.tasks.openset import UNKNOWN, OpenSetClassifier, validation_split

IMAGE_BLOCK = "image"  # the images themselves (`curata.features.raw_image`), read by the fine-tuner only
PROBE_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # the probe's C grid: 1280-d embeddings want strong L2


def probe(seed: int = 0, inner_splits: int = 3) -> Any:
    """The linear probe's model: logistic regression with C chosen on inner stratified folds (its inputs are
    standardised by the `BlockBalancer` in front of it)."""
    # Log-loss picks C for calibrated probabilities (what open-set thresholds and late fusion read).
    return LogisticRegressionCV(Cs=list(PROBE_CS), cv=inner_splits, max_iter=3000, l1_ratios=(0.0,),
                                scoring="neg_log_loss", use_legacy_attributes=False, random_state=seed)


class ValidatedChoice(ClassifierMixin, BaseEstimator):
    """Choose among `candidates` ((name, unfitted estimator) pairs, simplest first) by accuracy on a stratified
    `val_fraction` of the training data, then refit the chosen one on all of it.

    The choice follows the one-standard-error rule (Hastie et al., The Elements of Statistical Learning, 7.10),
    on paired answers: the simplest candidate whose validation accuracy is within one standard error of the
    best's is kept, the error being that of the two models' per-item difference on the same validation items.
    On a few hundred validation items a more complex (and often far costlier) model must thus win by more than
    the noise of that part: a tie, or a margin of a few items, keeps the simpler one.

    `chosen_` names the chosen one, `validation_scores_` holds every candidate's validation accuracy and
    `validation_margin_` each one's standard error against the best. With too few items to validate (no class
    of 3 or more) the first candidate is used."""

    def __init__(self, candidates: tuple[tuple[str, Any], ...] = (), blocks: tuple[str, ...] = (),
                 val_fraction: float = 0.2, seed: int = 0):
        self.candidates = candidates
        self.blocks = blocks  # what the open-set wrapper measures distances on
        self.val_fraction = val_fraction
        self.seed = seed

    def fit(self, x: Blocks, y: np.ndarray) -> ValidatedChoice:
        if not self.candidates:
            raise ValueError("ValidatedChoice needs at least one candidate")
        y = check_labels(y, min_per_class=2, who="the validated choice")
        fit_part, val_part = validation_split(y, self.val_fraction, self.seed)
        self.validation_scores_: dict[str, float] = {}
        self.validation_margin_: dict[str, float] = {}
        right: dict[str, np.ndarray] = {}  # per candidate: which validation items it answered right
        if len(val_part) and len(self.candidates) > 1:  # one candidate: nothing to choose, no fit to spare
            for name, estimator in self.candidates:
                try:
                    model = clone(estimator).fit(take(x, fit_part), y[fit_part])
                except ValueError:  # e.g. a candidate whose inner folds need more items per class than remain
                    continue
                right[name] = model.predict(take(x, val_part)) == y[val_part]
                self.validation_scores_[name] = float(right[name].mean())
        self.chosen_ = self._one_standard_error(right) if right else self.candidates[0][0]
        self.model_ = clone(dict(self.candidates)[self.chosen_]).fit(x, y)
        self.classes_ = self.model_.classes_
        return self

    def _one_standard_error(self, right: dict[str, np.ndarray]) -> str:
        names = [name for name, _ in self.candidates if name in right]  # simplest first
        best = max(names, key=lambda n: (right[n].mean(), -names.index(n)))
        for name in names:
            diff = right[best].astype(float) - right[name]
            self.validation_margin_[name] = round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) \
                if len(diff) > 1 else 0.0
        # The best itself qualifies (no gap, no margin), so one always does.
        return next(n for n in names if right[best].mean() - right[n].mean() <= self.validation_margin_[n] + 1e-12)

    def predict(self, x: Blocks) -> np.ndarray:
        return self.model_.predict(x)

    def predict_proba(self, x: Blocks) -> np.ndarray:
        return self.model_.predict_proba(x)


class ClassifyTask(Task):
    """Any single label from any feature blocks, closed-set by default; see the module docstring."""

    task = "classify"
    default_features = ("effnet_lite0",)
    default_target = "label"
    # Which candidates "auto" chooses among, simplest first (a validation tie keeps the simpler model).
    auto_candidates: ClassVar[tuple[str, ...]] = ("logreg", "svm", "mlp", "stacking", "finetune")
    model_features: ClassVar[dict[str, tuple[str, ...]]] = {"finetune": (IMAGE_BLOCK,)}

    def __init__(self, model: str | None = None, features: Sequence[str] | None = None, open_set: bool = False,
                 target_recall: float = 0.95, seed: int = 0):
        self.model = model
        self.features = tuple(features or self.default_features)
        self.open_set = open_set
        self.target_recall = target_recall
        self.seed = seed

    @classmethod
    def features_for(cls, workspace: Any, items: pd.DataFrame) -> list[str]:
        from curata.tasks.data import choose_features

        return choose_features(workspace, items, text=True)

    @property
    def vector_features(self) -> tuple[str, ...]:
        """The feature blocks that are vectors (all but `image`, the images themselves)."""
        return tuple(b for b in self.features if b != IMAGE_BLOCK)

    def base_models(self) -> dict[str, Any]:
        """The unfitted candidates (before any open-set wrapping), by name: the models over feature vectors when
        there are any, and "finetune" when the `image` block is among the features."""
        seed, blocks = self.seed, self.vector_features
        models: dict[str, Any] = {}
        if blocks:
            models.update({
                "logreg": BlockClassifier(blocks, probe(seed), balance=True),
                "svm": BlockClassifier(blocks, TunedSVC(c_values=(1.0, 10.0, 100.0), gamma_values=None,
                                                        gamma_factors=(0.3, 1.0, 3.0), scale=False, inner_splits=3,
                                                        search_rows=2000, seed=seed), balance=True),
                "mlp": BlockClassifier(blocks, MLP(hidden=(256,), alpha=1e-2, seed=seed)),
            })
        if IMAGE_BLOCK in self.features:
            models["finetune"] = FineTunedClassifier(seed=seed)
        if len(blocks) > 1:
            from curata.tasks.category import LateFusionClassifier

            # One standardised, strongly regularised probe per block (as category's members), calibrated.
            members = tuple(BlockClassifier((b,), Calibrated(default_logreg(c=0.03, seed=seed), seed=seed))
                            for b in blocks)
            models["stacking"] = LateFusionClassifier(members, "stacking", seed=seed)
        return models

    def _wrap(self, estimator: Any) -> Callable[[], Any]:
        if not self.open_set:
            return partial(clone, estimator)
        return partial(OpenSetClassifier, base=estimator, target_recall=self.target_recall, seed=self.seed)

    def candidates(self) -> dict[str, Callable[[], Any]]:
        models = self.base_models()
        auto = ValidatedChoice(tuple((n, models[n]) for n in self.auto_candidates if n in models),
                               self.vector_features, seed=self.seed)
        if self.open_set:
            if not self.vector_features:
                raise ValueError("open-set answers measure how far an item lies from the training items on feature "
                                 "vectors: add one beside 'image' (e.g. --features effnet_lite0,image)")
            # The open-set wrapper measures distances on its base's vector blocks, which the fine-tuner has not;
            # under "auto" it may still be chosen (the distances are then those of auto's vector blocks).
            models.pop("finetune", None)
        return {name: self._wrap(model) for name, model in {"auto": auto, **models}.items()}

    def predict_open(self, x: Blocks) -> tuple[np.ndarray, np.ndarray]:
        """(labels, with "unknown" for rejected items when open-set; best class probability)."""
        if hasattr(self.estimator_, "predict_open"):
            return self.estimator_.predict_open(x)
        proba = self.predict_proba(x)
        return self.estimator_.classes_[proba.argmax(axis=1)].astype(object), proba.max(axis=1)


__all__ = ["UNKNOWN", "ClassifyTask", "ValidatedChoice", "probe"]
