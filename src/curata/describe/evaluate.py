"""How good are the keywords? Precision@k and recall@k against tags held out from the describer.

Protocol (printed with the figures): items with at least one tag and an embedding are split at
random (seed) into a reference part and a test part. The describer's sources see only the reference
part — neighbours are searched among reference items, the tag model is fitted on them — and each test
item's top-k *tag* keywords are compared with its true tags. Colour and collection keywords are not
tags and are left out of the ranking here, and so are tags whose value says nothing ("cape=none"), on
both sides. A popularity baseline (the k most frequent reference tags
for every item) shows what the sources add.

`evaluate_content_words` measures the ImageNet content words (`curata.describe.content`) the same way on
a collection tagged with COCO category names (coco_mini ingested with `categories` as tags): each test
item's content words are turned into COCO categories through the WordNet mapping shipped with
`curata.describe.vocabulary` (built from names and hypernyms only) and ranked by the adjusted
probability mass of the ImageNet classes standing for each. Every item is held out once (5-fold, seeded):
the popularity prior, the neighbours and the popularity baseline use the other folds only. Most COCO
photos have fewer than k categories, so precision@k has a ceiling below 1:
it is reported ("precision ceiling") with recall@k and hit@k.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from curata.describe.content import (
    CONTENT_EMBEDDING,
    CONTENT_VIEWS,
    PRIORS,
    ContentWords,
    coco_matrix,
    content_logits,
    features_to_logits,
)
from curata.describe.keywords import EMPTY_VALUES, merge, tag_display, tag_keywords
from curata.describe.neighbours import NeighbourVotes
from curata.describe.vocabulary import COCO_CATEGORIES
from curata.features.engine import load_matrix, make_extractor
from curata.tasks.data import multilabel_target
from curata.tasks.tags import LogRegTagger
from curata.workspace import Workspace


def _at_k(ranked: list[list[str]], truth: list[set[str]], k: int) -> dict[str, float]:
    """Mean precision@k, recall@k and hit@k (at least one of the k is true) over items."""
    hits = [len(set(r[:k]) & t) for r, t in zip(ranked, truth, strict=True)]
    return {f"precision@{k}": round(float(np.mean([h / k for h in hits])), 4),
            f"recall@{k}": round(float(np.mean([h / len(t) for h, t in zip(hits, truth, strict=True)])), 4),
            f"hit@{k}": round(float(np.mean([h > 0 for h in hits])), 4)}


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


def is_coco_tagged(tag_lists: list[list[str]]) -> bool:
    """Whether a collection's tags are COCO category names (at least 90 % of its tag occurrences)."""
    tags = [t for tl in tag_lists for t in tl]
    return bool(tags) and sum(t in COCO_CATEGORIES for t in tags) >= 0.9 * len(tags)


def rank_coco(scores: np.ndarray, k: int) -> list[list[str]]:
    """The k COCO categories with the highest scores per row (ties: COCO's order)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[COCO_CATEGORIES[j] for j in row] for row in order]


def rank_fusion(rankings: list[list[str]], k: int, c: float = 60.0) -> list[str]:
    """Reciprocal rank fusion (sum of 1 / (c + rank), c = 60 as in its paper): the two sources' scores
    are on different scales (excess probability mass against neighbour vote shares), their ranks are not."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, name in enumerate(ranking):
            scores[name] = scores.get(name, 0.0) + 1.0 / (c + rank + 1)
    return sorted(scores, key=lambda n: (-scores[n], n))[:k]


def evaluate_content_words(workspace: Workspace, *, k: int = 5, folds: int = 5, seed: int = 0,
                           neighbours: int = 10, mode: str = "divide", temperature: float = 1.0
                           ) -> dict[str, Any]:
    """P@k / R@k / hit@k of content words against COCO categories, every item held out once
    (`folds`-fold, seeded): the prior, the neighbours and the popularity baseline come from the other
    folds only. See the module docstring."""
    all_items = workspace.items()
    if not is_coco_tagged(list(all_items["tags"])):
        raise ValueError("content-word evaluation needs items tagged with COCO category names "
                         "(ingest coco_mini with its `categories` column as tags)")
    items = all_items.assign(tags=all_items["tags"].map(lambda tags: [t for t in tags if t in COCO_CATEGORIES]))
    items = items[items["tags"].map(len) > 0]
    matrix, errors = load_matrix(workspace, make_extractor(CONTENT_EMBEDDING), items)
    ok = np.array([e is None for e in errors], bool)
    if ok.sum() < 2 * folds:
        raise ValueError(f"feature '{CONTENT_EMBEDDING}' is missing for most items; "
                         f"run `curata features -e {CONTENT_EMBEDDING}`")
    items, matrix = items[ok].reset_index(drop=True), matrix[ok]
    tags = [list(t) for t in items["tags"]]
    t0 = time.perf_counter()
    whole_logits = features_to_logits(matrix)
    # The content words read what `describe` reads: the views where the workspace has them for every item
    # evaluated (then the whole-image words are reported beside them), else the whole image's logits.
    views, view_errors = load_matrix(workspace, make_extractor(CONTENT_VIEWS), items)
    if all(e is None for e in view_errors):
        embedding, logits = CONTENT_VIEWS, content_logits(CONTENT_VIEWS, views)
    else:
        embedding, logits = CONTENT_EMBEDDING, whole_logits
    fold_of = np.random.default_rng(seed).permutation(len(items)) % folds
    mappable = set(np.array(COCO_CATEGORIES)[coco_matrix().sum(axis=0) > 0])
    # "content words" uses `mode`; the other priors are reported beside it.
    variants = [m for m in PRIORS if m != mode]
    whole = ("content words, whole image only",) if embedding == CONTENT_VIEWS else ()
    sources = ("popularity baseline", "content words", *(f"content words, prior {m}" for m in variants), *whole,
               "neighbours", "content + neighbours")
    ranked: dict[str, list[list[str]]] = {name: [[] for _ in tags] for name in sources}
    for fold in range(folds):
        test, ref = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        ref_tags = [tags[i] for i in ref]
        counts = pd.Series([t for tl in ref_tags for t in tl]).value_counts(sort=False)
        popular = sorted(counts.index, key=lambda t: (-counts[t], COCO_CATEGORIES.index(t)))
        results = {"popularity baseline": [popular[:k]] * len(test)}
        for m in (mode, *variants):
            scores = ContentWords.fit(logits[ref], mode=m, temperature=temperature).coco_scores(logits[test])
            results["content words" if m == mode else f"content words, prior {m}"] = rank_coco(scores, k)
        if whole:
            scores = ContentWords.fit(whole_logits[ref], mode=mode, temperature=temperature).coco_scores(
                whole_logits[test])
            results[whole[0]] = rank_coco(scores, k)
        votes = NeighbourVotes(items["id"].iloc[ref].tolist(), matrix[ref], ref_tags, [None] * len(ref),
                               k=neighbours, min_tag_count=1)
        neighbour_kw = votes.vote(matrix[test], top=k)
        results["neighbours"] = [[kw.tag for kw in kws if kw.tag] for kws in neighbour_kw]
        results["content + neighbours"] = [rank_fusion([a, b], k) for a, b in
                                           zip(results["content words"], results["neighbours"], strict=True)]
        for name, rows in results.items():
            for i, row in zip(test, rows, strict=True):
                ranked[name][i] = row
    truth = [set(t) for t in tags]
    true_labels = [t for tl in tags for t in tl]
    return {
        "protocol": {"items": len(items), "folds": folds, "seed": seed, "k": k, "embedding": embedding,
                     "prior": mode, "temperature": temperature, "neighbours": neighbours,
                     "mean true categories per item": round(float(np.mean([len(t) for t in truth])), 2),
                     # The best any ranking can do: an item with 2 true categories scores at most 2/k.
                     f"precision ceiling@{k}": round(float(np.mean([min(len(t), k) / k for t in truth])), 4),
                     f"precision ceiling@{k}, mappable": round(float(np.mean([min(len(t & mappable), k) / k
                                                                              for t in truth])), 4),
                     "COCO categories an ImageNet class maps to": len(mappable),
                     "true labels in those categories": round(sum(t in mappable for t in true_labels)
                                                              / max(len(true_labels), 1), 4)},
        "sources": {name: _at_k(r, truth, k) for name, r in ranked.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
