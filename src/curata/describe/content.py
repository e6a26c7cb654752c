"""Content words ("dog", "sofa", "boat") from EfficientNet-Lite0's ImageNet head, with a popularity prior.

The 1000 ImageNet logits are a linear function of the 1280-d `effnet_lite0` features the workspace
already caches (`logits = W @ features + b`, the model's `_fc` layer), so the words of every item come
from its cached vector: no image is decoded again and nothing new is stored.

1. Calibration: softmax over the 1000 classes at `temperature` (1.0: the head's own training
   temperature; nothing here is fitted to any collection's labels).
2. Popularity prior: an ImageNet head predicts a few classes for nearly everything outside ImageNet
   ("velvet", "jigsaw puzzle", "web site", "envelope" on product shots and art). The prior is each
   class's mean probability over a reference set (the workspace's items), smoothed towards uniform by
   PRIOR_PSEUDO_ITEMS imaginary items so that a small collection (or one item) is not measured against
   its own predictions; by default it is divided out like idf (see `ContentWords`), or subtracted.
3. Words: each class gives its readable word, and its share also goes to the class's WordNet
   `general` word (`curata.describe.vocabulary`), so 120 uncertain dog breeds add up to a certain "dog".
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from curata.describe.keywords import Keyword
from curata.describe.vocabulary import COCO_CATEGORIES, imagenet_words

if TYPE_CHECKING:
    import pandas as pd

    from curata.workspace import Workspace

N_CLASSES = 1000
PRIOR_PSEUDO_ITEMS = 10.0  # uniform pseudo-items mixed into the prior (small collections)
MIN_SCORE = 0.05  # a content word below this share of the (adjusted) probability is not proposed
SOURCE = "content"


@cache
def imagenet_head() -> tuple[np.ndarray, np.ndarray]:
    """EfficientNet-Lite0's classifier layer as numpy, (1000, 1280) weights and (1000,) bias, read from
    the same weights file the ONNX export is built from (a pip package: no download)."""
    import torch

    from curata.features.efficientnet import _weights_path

    state = torch.load(_weights_path("lite0"), map_location="cpu", weights_only=True)
    return (state["_fc.weight"].numpy().astype(np.float32), state["_fc.bias"].numpy().astype(np.float32))


def features_to_logits(features: np.ndarray) -> np.ndarray:
    """(n, 1280) raw `effnet_lite0` features -> (n, 1000) ImageNet logits."""
    weight, bias = imagenet_head()
    return np.asarray(features, np.float32) @ weight.T + bias


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@cache
def _word_index() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """Class words and the units the prior works on, as (names, class -> column) pairs.

    A class's unit is its general word when it has one, else its own word: units partition the 1000
    classes, so their probabilities still sum to one."""
    rows = imagenet_words()
    words = sorted({r["word"] for r in rows})
    units = sorted({r["general"] or r["word"] for r in rows})
    word_of = np.array([words.index(r["word"]) for r in rows])
    unit_of = np.array([units.index(r["general"] or r["word"]) for r in rows])
    is_general = np.array([bool(r["general"]) for r in rows])
    return tuple(words), word_of, tuple(units), unit_of, is_general


@cache
def general_word(word: str) -> str | None:
    """The WordNet general word of a class word ("golden retriever" -> "dog"), if it has one."""
    for row in imagenet_words():
        if row["word"].lower() == word.lower():
            return row["general"] or None
    return None


def coco_matrix() -> np.ndarray:
    """(1000, 80) 0/1: which COCO category each ImageNet class stands for (see `vocabulary`)."""
    out = np.zeros((N_CLASSES, len(COCO_CATEGORIES)), np.float32)
    position = {name: j for j, name in enumerate(COCO_CATEGORIES)}
    for i, row in enumerate(imagenet_words()):
        if row["coco"]:
            out[i, position[row["coco"]]] = 1.0
    return out


PRIORS = ("divide", "subtract", "none")


class ContentWords:
    """Calibrated, popularity-adjusted ImageNet class probabilities and the words they add up to.

    `mode="divide"` (default): q ~ p / prior^alpha, renormalised, like idf: a class predicted for
    everything ("velvet", "jigsaw puzzle" on product shots) is divided by its own ubiquity. On flipkart it
    cut the items whose top-3 words include a word seen across most categories from 56 % to 5 %; it also
    demotes objects that are frequent because the collection is full of them, and left 13 % of flipkart
    items with no word above MIN_SCORE. `mode="subtract"`: q = max(p - prior, 0), the probability above
    the collection's average item: gentler (56 % -> 40 % on flipkart), keeps a confident prediction of a
    frequent object. `mode="none"`: q = p. benchmarks/describe.py measures all three."""

    def __init__(self, prior: np.ndarray | None = None, n_reference: int = 0, *, temperature: float = 1.0,
                 mode: str = "divide", alpha: float = 1.0, embedding: str = "effnet_lite0"):
        if mode not in PRIORS:
            raise ValueError(f"unknown prior {mode!r}; expected one of {PRIORS}")
        uniform = np.full(N_CLASSES, 1.0 / N_CLASSES)
        mean = uniform if prior is None else np.asarray(prior, np.float64)
        # Smoothed: n real items' mean mixed with PRIOR_PSEUDO_ITEMS uniform ones.
        self.prior = (n_reference * mean + PRIOR_PSEUDO_ITEMS * uniform) / (n_reference + PRIOR_PSEUDO_ITEMS)
        self.n_reference = n_reference
        self.temperature = temperature
        self.mode = mode
        self.alpha = alpha
        self.embedding = embedding  # whose logits the prior was averaged over, and `keywords` expects

    @classmethod
    def fit(cls, reference_logits: np.ndarray, *, temperature: float = 1.0, mode: str = "divide",
            alpha: float = 1.0) -> ContentWords:
        """The prior from a reference set's logits (the workspace's items; no labels are used)."""
        logits = np.asarray(reference_logits)
        if not len(logits):
            return cls(None, 0, temperature=temperature, mode=mode, alpha=alpha)
        prior = softmax(logits, temperature).mean(axis=0)
        return cls(prior, len(logits), temperature=temperature, mode=mode, alpha=alpha)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(n, 1000) q(c|x): softmax at the temperature, adjusted by the prior per unit (see `_word_index`),
        each unit's q then shared among its classes as p shares it.

        Per unit, not per class: dividing each of 120 dog breeds by its own tiny prior would lift the
        noise of all of them at once and put "dog" on every photo."""
        p = softmax(logits, self.temperature)
        if self.mode == "none":
            return p
        _, _, units, unit_of, _ = _word_index()
        unit_p = np.zeros((len(p), len(units)))
        np.add.at(unit_p.T, unit_of, p.T)
        unit_prior = np.zeros(len(units))
        np.add.at(unit_prior, unit_of, self.prior)
        if self.mode == "divide":
            unit_q = unit_p / unit_prior ** self.alpha
            unit_q /= unit_q.sum(axis=1, keepdims=True)
        else:
            # The 1e-6 * p keeps units at zero ordered by the raw prediction (rankings need an order).
            unit_q = np.maximum(unit_p - unit_prior, 0.0) + 1e-6 * unit_p
        within = p / np.maximum(unit_p[:, unit_of], 1e-300)  # each class's share of its unit
        return unit_q[:, unit_of] * within

    def keywords(self, logits: np.ndarray, top: int = 10, min_score: float = MIN_SCORE) -> list[list[Keyword]]:
        """Per row, the best content words: class words and general words, each with its summed q."""
        q = self.probabilities(logits)
        words, word_of, units, unit_of, is_general = _word_index()
        word_scores = np.zeros((len(q), len(words)))
        np.add.at(word_scores.T, word_of, q.T)  # classes sharing a word ("crane", "maillot") add up
        unit_scores = np.zeros((len(q), len(units)))
        np.add.at(unit_scores.T, unit_of, q.T)
        general_units = np.zeros(len(units), bool)
        general_units[unit_of[is_general]] = True
        out = []
        for i in range(len(q)):
            scored: dict[str, float] = {}
            for names, scores, keep in ((words, word_scores[i], None), (units, unit_scores[i], general_units)):
                for j in np.flatnonzero(scores >= min_score):
                    if keep is None or keep[j]:
                        scored[names[j]] = max(scored.get(names[j], 0.0), float(scores[j]))  # "ball" is both
            best = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            out.append([Keyword(word, min(score, 1.0), SOURCE) for word, score in best])
        return out

    def coco_scores(self, logits: np.ndarray) -> np.ndarray:
        """(n, 80) the adjusted probability mass of the classes that stand for each COCO category."""
        return self.probabilities(logits) @ coco_matrix().astype(np.float64)


def related(a: str, b: str) -> bool:
    """Whether two content words say the same thing in a sentence ("dog" and "golden retriever",
    "Persian cat" and "cat")."""
    a, b = a.lower(), b.lower()
    if a in b.split() or b in a.split() or a == b:
        return True
    return (general_word(a) or "").lower() == b or (general_word(b) or "").lower() == a


def top_words(keywords: Sequence[Keyword], n: int) -> list[str]:
    """The `n` best content words of a ranking that say different things."""
    out: list[str] = []
    for kw in keywords:
        if not any(related(kw.keyword, w) for w in out):
            out.append(kw.keyword)
        if len(out) == n:
            break
    return out


CONTENT_EMBEDDING = "effnet_lite0"  # the features whose classifier head gives the words
# The head's probabilities pooled over the whole image and its corner crops (stored as log-probabilities, read
# as logits): used instead where the workspace has them for most items. On coco_mini they raised P@5 against
# COCO categories from 0.296 to 0.320 (benchmarks/describe.py): a photo of several objects names more of them.
CONTENT_VIEWS = "effnet_lite0_views"


def content_logits(embedding: str, matrix: np.ndarray) -> np.ndarray:
    """The logits the content words read from a matrix of `embedding` (CONTENT_EMBEDDING or CONTENT_VIEWS)."""
    return np.asarray(matrix, np.float32) if embedding == CONTENT_VIEWS else features_to_logits(matrix)


PRIOR_SAMPLE = 5000  # items (seeded sample) the popularity prior is averaged over
TRAIT_SHARE = 0.5  # at least this share of items with `trait=value` tags: an NFT-style collection


def has_traits(tag_lists: Sequence[Sequence[str] | None]) -> bool:
    """Whether most items carry `trait=value` tags (generative / NFT collections: their sentence lists
    traits, and ImageNet words say nothing about pixel art)."""
    lists = [t for t in tag_lists if t is not None]
    if not lists:
        return False
    return sum(any("=" in str(tag) for tag in tags) for tags in lists) >= TRAIT_SHARE * len(lists)


def open_content(workspace: Workspace, items: pd.DataFrame | None = None, *, enabled: bool | None = None,
                 mode: str = "divide", alpha: float = 1.0, temperature: float = 1.0,
                 seed: int = 0) -> ContentWords | None:
    """The content-word source of a workspace, or None when it is off (`enabled=None`: on unless the
    collection is trait-tagged). The prior is averaged over a seeded sample of up to PRIOR_SAMPLE items'
    cached `effnet_lite0` vectors; items without one are left out (uniform prior when none has one)."""
    from curata.features.engine import iter_matrix, make_extractor

    if items is None:  # over the memory budget: a seeded sample of rows, read by id
        ids = workspace.collection.read(["id"])["id"].tolist()
        rng = np.random.default_rng(seed)
        chosen = sorted(ids[i] for i in rng.choice(len(ids), min(PRIOR_SAMPLE, len(ids)), replace=False))
        sample = workspace.collection.by_ids(chosen, ["id", "image_sha256", "tags"])
    else:
        sample = items if len(items) <= PRIOR_SAMPLE else items.sample(PRIOR_SAMPLE, random_state=seed)
    if enabled is False or (enabled is None and has_traits(list(sample["tags"]))):
        return None
    if sample.empty:
        return ContentWords(mode=mode, alpha=alpha, temperature=temperature)
    # The views where the workspace has them for at least half the sample, else the whole image's logits; each
    # read once, streamed in budget-sized chunks (the sample's matrix need not fit the memory budget at once).
    for embedding in (CONTENT_VIEWS, CONTENT_EMBEDDING):
        total, n = np.zeros(N_CLASSES), 0
        for _, matrix, errors in iter_matrix(workspace, make_extractor(embedding), sample):
            ok = np.array([e is None for e in errors], bool)
            if ok.any():
                total += softmax(content_logits(embedding, matrix[ok]), temperature).sum(axis=0)
                n += int(ok.sum())
        if embedding == CONTENT_EMBEDDING or n >= len(sample) / 2:
            break
    return ContentWords(total / n if n else None, n, mode=mode, alpha=alpha, temperature=temperature,
                        embedding=embedding)
