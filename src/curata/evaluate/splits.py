"""Fold construction (stratified, grouped, multi-label) and held-out train / val / test splits — fixed seeds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold, train_test_split

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
               n_items: int | None = None) -> list[Fold]:
    """Folds over items (a split column's train / val / test is `held_out`, not a fold).

    - `groups` given: StratifiedGroupKFold, so a group (e.g. a token family of near-duplicates)
      never straddles train and test.
    - `y` 1-D: StratifiedKFold. `y` 2-D (multi-label) or None: shuffled KFold.
    """
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


TRAIN_VALUES = ("train", "training")
VAL_VALUES = ("val", "valid", "validation", "dev")
TEST_VALUES = ("test", "testing")
CARVED_VAL = 0.2  # share of the train rows held out for model selection when the split column has no val


@dataclass
class HeldOut:
    """A train / val / test split: candidates are compared on val (fitted on train), the chosen one is fitted on
    train + val and scored on test once. `val_from` says where val came from; `left_out` counts rows of the
    split column that named none of the three parts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_from: str
    left_out: int = 0

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _carve(index: np.ndarray, y: np.ndarray | None, size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, carved) of `index`, stratified by `y` (1-D) where every class can give one, else shuffled."""
    strata = None
    if y is not None and np.ndim(y) == 1:
        counts = Counter(np.asarray(y)[index].tolist())
        if min(counts.values()) >= 2:
            strata = np.asarray(y)[index]
    rest, carved = train_test_split(index, test_size=size, stratify=strata, random_state=seed)
    return np.sort(rest), np.sort(carved)


def held_out(y: np.ndarray, *, split: np.ndarray | None = None, fraction: float | None = None,
             seed: int = 0) -> HeldOut:
    """A held-out split of the items, from a split column (train / val / test values; val carved from train,
    stratified and seeded, when the column has none) or, with `fraction`, drawn: that fraction of the items
    for test and as much for val, stratified by `y` (1-D) and seeded."""
    n = len(y)
    index = np.arange(n)
    if split is not None:
        values = np.array([str(v).strip().lower() for v in split], dtype=object)
        train, val = index[np.isin(values, TRAIN_VALUES)], index[np.isin(values, VAL_VALUES)]
        test = index[np.isin(values, TEST_VALUES)]
        left_out = n - len(train) - len(val) - len(test)
        if len(train) == 0 or len(test) == 0:
            seen = ", ".join(sorted({v for v in values if v})[:8]) or "none"
            raise NotEnoughData(f"the split column needs 'train' and 'test' rows (and optionally 'val'); its values "
                                f"here: {seen}")
        if len(val):
            return HeldOut(train, val, test, "split column", left_out)
        if len(train) < 4:
            raise NotEnoughData(f"only {len(train)} train rows: too few to hold out a validation part")
        train, val = _carve(train, y, CARVED_VAL, seed)
        return HeldOut(train, val, test, f"{CARVED_VAL:.0%} of train (no val rows in the split column; "
                                         f"stratified, seed {seed})", left_out)
    if fraction is None or not 0 < fraction < 0.5:
        raise ValueError(f"the held-out fraction must be between 0 and 0.5, got {fraction}")
    if n < 6:
        raise NotEnoughData(f"{n} items cannot make a train / val / test split")
    rest, test = _carve(index, y, max(1, round(fraction * n)), seed)
    train, val = _carve(rest, y, max(1, round(fraction * n)), seed)
    return HeldOut(train, val, test, f"seeded split (seed {seed})")
