"""Tag themes: group a collection's tag vocabulary into themes by meaning, name them, map items to them.

Each tag is embedded either by MiniLM from its humanised form ("hair=short_black" -> "short black
hair", so the sentence model reads words, not identifiers) or by Word2Vec trained on the
collection's tag lists (tags that occur on the same items end up close: co-occurrence, not
meaning). The embeddings are clustered by average-linkage agglomerative clustering on cosine
distance, the number of themes chosen by silhouette unless given. A theme is named after its most
central tag (highest mean similarity to the others) or, when its tags share a trait, after the
trait and its most central values.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curata.cluster.core import ClusterInputError, cluster
from curata.vectors import l2_rows

EMBEDDERS = ("minilm", "word2vec")


def humanise(tag: str) -> str:
    """'hair=short_black' -> 'short black hair'; a tag without '=' just loses its underscores."""
    trait, sep, value = tag.partition("=")
    words = f"{value} {trait}" if sep and value else (trait if sep else tag)
    return " ".join(words.replace("_", " ").replace("-", " ").split())


def trait_of(tag: str) -> str | None:
    trait, sep, _ = tag.partition("=")
    return trait if sep else None


def tag_vocabulary(tag_lists: Sequence[Sequence[str]], min_count: int = 1) -> list[str]:
    """Distinct tags seen on at least `min_count` items, most frequent first (ties by name)."""
    counts = Counter(t for tags in tag_lists for t in set(tags))
    return sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))


def _crc_hash(text: str) -> int:
    # gensim's default hash is salted per process; this makes seeded runs repeatable.
    return zlib.crc32(text.encode("utf-8"))


def embed_tags(vocabulary: Sequence[str], embedder: str = "minilm", tag_lists: Sequence[Sequence[str]] | None = None,
               seed: int = 0, extractor: Any = None) -> np.ndarray:
    """One L2-normalised row per tag. `extractor` overrides the MiniLM instance (tests, shared models)."""
    if embedder == "minilm":
        if extractor is None:
            from curata.features.text import MiniLMText

            extractor = MiniLMText()
        x = np.asarray(extractor.transform([humanise(t) for t in vocabulary]), dtype=np.float64)
    elif embedder == "word2vec":
        if tag_lists is None:
            raise ClusterInputError("word2vec tag embeddings are trained on the items' tag lists; pass tag_lists")
        from gensim.models import Word2Vec

        sentences = [sorted({str(t) for t in tags}) for tags in tag_lists if len(tags)]
        longest = max((len(s) for s in sentences), default=1)
        # Every tag of an item is context for every other (the window spans the whole list). No
        # down-sampling of frequent tokens (sample=0): in a tag vocabulary every tag is "frequent",
        # and the default 1e-3 would discard most of the corpus.
        model = Word2Vec(sentences=sentences, vector_size=64, window=longest, min_count=1, sg=1, epochs=20,
                         sample=0, seed=seed, workers=1, hashfxn=_crc_hash)
        missing = [t for t in vocabulary if t not in model.wv.key_to_index]
        if missing:
            raise ClusterInputError(f"{len(missing)} tag(s) never occur in tag_lists, e.g. {missing[0]!r}")
        x = np.stack([model.wv[t] for t in vocabulary]).astype(np.float64)
    else:
        raise ClusterInputError(f"unknown tag embedder '{embedder}': use one of {', '.join(EMBEDDERS)}")
    return l2_rows(x)


@dataclass
class Theme:
    theme: int
    name: str
    tags: list[str]  # most central first
    trait: str | None  # the trait most of its tags share, if any
    items: int = 0  # items carrying at least one of its tags

    def to_dict(self) -> dict[str, Any]:
        return {"theme": self.theme, "name": self.name, "tags": self.tags, "trait": self.trait, "items": self.items}


@dataclass
class TagThemes:
    embedder: str
    themes: list[Theme]
    tag_theme: dict[str, int] = field(repr=False)
    silhouette: float | None = None

    def item_themes(self, tag_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """For every item, the sorted themes of its tags (tags outside the vocabulary are ignored)."""
        return [sorted({self.tag_theme[t] for t in tags if t in self.tag_theme}) for tags in tag_lists]

    def item_matrix(self, tag_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(items x themes) counts of each item's tags per theme: a compact, readable feature block."""
        out = np.zeros((len(tag_lists), len(self.themes)), np.float32)
        for i, tags in enumerate(tag_lists):
            for t in set(tags):
                if t in self.tag_theme:
                    out[i, self.tag_theme[t]] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"embedder": self.embedder, "silhouette": self.silhouette,
                "themes": [t.to_dict() for t in self.themes]}


def _name(tags: list[str]) -> tuple[str, str | None]:
    traits = Counter(trait_of(t) for t in tags)
    trait, count = traits.most_common(1)[0]
    if trait is not None and count / len(tags) >= 0.5:
        values = [humanise(t.partition("=")[2]) for t in tags if trait_of(t) == trait][:2]
        return f"{trait.replace('_', ' ')}: {', '.join(values)}" if len(tags) > 1 else humanise(tags[0]), trait
    return humanise(tags[0]), None


def tag_themes(tag_lists: Sequence[Sequence[str]] | None = None, *, vocabulary: Sequence[str] | None = None,
               n_themes: int | None = None, embedder: str = "minilm", min_count: int = 1,
               k_range: tuple[int, int] = (2, 30), seed: int = 0, extractor: Any = None) -> TagThemes:
    """Cluster the tag vocabulary (from `tag_lists`, or given) into themes; see the module docstring."""
    if vocabulary is None:
        if tag_lists is None:
            raise ClusterInputError("give tag_lists (the items' tags) or a vocabulary")
        vocabulary = tag_vocabulary(tag_lists, min_count)
    vocabulary = list(dict.fromkeys(str(t) for t in vocabulary))
    if len(vocabulary) < 3:
        raise ClusterInputError(f"{len(vocabulary)} distinct tag(s): themes need at least 3")
    if n_themes is not None and not 1 <= n_themes <= len(vocabulary):
        raise ClusterInputError(f"{len(vocabulary)} tags cannot form {n_themes} themes")
    x = embed_tags(vocabulary, embedder, tag_lists, seed, extractor)
    # Average linkage on cosine: a theme is a set of mutually similar tags, without Ward's pull
    # towards equal-sized groups (a vocabulary has big and small themes).
    result = cluster(x, "agglomerative", n_themes, k_range=(k_range[0], min(k_range[1], len(vocabulary) - 1)),
                     linkage="average", seed=seed)
    labels = result.labels
    themes: list[Theme] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        sims = x[rows] @ x[rows].T
        centrality = (sims.sum(axis=1) - 1) / max(len(rows) - 1, 1)
        tags = [vocabulary[r] for r in rows[np.argsort(-centrality, kind="stable")]]
        name, trait = _name(tags)
        themes.append(Theme(0, name, tags, trait))
    themes.sort(key=lambda t: (-len(t.tags), t.name))
    tag_theme: dict[str, int] = {}
    for i, theme in enumerate(themes):
        theme.theme = i
        tag_theme.update((t, i) for t in theme.tags)
    found = TagThemes(embedder, themes, tag_theme, result.scores.get("silhouette"))  # type: ignore[arg-type]
    if tag_lists is not None:
        counts = Counter(th for ts in found.item_themes(tag_lists) for th in ts)
        for theme in themes:
            theme.items = counts.get(theme.theme, 0)
    return found
