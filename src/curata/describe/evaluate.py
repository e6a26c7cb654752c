"""How good are the keywords? Precision@k and recall@k against tags held out from the describer.

Protocol (printed with the figures): items with at least one tag and an embedding are split at
random (seed) into a reference part and a test part. The describer's sources see only the reference
part — neighbours are searched among reference items, the tag model is fitted on them — and each test
item's top-k *tag* keywords are compared with its true tags. Colour and collection keywords are not
tags and are left out of the ranking here, and so are tags whose value says nothing ("cape=none"), on
both sides. A popularity baseline (the k most frequent reference tags
for every item) shows what the sources add.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from curata.describe.keywords import EMPTY_VALUES, merge, tag_display, tag_keywords
from curata.describe.neighbours import NeighbourVotes
from curata.features.engine import load_matrix, make_extractor
from curata.tasks.data import multilabel_target
from curata.tasks.tags import LogRegTagger
from curata.workspace import Workspace


def _at_k(ranked: list[list[str]], truth: list[set[str]], k: int) -> dict[str, float]:
    precision = [len(set(r[:k]) & t) / k for r, t in zip(ranked, truth, strict=True)]
    recall = [len(set(r[:k]) & t) / len(t) for r, t in zip(ranked, truth, strict=True)]
    return {f"precision@{k}": round(float(np.mean(precision)), 4), f"recall@{k}": round(float(np.mean(recall)), 4)}


def evaluate_keywords(workspace: Workspace, *, embedding: str = "effnet_lite0", k: int = 5,
                      test_fraction: float = 0.2, seed: int = 0, neighbours: int = 10, min_tag_count: int = 2,
                      max_items: int | None = None, with_model: bool = True) -> dict[str, Any]:
    """P@k / R@k of the keyword sources on held-out items; see the module docstring for the protocol."""
    items = workspace.items()
    # Tags whose value says nothing ("cape=none") are never keywords, so they are not counted as truth.
    items = items.assign(tags=items["tags"].map(lambda tags: [t for t in tags
                                                              if tag_display(t).lower() not in EMPTY_VALUES]))
    items = items[items["tags"].map(len) > 0]
    if len(items) < 10:
        raise ValueError(f"keyword evaluation needs at least 10 items with tags; the workspace has {len(items)}")
    matrix, errors = load_matrix(workspace, make_extractor(embedding), items)
    ok = np.array([e is None for e in errors], bool)
    if ok.sum() < 10:
        raise ValueError(f"feature '{embedding}' is missing for most tagged items; "
                         f"run `curata features -e {embedding}`")
    items, matrix = items[ok].reset_index(drop=True), matrix[ok]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    if max_items is not None and len(order) > max_items:
        order = order[:max_items]
    n_test = max(1, round(len(order) * test_fraction))
    test, ref = order[:n_test], order[n_test:]
    ref_tags = [list(t) for t in items["tags"].iloc[ref]]
    truth = [set(t) for t in items["tags"].iloc[test]]
    t0 = time.perf_counter()

    votes = NeighbourVotes(items["id"].iloc[ref].tolist(), matrix[ref], ref_tags, [None] * len(ref),
                           k=neighbours, min_tag_count=min_tag_count)
    neighbour_kw = votes.vote(matrix[test], top=k)
    ranked: dict[str, list[list[str]]] = {"neighbours": [[kw.tag for kw in kws if kw.tag] for kws in neighbour_kw]}

    y, vocabulary = multilabel_target(pd.DataFrame({"tags": ref_tags}), "tags", min_tag_count)
    counts = y.sum(axis=0)
    popular = [vocabulary[j] for j in np.argsort(-counts, kind="stable")[:k]]
    ranked["popularity baseline"] = [popular] * len(test)
    varied = (counts > 0) & (counts < len(ref))  # logistic regression needs both values in a column
    if with_model and varied.any():
        model = LogRegTagger().fit(matrix[ref], y[:, varied])
        scores = np.zeros((len(test), len(vocabulary)), np.float32)
        scores[:, varied] = model.predict_proba(matrix[test])
        model_kw = [tag_keywords(s, vocabulary, "tags", k) for s in scores]
        ranked["tag model"] = [[kw.tag for kw in kws] for kws in model_kw]
        combined = [merge([a, b], k, by="tag") for a, b in zip(model_kw, neighbour_kw, strict=True)]
        ranked["combined"] = [[kw.tag for kw in kws if kw.tag] for kws in combined]
    return {
        "protocol": {"items": len(order), "test": int(n_test), "reference": len(ref), "seed": seed, "k": k,
                     "embedding": embedding, "neighbours": neighbours, "tags in vocabulary": len(vocabulary),
                     "mean true tags per test item": round(float(np.mean([len(t) for t in truth])), 2)},
        "sources": {name: _at_k(r, truth, k) for name, r in ranked.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
