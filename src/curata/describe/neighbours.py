"""Keywords voted by an item's nearest neighbours in an embedding space: their tags and their text.

Two neighbour sources with the same `vote` / `neighbour_ids` interface:

  NeighbourVotes         every reference vector, tag and text in memory, exact (the embedding matrix
                         fits the memory budget);
  IndexedNeighbourVotes  a persistent `VectorIndex` (`index/describe-<embedding>/`, built by
                         `open_neighbour_index` from `iter_matrix` chunks, updated incrementally) and
                         the neighbours' tags and text fetched by id from the collection per query batch,
                         for collections whose embedding matrix exceeds the budget.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from curata.describe.keywords import Keyword, tag_keywords
from curata.progress import SILENT, Reporter
from curata.tasks.data import multilabel_target
from curata.vectors import l2_rows

if TYPE_CHECKING:
    from curata.features.base import Extractor
    from curata.search.index import VectorIndex
    from curata.workspace import Workspace

TEXT_SAMPLE = 20_000  # texts the indexed path fits its tf-idf vocabulary and idf on (seeded sample)
PAGE_ROWS = 50_000  # rows of the tags column read at once when counting tags over budget
SIDECAR = "describe.json"


def make_tfidf() -> TfidfVectorizer:
    """The text-term vectoriser both neighbour sources use (same vocabulary rules)."""
    return TfidfVectorizer(stop_words="english", max_features=20000, min_df=2, sublinear_tf=True,
                           token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z-]+\b")


def neighbour_keywords(sims: np.ndarray, tag_rows: np.ndarray | None, vocabulary: Sequence[str],
                       text_rows: Any, terms: np.ndarray | None, top: int,
                       present: Sequence[str] = ()) -> list[Keyword]:
    """One query's keywords from its neighbours: similarity-weighted tag shares (`tag_rows`: 0/1, one
    row per neighbour) and the 5 heaviest tf-idf terms of their texts (`text_rows`: sparse, per neighbour)."""
    weights = np.clip(sims, 0, None)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    weights = weights / weights.sum()
    keywords: list[Keyword] = []
    if tag_rows is not None and len(vocabulary):
        scores = weights @ tag_rows
        keywords += tag_keywords(scores, vocabulary, "neighbours", top, exclude=present)
    if text_rows is not None and terms is not None:
        term_scores = np.asarray(text_rows.T @ weights).ravel()
        best = np.argsort(-term_scores)[:5]
        peak = term_scores[best[0]] if len(best) and term_scores[best[0]] > 0 else 1.0
        keywords += [Keyword(str(terms[j]), float(term_scores[j] / peak) * 0.8, "text")
                     for j in best if term_scores[j] > 0]
    return keywords


class NeighbourVotes:
    """Reference items (vectors, tags, texts); `vote` turns a query's k nearest into keyword scores.

    A tag's score is the similarity-weighted share of neighbours that carry it, so 1.0 means every
    neighbour agrees. Text terms are the tf-idf terms that weigh most in the neighbours' texts.
    Exact inner product on L2-normalised rows: collections up to ~100k items fit in memory and a
    query costs one matrix-vector product.
    """

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, tags: Sequence[Sequence[str]],
                 texts: Sequence[str | None], k: int = 10, min_tag_count: int = 2):
        self.ids = np.asarray(ids, dtype=object)
        self.vectors = l2_rows(np.asarray(vectors, np.float32))
        self.k = k
        self.has_tags = any(len(t) for t in tags)
        if self.has_tags:
            frame = {"tags": list(tags)}
            import pandas as pd

            self.tag_matrix, self.tag_vocabulary = multilabel_target(pd.DataFrame(frame), "tags", min_tag_count)
        else:
            self.tag_matrix, self.tag_vocabulary = np.zeros((len(ids), 0), np.uint8), []
        docs = [t or "" for t in texts]
        self.tfidf = None
        if sum(bool(d.strip()) for d in docs) >= 2:
            self.tfidf = make_tfidf()
            try:
                self.text_matrix = self.tfidf.fit_transform(docs)
                self.terms = np.asarray(self.tfidf.get_feature_names_out())
            except ValueError:  # vocabulary empty after stop words / min_df
                self.tfidf = None

    def nearest(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Row indices and similarities of the k nearest references per query (an item never finds itself)."""
        sims = l2_rows(queries) @ self.vectors.T
        if exclude is not None:
            position = {item: i for i, item in enumerate(self.ids)}
            for row, item in enumerate(exclude):
                if item in position:
                    sims[row, position[item]] = -np.inf
        k = min(self.k, self.vectors.shape[0] - (1 if exclude is not None else 0))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :max(k, 0)]
        return order, np.take_along_axis(sims, order, axis=1)

    def vote(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None, top: int = 10,
             present: Sequence[Sequence[str]] | None = None) -> list[list[Keyword]]:
        rows, sims = self.nearest(queries, exclude)
        tags = self.tag_matrix if self.has_tags and len(self.tag_vocabulary) else None
        texts = self.text_matrix if self.tfidf is not None else None
        return [neighbour_keywords(sims[q], None if tags is None else tags[rows[q]], self.tag_vocabulary,
                                   None if texts is None else texts[rows[q]],
                                   self.terms if texts is not None else None, top,
                                   present[q] if present is not None else ())
                for q in range(len(rows))]

    def neighbour_ids(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None, n: int = 5
                      ) -> list[list[tuple[str, float]]]:
        rows, sims = self.nearest(queries, exclude)
        return [[(str(self.ids[r]), round(float(s), 4)) for r, s in zip(rows[q][:n], sims[q][:n], strict=True)]
                for q in range(len(rows))]


def neighbour_index_dir(workspace: Workspace, embedding: str) -> Path:
    """Where the describe neighbour index of `embedding` lives: `index/describe-<embedding>/`."""
    return workspace.root / "index" / f"describe-{re.sub(r'[^A-Za-z0-9_.+-]', '_', embedding)}"


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def open_neighbour_index(workspace: Workspace, extractor: Extractor, *, seed: int = 0,
                         reporter: Reporter = SILENT) -> VectorIndex:
    """The neighbour index of `extractor`'s cached vectors over the workspace's items, brought up to date.

    Incremental like `search.searcher.build_index`: the sidecar maps each id to the content key its vector
    came from; removed items are dropped, new or changed ones streamed in through `iter_matrix` (one
    budget-sized chunk in memory at a time), a different extractor key (version, fit) starts over.
    Items without a usable vector are remembered too, so they are not retried on every open.

    Kind ivfpq, not hnsw: it is trained once and then adds are cheap, whereas HNSW insertion is the
    slowest build FAISS offers (graph search per insert; hours for millions of items on 2 cores), and
    ivfpq deletes physically where hnsw leaves tombstones that incremental updates would pile up.
    Candidates are re-ranked against the exact vectors, so the similarities that weight the votes are
    exact cosines; below `train_min` (10,000) items it searches exactly. New items are added in a
    seeded random order so the vectors it trains on are a fair sample, not the first-ingested collection.
    The index itself still holds the float vectors (its re-ranking store): it bounds the matrices
    describe loads, not the index's own memory.
    """
    from curata.features.engine import item_keys, iter_matrix
    from curata.search.index import IndexErrorBadInput, VectorIndex

    directory = neighbour_index_dir(workspace, extractor.name)
    items = workspace.items(["id", "text"] if extractor.modality == "text" else ["id", "image_sha256"])
    current = dict(zip(items["id"], item_keys(items, extractor), strict=True))
    with workspace.lock(directory.name):  # one builder at a time (the CLI and the service may both open)
        sidecar = _read_sidecar(directory / SIDECAR)
        index = None
        if sidecar is not None and sidecar.get("key") == extractor.key:
            try:
                index = VectorIndex.load(directory)
            except IndexErrorBadInput:  # derived data: a rebuild repairs it
                index = None
        hashes: dict[str, str] = dict(sidecar.get("hashes", {})) if index is not None and sidecar else {}
        if index is None:
            index = VectorIndex.create(extractor.dim, kind="ivfpq",
                                       card={"embedding": extractor.name, "key": extractor.key})
        gone = [i for i in hashes if i not in current]
        if gone:
            index.remove(gone)
            for i in gone:
                del hashes[i]
        todo = items[[hashes.get(i) != key for i, key in current.items()]]
        if len(todo):
            todo = todo.iloc[np.random.default_rng(seed).permutation(len(todo))].reset_index(drop=True)
            keys = item_keys(todo, extractor)
            advance = reporter.task(f"neighbour index ({extractor.name})", len(todo))
            for start, matrix, errors in iter_matrix(workspace, extractor, todo):
                ids = todo["id"].iloc[start:start + len(errors)].tolist()
                usable = np.array([e is None for e in errors], bool)
                usable &= np.isfinite(matrix).all(axis=1) & (np.linalg.norm(matrix, axis=1) > 0)
                stale = [i for i, ok in zip(ids, usable, strict=True) if not ok and i in index]
                if stale:  # a changed item that now fails must not keep its old vector
                    index.remove(stale)
                if usable.any():
                    index.add([i for i, ok in zip(ids, usable, strict=True) if ok], matrix[usable])
                hashes.update(zip(ids, keys[start:start + len(errors)], strict=True))
                advance(len(errors))
        if gone or len(todo) or not (directory / SIDECAR).exists():
            index.save(directory, extra={SIDECAR: json.dumps({"key": extractor.key, "hashes": hashes})})
    return index


class IndexedNeighbourVotes:
    """`NeighbourVotes` over a `VectorIndex`, for collections whose embedding matrix exceeds the budget.

    Holds the index, the tag vocabulary (tags on at least `min_tag_count` indexed items, counted over the
    tags column page by page) and a tf-idf fitted on a seeded sample of at most `TEXT_SAMPLE` texts; the
    neighbours' tags and texts are fetched by id per query batch (O(queries x k) rows)."""

    def __init__(self, workspace: Workspace, index: VectorIndex, tag_vocabulary: Sequence[str],
                 tfidf: TfidfVectorizer | None, k: int = 10):
        self.workspace = workspace
        self.index = index
        self.k = k
        self.tag_vocabulary = list(tag_vocabulary)
        self._position = {t: j for j, t in enumerate(self.tag_vocabulary)}
        self.has_tags = bool(self.tag_vocabulary)
        self.tfidf = tfidf
        self.terms = np.asarray(tfidf.get_feature_names_out()) if tfidf is not None else None

    @classmethod
    def open(cls, workspace: Workspace, extractor: Extractor, k: int = 10, min_tag_count: int = 2, seed: int = 0,
             reporter: Reporter = SILENT) -> IndexedNeighbourVotes:
        index = open_neighbour_index(workspace, extractor, seed=seed, reporter=reporter)
        counts: Counter[str] = Counter()
        offset = 0
        while True:  # one page of (id, tags) in memory at a time
            page = workspace.collection.read(["id", "tags"], limit=PAGE_ROWS, offset=offset)
            if page.empty:
                break
            for item_id, tags in zip(page["id"], page["tags"], strict=True):
                if item_id in index and tags is not None:
                    counts.update(tags)
            offset += len(page)
        vocabulary = sorted(t for t, n in counts.items() if n >= min_tag_count)
        ids = index.ids()
        tfidf = None
        if ids:
            rng = np.random.default_rng(seed)
            sample = [ids[i] for i in np.sort(rng.choice(len(ids), min(TEXT_SAMPLE, len(ids)), replace=False))]
            docs = [t or "" for t in workspace.collection.by_ids(sample, ["text"])["text"]]
            if sum(bool(d.strip()) for d in docs) >= 2:
                tfidf = make_tfidf()
                try:
                    tfidf.fit(docs)
                except ValueError:  # vocabulary empty after stop words / min_df
                    tfidf = None
        return cls(workspace, index, vocabulary, tfidf, k)

    def __len__(self) -> int:
        return len(self.index)

    def nearest(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None
                ) -> list[list[tuple[str, float]]]:
        """(id, similarity) of the k nearest indexed items per query, best first (an item never finds itself)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        k = min(self.k, len(self.index) - (1 if exclude is not None else 0))
        out: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
        # A zero or non-finite query (no features) has no neighbours; the index would refuse it.
        good = np.flatnonzero(np.isfinite(queries).all(axis=1) & (np.linalg.norm(queries, axis=1) > 0))
        if k <= 0 or not len(good):
            return out
        found = self.index.search(queries[good], k + (1 if exclude is not None else 0))
        for row, hits in zip(good.tolist(), found, strict=True):
            skip = exclude[row] if exclude is not None else None
            out[row] = [(i, s) for i, s in hits if i != skip][:k]
        return out

    def vote(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None, top: int = 10,
             present: Sequence[Sequence[str]] | None = None) -> list[list[Keyword]]:
        found = self.nearest(queries, exclude)
        wanted = sorted({i for hits in found for i, _ in hits})
        rows = self.workspace.collection.by_ids(wanted, ["id", "tags", "text"]) if wanted else None
        tags_of = dict(zip(rows["id"], rows["tags"], strict=True)) if rows is not None else {}
        text_of = dict(zip(rows["id"], rows["text"], strict=True)) if rows is not None else {}
        out: list[list[Keyword]] = []
        for q, hits in enumerate(found):
            if not hits:
                out.append([])
                continue
            ids = [i for i, _ in hits]
            sims = np.array([s for _, s in hits], np.float32)
            tag_rows = None
            if self.has_tags:
                tag_rows = np.zeros((len(ids), len(self.tag_vocabulary)), np.int8)
                for r, i in enumerate(ids):
                    for t in tags_of.get(i) if tags_of.get(i) is not None else ():
                        if t in self._position:
                            tag_rows[r, self._position[t]] = 1
            text_rows = self.tfidf.transform([text_of.get(i) or "" for i in ids]) if self.tfidf is not None else None
            out.append(neighbour_keywords(sims, tag_rows, self.tag_vocabulary, text_rows, self.terms, top,
                                          present[q] if present is not None else ()))
        return out

    def neighbour_ids(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None, n: int = 5
                      ) -> list[list[tuple[str, float]]]:
        return [[(i, round(float(s), 4)) for i, s in hits[:n]] for hits in self.nearest(queries, exclude)]
