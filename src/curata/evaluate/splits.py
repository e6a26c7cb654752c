"""Fold construction: stratified, grouped, multi-label, or from a given split column — fixed seeds."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


class NotEnoughData(ValueError):
    """Too few items (per class) for the requested evaluation; the message says which."""


def check_classes(y: np.ndarray, n_splits: int) -> None:
    """Every class needs at least `n_splits` items for stratified k-fold; say which ones do not."""
    counts = Counter(y.tolist())
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise NotEnoughData(f"only one class ({only!r}) among the labelled items: nothing to learn")
    small = sorted((c, n) for c, n in counts.items() if n < n_splits)
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise NotEnoughData(
            f"{len(small)} class(es) have fewer items than the {n_splits} folds: {listed}{more}. "
            "Add items, use fewer folds (--folds), or drop these classes (--min-per-class)."
        )


def make_folds(y: np.ndarray | None, *, n_splits: int = 5, seed: int = 0, groups: np.ndarray | None = None,
               split: np.ndarray | None = None, n_items: int | None = None) -> list[Fold]:
    """Folds over items.

    - `split` given (values like train/val/test): one fold, testing on the non-train values.
    - `groups` given: StratifiedGroupKFold, so a group (e.g. a token family of near-duplicates)
      never straddles train and test.
    - `y` 1-D: StratifiedKFold. `y` 2-D (multi-label) or None: shuffled KFold.
    """
    if split is not None:
        split = np.asarray(split, dtype=object)
        train = np.flatnonzero(np.isin(split, ["train", "training"]))
        test = np.flatnonzero(~np.isin(split, ["train", "training"]))
        if len(train) == 0 or len(test) == 0:
            raise NotEnoughData("the split column needs both 'train' rows and other (val/test) rows")
        return [(train, test)]
    n = n_items if y is None else len(y)
    if n is None:
        raise ValueError("make_folds needs y or n_items")
    if n < n_splits:
        raise NotEnoughData(f"{n} items cannot make {n_splits} folds")
    index = np.arange(n)
    if y is not None and np.ndim(y) == 1:
        check_classes(np.asarray(y), n_splits)
        if groups is not None:
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return [(tr, te) for tr, te in splitter.split(index, y, groups)]
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(index, y)]
    return [(tr, te) for tr, te in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(index)]
