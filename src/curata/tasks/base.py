"""The task contract: a scikit-learn-style estimator over named feature blocks.

Inputs are `X: dict[str, np.ndarray]` — one matrix per feature name (e.g. {"effnet_lite0": ...,
"minilm": ...}), rows aligned — so fusion models can treat modalities apart and single-feature
models simply concatenate what they were given (`FeatureSet.concat` style). Parameters are set in
`__init__` and do no work; fitted attributes end in `_`.

`evaluate` compares the task's candidate models under the shared cross-validation engine
(`curata.evaluate.cv.cross_validate`): each candidate is a factory returning an unfitted
estimator whose `fit` learns everything (scaling, grid search, thresholds, calibration) from the
training fold alone, so the test fold never leaks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from curata.evaluate.cv import CVResult, cross_validate
from curata.evaluate.splits import Fold
from curata.progress import SILENT, Reporter
from curata.vectors import l2_rows

Blocks = dict[str, np.ndarray]


def single_threaded_blas() -> threadpool_limits:
    """Our models are many small fits (per fold, per label, per grid point): a multi-threaded BLAS spends
    more on waking its threads than on the maths — measured 8-10x slower lbfgs fits on these 2 cores."""
    return threadpool_limits(limits=1, user_api="blas")


def concat_blocks(x: Blocks, normalise: bool = True) -> np.ndarray:
    """Blocks side by side (sorted by name for a stable layout), each L2-normalised per row if asked."""
    parts = []
    for name in sorted(x):
        block = np.asarray(x[name], np.float32)
        if normalise:
            block = l2_rows(block)
        parts.append(block)
    return np.hstack(parts)


class Task(ABC):
    """Base class of colour / tags / collection / category tasks."""

    task: ClassVar[str]
    multilabel: ClassVar[bool] = False
    default_features: ClassVar[tuple[str, ...]]
    default_target: ClassVar[str]
    # Feature blocks a model needs whatever else is named (classify's "finetune": the `image` block).
    model_features: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def features_for(cls, workspace: Any, items: Any) -> list[str]:
        """The feature blocks to use when none are named (the runner asks before loading anything); tasks that
        choose among what the workspace has computed override it."""
        return list(cls.default_features)

    @abstractmethod
    def candidates(self) -> dict[str, Callable[[], Any]]:
        """Models to compare, name -> factory of an unfitted estimator taking Blocks. The first is the
        default used by `fit` unless `self.model` names another."""

    def _factory(self) -> Callable[[], Any]:
        options = self.candidates()
        chosen = getattr(self, "model", None) or next(iter(options))
        if chosen not in options:
            raise ValueError(f"unknown model '{chosen}' for task {self.task}; choose from {', '.join(options)}")
        return options[chosen]

    def fit(self, x: Blocks, y: np.ndarray) -> Task:
        self.estimator_ = self._factory()()
        with single_threaded_blas():
            self.estimator_.fit(x, y)
        self.classes_ = getattr(self.estimator_, "classes_", None)
        return self

    def predict(self, x: Blocks) -> np.ndarray:
        return np.asarray(self.estimator_.predict(x))

    def predict_proba(self, x: Blocks) -> np.ndarray:
        return np.asarray(self.estimator_.predict_proba(x))

    def evaluate(self, x: Blocks, y: np.ndarray, folds: Sequence[Fold], *, labels: Sequence[str] | None = None,
                 models: Sequence[str] | None = None, reporter: Reporter = SILENT) -> list[CVResult]:
        """Cross-validate every candidate (or those named in `models`); one result per model."""
        options = self.candidates()
        names = list(models) if models else list(options)
        unknown = [m for m in names if m not in options]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} for task {self.task}; choose from {', '.join(options)}")
        with single_threaded_blas():
            return [cross_validate(name, options[name], x, y, folds, labels=labels, reporter=reporter)
                    for name in names]
