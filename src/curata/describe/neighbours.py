"""Keywords voted by an item's nearest neighbours in an embedding space: their tags and their text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from curata.describe.keywords import Keyword, tag_keywords
from curata.tasks.data import multilabel_target
from curata.vectors import l2_rows


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
            self.tfidf = TfidfVectorizer(stop_words="english", max_features=20000, min_df=2, sublinear_tf=True,
                                         token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z-]+\b")
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
        out = []
        for q in range(len(rows)):
            weights = np.clip(sims[q], 0, None)
            if weights.sum() <= 0:
                weights = np.ones_like(weights)
            weights = weights / weights.sum()
            keywords: list[Keyword] = []
            if self.has_tags and len(self.tag_vocabulary):
                scores = weights @ self.tag_matrix[rows[q]]
                keywords += tag_keywords(scores, self.tag_vocabulary, "neighbours", top,
                                         exclude=present[q] if present is not None else ())
            if self.tfidf is not None:
                term_scores = np.asarray(self.text_matrix[rows[q]].T @ weights).ravel()
                best = np.argsort(-term_scores)[:5]
                peak = term_scores[best[0]] if len(best) and term_scores[best[0]] > 0 else 1.0
                keywords += [Keyword(str(self.terms[j]), float(term_scores[j] / peak) * 0.8, "text")
                             for j in best if term_scores[j] > 0]
            out.append(keywords)
        return out

    def neighbour_ids(self, queries: np.ndarray, exclude: Sequence[str | None] | None = None, n: int = 5
                      ) -> list[list[tuple[str, float]]]:
        rows, sims = self.nearest(queries, exclude)
        return [[(str(self.ids[r]), round(float(s), 4)) for r, s in zip(rows[q][:n], sims[q][:n], strict=True)]
                for q in range(len(rows))]
