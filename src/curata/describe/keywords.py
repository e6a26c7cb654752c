"""Keywords from several sources, and how they are merged into one ranking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# How much each source's score counts when several propose the same keyword. Tags predicted by a
# trained model and tags voted by neighbours both estimate P(tag); colours and collection names are
# different kinds of statement, kept at full weight because each source proposes only a few.
SOURCE_WEIGHTS = {"tags": 1.0, "neighbours": 1.0, "collection": 1.0, "colour": 1.0, "text": 0.6}
EMPTY_VALUES = {"none", "null", "nan", "n/a", ""}  # trait values that say nothing as a keyword


@dataclass
class Keyword:
    keyword: str                # what a person reads ("short black", "teal", "reaction-diffusion")
    score: float                # 0..1, comparable within one description
    source: str                 # tags | neighbours | collection | colour | text (joined with + when merged)
    tag: str | None = None      # the collection's tag this keyword stands for, when it is one

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score"] = round(float(self.score), 4)
        return out


def tag_display(tag: str) -> str:
    """`hair=short_black` -> `short black`; plain tags stay as they are (underscores become spaces)."""
    value = tag.split("=", 1)[1] if "=" in tag else tag
    return value.replace("_", " ").strip()


def tag_trait(tag: str) -> str | None:
    return tag.split("=", 1)[0] if "=" in tag else None


def tag_keywords(scores: np.ndarray, vocabulary: Sequence[str], source: str, top: int,
                 exclude: Iterable[str] = ()) -> list[Keyword]:
    """The `top` best-scored tags of one item as keywords (tags in `exclude` are left out)."""
    skip = set(exclude)
    out = []
    for j in np.argsort(-scores, kind="stable"):
        if len(out) >= top or scores[j] <= 0:
            break
        if vocabulary[j] not in skip and tag_display(vocabulary[j]).lower() not in EMPTY_VALUES:
            out.append(Keyword(tag_display(vocabulary[j]), float(scores[j]), source, vocabulary[j]))
    return out


def merge(groups: Sequence[Sequence[Keyword]], top: int, by: str = "keyword") -> list[Keyword]:
    """One ranking from several sources. Each proposal's score is multiplied by its source's weight; a
    keyword proposed by several sources gets 1 - prod(1 - weighted score) over them (noisy-OR); the
    `top` best are returned, highest first.

    `by="keyword"` merges what reads the same (the tag `color=brown` and the colour namer's "brown");
    `by="tag"` keeps distinct tags apart even when they read the same (for evaluation against tags)."""
    merged: dict[str, list[Keyword]] = {}
    for group in groups:
        for kw in group:
            key = kw.tag if by == "tag" and kw.tag else kw.keyword.lower()
            merged.setdefault(key, []).append(kw)
    out = []
    for proposals in merged.values():
        # Noisy-OR: sources that agree raise the score, a weak second opinion never lowers a strong one.
        score = 1.0 - float(np.prod([1.0 - SOURCE_WEIGHTS.get(k.source, 1.0) * k.score for k in proposals]))
        best = max(proposals, key=lambda k: (k.tag is not None, k.score))  # keep a tag when there is one
        sources = "+".join(sorted({k.source for k in proposals}))
        out.append(Keyword(best.keyword, min(score, 1.0), sources, best.tag))
    out.sort(key=lambda k: (-k.score, k.keyword))
    return out[:top]
