"""Assembling training data from a workspace: feature matrices, targets, and what had to be skipped.

Targets are named by a small spec so every task and the CLI speak the same language:
    "label"            the item's label column
    "tag:color"        the value of tags of the form `color=<value>` (NFT traits, demo traits)
    "meta:label_l2"    a field of the item's `meta` JSON (e.g. Flipkart's sub-category)
    "tags" / "tags:hair"   multi-label: all tags, or only tags `hair=<value>`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curata.features.engine import load_matrix, make_extractor
from curata.tasks.base import concat_blocks
from curata.workspace import Workspace


class TaskDataError(ValueError):
    """The workspace cannot provide what a task needs; the message says what and how to fix it."""


def single_target(items: pd.DataFrame, spec: str) -> pd.Series:
    """One label per item (None where missing) from a target spec."""
    if spec == "label":
        return items["label"].where(items["label"].notna() & (items["label"] != ""), None)
    kind, _, key = spec.partition(":")
    if kind == "tag" and key:
        prefix = f"{key}="
        return items["tags"].map(lambda tags: next((t[len(prefix):] for t in tags if t.startswith(prefix)), None))
    if kind == "meta" and key:
        return items["meta"].map(lambda m: _meta_value(m, key))
    raise TaskDataError(f"unknown target '{spec}': use label, tag:<trait>, or meta:<field>")


def _meta_value(meta: str, key: str) -> Any:
    value = json.loads(meta or "{}").get(key)
    return None if value in (None, "") else str(value)


def multilabel_target(items: pd.DataFrame, spec: str = "tags", min_count: int = 2) -> tuple[np.ndarray, list[str]]:
    """A 0/1 matrix (items x tags) and the tag names; tags seen fewer than `min_count` times are dropped."""
    kind, _, key = spec.partition(":")
    if kind != "tags":
        raise TaskDataError(f"unknown multi-label target '{spec}': use tags or tags:<trait>")
    prefix = f"{key}=" if key else ""
    lists = [[t for t in tags if t.startswith(prefix)] for tags in items["tags"]]
    counts = pd.Series([t for tags in lists for t in tags], dtype=object).value_counts()
    vocabulary = sorted(counts[counts >= min_count].index)
    if not vocabulary:
        raise TaskDataError(f"no tag matching '{spec}' occurs at least {min_count} times")
    position = {t: j for j, t in enumerate(vocabulary)}
    y = np.zeros((len(items), len(vocabulary)), np.int8)
    for i, tags in enumerate(lists):
        for t in tags:
            if t in position:
                y[i, position[t]] = 1
    return y, vocabulary


@dataclass
class FeatureSet:
    """Named feature blocks for the same rows, and the extractor keys they came from."""

    blocks: dict[str, np.ndarray]
    keys: dict[str, str]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def concat(self, normalise: bool = True) -> np.ndarray:
        """Early fusion: blocks side by side, each L2-normalised per row so no block dominates by scale."""
        return concat_blocks(self.blocks, normalise)


def load_features(workspace: Workspace, names: list[str], items: pd.DataFrame) -> tuple[FeatureSet, np.ndarray]:
    """Feature blocks for `items`; returns the set (rows with a usable vector in every block) and the
    boolean mask of kept rows. A feature that was never computed is an error naming the command."""
    blocks: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    keep = np.ones(len(items), bool)
    skipped: dict[str, int] = {}
    for name in names:
        extractor = make_extractor(name)
        try:
            matrix, errors = load_matrix(workspace, extractor, items)
        except ValueError as e:
            raise TaskDataError(str(e)) from e
        missing = sum(e == "not computed" for e in errors)
        if missing == len(items) and len(items):
            raise TaskDataError(f"feature '{name}' has not been computed for this workspace; run "
                                f"`curata features -e {name}`")
        failed = np.array([e is not None for e in errors], bool)
        if failed.any():
            skipped[f"no {name} vector"] = int(failed.sum())
        keep &= ~failed
        blocks[name] = matrix
        keys[name] = extractor.key
    return FeatureSet({k: v[keep] for k, v in blocks.items()}, keys, skipped), keep
