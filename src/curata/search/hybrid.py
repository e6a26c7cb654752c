"""Hybrid text search: structured attributes and words matched lexically, fused with the joint space.

A text query is answered by three parts:

  traits   the `trait=value` tags whose value (optionally followed or preceded by the trait name) the
           query names as a phrase: "red hat" matches `hat=red hat`, "blue background" matches
           `background=blue` (and not `eyes=blue`: a longer match over the same words wins). Items that
           have no tags stand in with the tags predicted by the workspace's newest `tags` bundle,
           computed when the index is built, never per query.
  lexical  BM25 over each item's captions, tags (as words of trait and value, `_`/`-` read as spaces),
           label, text and predicted tags.
  joint    the joint text-image space (the vector index).

Fusion: the trait score of an item is the sum, over the query's matched phrases, of 1 (the item has
one of the phrase's tags; `PREDICTED_WEIGHT` when only predicted; `TRAIT_ONLY_WEIGHT` for a phrase
naming only a trait, e.g. "a punk with a hat"); the rank score is the reciprocal-rank fusion
sum 1 / (RRF_K + rank) over the joint top `FUSION_DEPTH` and the lexical top `FUSION_DEPTH`. Hits
are ordered by trait score + rank score: the RRF part is below 2 / (RRF_K + 1) < 0.05, so items
matching more of the named traits always come first ("red hat" ranks the tokens with that trait
first whether or not the joint space learned it), and within a trait tier the two rankings decide.

On disk: `lexical.json` inside the vector index folder (`index/<model>/`), written with it by
`build_index` (so both are replaced together); the BM25 matrix is rebuilt from the stored token
documents when a `Searcher` opens (0.2-0.5 s for 10k items on this machine). The predictions are cached in it by
item image hash and bundle, so a rebuild only predicts for new or changed untagged items.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curata.ingest.nft import ABSENT
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

LEXICAL_FILE = "lexical.json"
FORMAT = "curata-lexical-index/1"
MODES = ("hybrid", "joint", "lexical")
# BM25 (Robertson/Sparck Jones; Lucene's defaults): term-frequency saturation k1 and length normalisation b.
BM25_K1 = 1.2
BM25_B = 0.75
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009): 1 / (60 + rank)
FUSION_DEPTH = 200  # how deep each ranking (joint, lexical) goes into the fusion
PREDICTED_WEIGHT = 0.5  # a trait known only from the tags model counts half a real tag
TRAIT_ONLY_WEIGHT = 0.5  # a phrase naming only a trait ("hat"): half a value match
STOPWORDS = frozenset((
    "a", "an", "the", "of", "and", "or", "with", "without", "in", "on", "at", "to", "for", "by", "from", "is", "are",
    "be", "this", "that", "its", "it", "as", "picture", "image", "photo", "containing", "contains", "showing", "shows",
    "wearing", "has", "have", "having"))
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case words; `_`, `-`, `=` and punctuation separate words; stopwords dropped."""
    return [w for w in _WORD.findall(str(text).lower()) if w not in STOPWORDS]


def split_tag(tag: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(trait words, value words) of a tag; a tag without `=` is all value."""
    trait, sep, value = str(tag).partition("=")
    if not sep:
        return (), tuple(words(trait))
    return tuple(words(trait)), tuple(words(value))


def _absent(tag: str) -> bool:
    _, sep, value = str(tag).partition("=")
    return bool(sep) and value.strip().lower() in ABSENT


def _as_list(value: Any) -> list[str]:
    if value is None or isinstance(value, float):
        return []
    return [str(v) for v in value if v is not None and str(v).strip()]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ------------------------------------------------------------------------------------------ build


def newest_tags_bundle(workspace: Workspace) -> tuple[Any, Any] | None:
    """(folder, card) of the most recently created `tags` bundle in models/, like the Describer's choice
    (without importing the describe package, which is slow to import: Searcher.open calls this)."""
    from curata.tasks.bundle import BundleError, bundle_cards, load_card

    found = []
    for folder, _ in bundle_cards(workspace.root / "models"):
        try:
            card = load_card(folder)
        except (BundleError, OSError, ValueError):
            continue
        if card.task == "tags":
            found.append((card.created, folder.name, folder, card))
    if not found:
        return None
    newest = max(found, key=lambda f: (f[0], f[1]))
    return newest[2], newest[3]


def predict_untagged(workspace: Workspace, items: pd.DataFrame, cache: dict[str, Any] | None = None
                     ) -> tuple[dict[str, list[str]], dict[str, Any], list[str]]:
    """Tags the newest `tags` bundle predicts for `items` (the untagged ones), from cached features.

    Returns ({id: tags}, {"name", "created"} of the bundle or {}, notes). `cache` is the previous
    lexical index's {"bundle", "predictions": {id: {"hash", "tags"}}}: reused when the bundle and the
    item's image are the same."""
    notes: list[str] = []
    newest = newest_tags_bundle(workspace)
    if newest is None or items.empty:
        return {}, {}, notes
    from curata.tasks.bundle import BundleError, check_features, load_bundle
    from curata.tasks.data import TaskDataError, feature_chunks

    path, card = newest
    bundle = {"name": path.name, "created": card.created}
    old = (cache or {}).get("predictions", {}) if (cache or {}).get("bundle") == bundle else {}
    out: dict[str, list[str]] = {}
    todo = []
    for item_id, sha in zip(items["id"], items["image_sha256"], strict=True):
        entry = old.get(item_id)
        if entry is not None and entry.get("hash") == sha:
            out[item_id] = list(entry.get("tags", []))
        else:
            todo.append(item_id)
    if todo:
        rows = items[items["id"].isin(set(todo))]
        lacking = 0
        try:
            task, card = load_bundle(path)
            check_features(card)
            # Over the memory budget the features are read and predicted a chunk at a time.
            for start, blocks, keep in feature_chunks(workspace, list(card.features), rows):
                lacking += int((~keep).sum())
                if keep.any():
                    ids = rows["id"].iloc[start:start + len(keep)][keep]
                    for item_id, row in zip(ids, task.predict(blocks), strict=True):
                        out[item_id] = [card.labels[j] for j in np.flatnonzero(row)]
        except (BundleError, TaskDataError, ValueError, OSError) as e:
            notes.append(f"tags bundle {path.name!r} not applied to {len(rows)} untagged item(s): {e}")
            asked = set(rows["id"])  # none of them predicted: a chunk that failed leaves no partial answer
            return {i: t for i, t in out.items() if i not in asked}, bundle, notes
        if lacking:
            notes.append(f"{lacking} untagged item(s) lack the features of tags bundle {path.name!r} "
                         f"(run `curata features -e {','.join(card.features)}`)")
    return out, bundle, notes


def build_lexical(workspace: Workspace, items: pd.DataFrame, previous: dict[str, Any] | None = None,
                  reporter: Reporter = SILENT) -> tuple[str, dict[str, Any]]:
    """The lexical index of `items` as the JSON text of `lexical.json`, and a summary
    {"items", "tagged", "predicted", "tags_bundle", "notes"}."""
    del reporter  # fast enough not to report progress
    tags = [[t for t in _as_list(v) if not _absent(t)] for v in items["tags"]]
    untagged = items[[not t for t in tags]]
    predictions, bundle, notes = predict_untagged(workspace, untagged, previous)
    hashes = dict(zip(items["id"], items["image_sha256"], strict=True))
    docs, predicted_lists = [], []
    columns = zip(items["id"], items["captions"], items["text"], items["label"], tags, strict=True)
    for item_id, captions, text, label, own in columns:
        predicted = [] if own else [t for t in predictions.get(item_id, []) if not _absent(t)]
        parts = [*_as_list(captions), _text(text), _text(label), *own, *predicted]  # `=` and `_` split words
        docs.append(" ".join(words(" ".join(parts))))
        predicted_lists.append(predicted)
    payload = {
        "format": FORMAT, "ids": list(items["id"]), "docs": docs, "tags": tags, "predicted": predicted_lists,
        "meta": {f: [_text(v) for v in items[f]] for f in ("collection", "label", "split")},
        "tags_bundle": bundle,
        "predictions": {"bundle": bundle, "predictions": {i: {"hash": hashes[i], "tags": t}
                                                          for i, t in predictions.items()}},
        "constants": {"bm25_k1": BM25_K1, "bm25_b": BM25_B, "rrf_k": RRF_K, "fusion_depth": FUSION_DEPTH,
                      "predicted_weight": PREDICTED_WEIGHT, "trait_only_weight": TRAIT_ONLY_WEIGHT},
    }
    summary = {"items": len(docs), "tagged": sum(bool(t) for t in tags),
               "predicted": sum(bool(p) for p in predicted_lists), "tags_bundle": bundle.get("name"), "notes": notes}
    return json.dumps(payload, ensure_ascii=False), summary


# ------------------------------------------------------------------------------------------ query


@dataclass
class TraitMatch:
    """One phrase of the query and the tags it names."""

    span: tuple[int, int]
    coverage: int
    weight: float
    tags: list[str] = field(default_factory=list)


class LexicalIndex:
    """BM25 over token documents plus tag postings and the phrase matcher (see the module doc)."""

    def __init__(self, payload: dict[str, Any]):
        if payload.get("format") != FORMAT:
            raise ValueError(f"unknown lexical index format {payload.get('format')!r}")
        self.ids: list[str] = list(payload["ids"])
        self.position = {item_id: i for i, item_id in enumerate(self.ids)}
        self.tags_bundle: dict[str, Any] = dict(payload.get("tags_bundle") or {})
        self.cache = payload.get("predictions") or {}
        self.meta = {f: np.asarray(v, dtype=object) for f, v in payload["meta"].items()}
        n = len(self.ids)
        self.own = [set(t) for t in payload["tags"]]
        self.predicted = [set(t) for t in payload["predicted"]]
        # BM25 weights per (item, term), precomputed and laid out by term (a sparse matrix by column, in plain
        # numpy: scipy's import alone cost a command-line search 0.2 s): a query adds a few terms' rows.
        vocabulary: dict[str, int] = {}
        rows, cols = [], []
        lengths = np.zeros(n, np.float64)
        for i, doc in enumerate(payload["docs"]):
            tokens = doc.split()
            lengths[i] = len(tokens)
            for token in tokens:
                rows.append(i)
                cols.append(vocabulary.setdefault(token, len(vocabulary)))
        terms = max(len(vocabulary), 1)
        pairs, tf = np.unique(np.asarray(cols, np.int64) * max(n, 1) + np.asarray(rows, np.int64),
                              return_counts=True)  # sorted by term, then item: each (item, term) once
        term_of, item_of = np.divmod(pairs, max(n, 1))
        df = np.bincount(term_of, minlength=terms).astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(lengths.mean() if n else 1.0, 1e-9))
        tf = tf.astype(np.float64)
        self.term_items = item_of.astype(np.int64)
        self.term_weights = (idf[term_of] * tf * (BM25_K1 + 1) / (tf + norm[item_of])).astype(np.float32)
        self.term_start = np.searchsorted(term_of, np.arange(terms + 1))
        self.vocabulary = vocabulary
        # Tag postings: tag -> (item positions, weight 1 for an own tag, PREDICTED_WEIGHT for a predicted one).
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for weight, lists in ((1.0, self.own), (PREDICTED_WEIGHT, self.predicted)):
            for i, tags in enumerate(lists):
                for tag in tags:
                    entry = postings.setdefault(tag, ([], []))
                    entry[0].append(i)
                    entry[1].append(weight)
        self.postings = {t: (np.asarray(p, np.int64), np.asarray(w, np.float32)) for t, (p, w) in postings.items()}
        # Phrase matcher: value phrases by first word; trait phrases for trait-only matches.
        self.values: dict[str, list[tuple[tuple[str, ...], tuple[str, ...], str]]] = {}
        self.traits: dict[tuple[str, ...], list[str]] = {}
        for tag in self.postings:
            trait, value = split_tag(tag)
            if value:
                self.values.setdefault(value[0], []).append((value, trait, tag))
            if trait:
                self.traits.setdefault(trait, []).append(tag)

    @classmethod
    def from_json(cls, text: str) -> LexicalIndex:
        return cls(json.loads(text))

    def __len__(self) -> int:
        return len(self.ids)

    # -------------------------------------------------------------------------------------- parts
    def match_traits(self, query: str) -> list[TraitMatch]:
        """The query's phrases that name tags; overlapping phrases keep the longest match only."""
        q = words(query)
        found: list[tuple[int, int, int, float, str]] = []  # start, end, coverage, weight, tag
        for i, word in enumerate(q):
            for value, trait, tag in self.values.get(word, ()):
                end = i + len(value)
                if tuple(q[i:end]) != value:
                    continue
                start, stop = i, end
                if trait and tuple(q[end:end + len(trait)]) == trait:  # "red hat hair" (NFT1000 order)
                    stop = end + len(trait)
                elif trait and i >= len(trait) and tuple(q[i - len(trait):i]) == trait:  # "hair red hat"
                    start = i - len(trait)
                found.append((start, stop, stop - start, 1.0, tag))
        for trait, tags in self.traits.items():
            for i in range(len(q) - len(trait) + 1):
                if tuple(q[i:i + len(trait)]) == trait:
                    found.extend((i, i + len(trait), 0, TRAIT_ONLY_WEIGHT, tag) for tag in tags)
        found.sort(key=lambda f: (-f[2], -f[3], f[0]))
        matches: list[TraitMatch] = []
        for start, stop, coverage, weight, tag in found:
            overlapping = [m for m in matches if start < m.span[1] and m.span[0] < stop]
            same = next((m for m in overlapping if m.span == (start, stop) and m.coverage == coverage), None)
            if same is not None:
                same.tags.append(tag)
            elif not any(m.coverage > coverage or (m.coverage == coverage and m.weight > weight)
                         for m in overlapping):
                matches.append(TraitMatch((start, stop), coverage, weight, [tag]))
        return matches

    def trait_scores(self, matches: list[TraitMatch]) -> np.ndarray:
        total = np.zeros(len(self.ids), np.float32)
        for match in matches:
            best = np.zeros(len(self.ids), np.float32)
            for tag in match.tags:
                positions, weights = self.postings[tag]  # each item once per tag
                best[positions] = np.maximum(best[positions], weights * match.weight)
            total += best
        return total

    def bm25(self, query: str) -> np.ndarray:
        columns = [self.vocabulary[w] for w in dict.fromkeys(words(query)) if w in self.vocabulary]
        scores = np.zeros(len(self.ids), np.float32)
        for column in columns:  # within one term each item appears once
            start, stop = self.term_start[column], self.term_start[column + 1]
            scores[self.term_items[start:stop]] += self.term_weights[start:stop]
        return scores

    def mask(self, filters: dict[str, str | list[str] | tuple[str, ...]] | None) -> np.ndarray | None:
        if not filters:
            return None
        keep = np.ones(len(self.ids), bool)
        for name, wanted in filters.items():
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            keep &= np.isin(self.meta[name], values)
        return keep

    def matched(self, position: int, matches: list[TraitMatch]) -> tuple[list[str], list[str]]:
        """(tags of the item the query matched, those of them that are predictions)."""
        tags, predicted = [], []
        for match in matches:
            for tag in match.tags:
                if tag in self.own[position]:
                    tags.append(tag)
                elif tag in self.predicted[position]:
                    tags.append(tag)
                    predicted.append(tag)
        return list(dict.fromkeys(tags)), list(dict.fromkeys(predicted))

    # -------------------------------------------------------------------------------------- fusion
    def rank(self, query: str, joint: Sequence[tuple[str, float]] | None, k: int,
             filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Fused ranking: [{"id", "score", "matched", "predicted", "via"}], best first, at most k.

        `joint` is the joint-space top FUSION_DEPTH (id, cosine) already filtered, or None (lexical mode)."""
        matches = self.match_traits(query)
        traits = self.trait_scores(matches)
        lexical = self.bm25(query)
        keep = self.mask(filters)
        if keep is not None:
            traits = np.where(keep, traits, 0)
            lexical = np.where(keep, lexical, 0)
        n = len(self.ids)
        rrf = np.zeros(n, np.float64)
        positive = np.flatnonzero(lexical > 0)
        if len(positive) > FUSION_DEPTH:
            positive = positive[np.argpartition(-lexical[positive], FUSION_DEPTH - 1)[:FUSION_DEPTH]]
        lexical_order = positive[np.lexsort((positive, -lexical[positive]))]
        rrf[lexical_order] = 1.0 / (RRF_K + np.arange(1, len(lexical_order) + 1))
        joint_positions, outside = [], []
        for rank, (item_id, _) in enumerate(joint or (), 1):
            position = self.position.get(item_id)
            if position is None:  # indexed for search but not in the lexical index (should not happen)
                outside.append((item_id, 1.0 / (RRF_K + rank)))
                continue
            rrf[position] += 1.0 / (RRF_K + rank)
            joint_positions.append(position)
        total = traits + rrf
        candidates = np.flatnonzero(total > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-total[candidates], k - 1)[:k]]
        candidates = candidates[np.lexsort((candidates, -total[candidates]))]
        in_lexical, in_joint = set(lexical_order.tolist()), set(joint_positions)
        hits = []
        for position in candidates.tolist():
            tags, predicted = self.matched(position, matches) if traits[position] > 0 else ([], [])
            via = [name for name, found in (("traits", traits[position] > 0), ("lexical", position in in_lexical),
                                            ("joint", position in in_joint)) if found]
            hits.append({"id": self.ids[position], "score": round(float(total[position]), 6), "matched": tags,
                         "predicted": predicted, "via": via})
        for item_id, score in outside[: max(0, k - len(hits))]:
            hits.append({"id": item_id, "score": round(score, 6), "matched": [], "predicted": [], "via": ["joint"]})
        return hits


def rank_items(searcher: Any, query_texts: Sequence[str], mode: str = "hybrid", k: int = 10,
               filters: dict[str, Any] | None = None) -> list[list[str]]:
    """Ranked item ids (best first, at most k) for each query, in `mode` (hybrid, joint or lexical).

    The hook for evaluations: texts are encoded in one batch, then each query is ranked as
    `Searcher.by_text` ranks it (without building hit dicts for the page)."""
    return searcher.rank_texts(list(query_texts), mode=mode, k=k, filters=filters)


def ranker(searcher: Any, mode: str = "hybrid", k: int = 50) -> Callable[[Sequence[str]], list[list[str]]]:
    """`rank(query_texts) -> ranked item ids per query`, the callable an evaluation takes."""
    return lambda texts: rank_items(searcher, texts, mode, k)
