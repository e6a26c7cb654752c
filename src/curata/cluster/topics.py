"""Topic models for item texts: LDA on word counts, NMF on tf-idf. Each topic is a list of top words;
each item gets topic weights and its main topic (a clustering of the texts with readable names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curata.cluster.core import ClusterInputError, compute_threads

TOPIC_METHODS = ("lda", "nmf")
# Words of two or more letters: numbers, sizes and model codes make poor topic words.
WORD_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


@dataclass
class TopicModel:
    method: str
    words: list[list[tuple[str, float]]]  # per topic: (word, weight), strongest first
    doc_topics: np.ndarray = field(repr=False)  # (items, topics), rows sum to 1 (0 for an item without words)
    labels: np.ndarray = field(repr=False)  # main topic per item; -1 when the item has no known word

    @property
    def names(self) -> list[str]:
        return [" · ".join(w for w, _ in words[:3]) for words in self.words]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method,
                "topics": [{"topic": i, "name": self.names[i], "words": [w for w, _ in words],
                            "items": int((self.labels == i).sum())} for i, words in enumerate(self.words)],
                "without_topic": int((self.labels < 0).sum())}


def vectorizer(kind: str, n_docs: int, max_features: int = 5000, stop_words: str | None = "english") -> Any:
    """Count or tf-idf vectoriser with settings that suit collections from ten to a million items."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    cls = CountVectorizer if kind == "count" else TfidfVectorizer
    # Words in a single text say nothing about shared topics; words in most texts are boilerplate.
    # Both cut-offs only make sense once there are enough texts.
    return cls(stop_words=stop_words, token_pattern=WORD_PATTERN, max_features=max_features,
               min_df=2 if n_docs >= 50 else 1, max_df=0.9 if n_docs >= 20 else 1.0)


def document_terms(texts: Sequence[str | None], kind: str = "count", **kwargs: Any) -> tuple[Any, list[str]]:
    """(sparse document-term matrix, vocabulary); a ValueError when there is no word to work with."""
    docs = ["" if t is None else str(t) for t in texts]
    if not any(d.strip() for d in docs):
        raise ClusterInputError(f"all {len(docs)} texts are empty: there are no words to work with")
    vec = vectorizer(kind, len(docs), **kwargs)
    try:
        matrix = vec.fit_transform(docs)
    except ValueError as e:  # vocabulary empty after stop words and cut-offs
        raise ClusterInputError(f"the texts have no usable words (only stop words, numbers or codes?): {e}") from e
    return matrix, list(vec.get_feature_names_out())


def topics(texts: Sequence[str | None], n_topics: int, method: str = "lda", n_words: int = 10, seed: int = 0,
           max_features: int = 5000) -> TopicModel:
    """Fit `n_topics` topics on the texts and assign every item to its main topic."""
    if method not in TOPIC_METHODS:
        raise ClusterInputError(f"unknown topic model '{method}': use one of {', '.join(TOPIC_METHODS)}")
    n_topics = int(n_topics)
    if n_topics < 1:
        raise ClusterInputError(f"n_topics must be >= 1, got {n_topics}")
    if n_topics > len(texts):
        raise ClusterInputError(f"{len(texts)} texts cannot form {n_topics} topics")
    # LDA is a model of word counts; NMF works best on tf-idf (common words damped).
    matrix, vocab = document_terms(texts, "count" if method == "lda" else "tfidf", max_features=max_features)
    if method == "lda":
        from sklearn.decomposition import LatentDirichletAllocation

        model: Any = LatentDirichletAllocation(n_components=n_topics, learning_method="batch", max_iter=30,
                                               random_state=seed)
    else:
        from sklearn.decomposition import NMF

        model = NMF(n_components=n_topics, init="nndsvda", max_iter=400, random_state=seed)
    with compute_threads(np.empty(matrix.nnz)):
        weights = model.fit_transform(matrix)
    has_words = np.asarray(matrix.sum(axis=1)).ravel() > 0
    totals = weights.sum(axis=1, keepdims=True)
    doc_topics = np.where(totals > 0, weights / np.where(totals > 0, totals, 1), 0.0)
    doc_topics[~has_words] = 0.0  # LDA gives empty texts the prior: that is not a topic
    labels = np.where(has_words & (totals.ravel() > 0), doc_topics.argmax(axis=1), -1)
    components = model.components_ / model.components_.sum(axis=1, keepdims=True).clip(min=1e-12)
    words = [[(vocab[j], float(row[j])) for j in np.argsort(-row)[:n_words]] for row in components]
    return TopicModel(method, words, doc_topics, labels)
