"""Scoring the zero-label colour namer (`curata.features.colour_names.name_colours`) against colour labels.

`score_namer` takes a workspace and a target spec (as every task does: "tag:color", "label",
"meta:<field>") or a list of (image, colour) pairs, names each image, and compares the top name with the
target after folding spellings ("grey" -> "gray"). Items whose target is missing or not a term of the
vocabulary are counted as unusable, not scored. `colour_word` is the rule that turns a product text into
a colour target (exactly one basic colour word in it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curata.features.colornames import BASIC_COLORS, CSS_COLORS, Vocabulary
from curata.features.colour_names import name_colours
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

ImageLike = np.ndarray | str | Path | bytes

_SPELLINGS = {"grey": "gray", "violet": "purple", "turquoise": "teal", "cyan": "teal"}
_WORDS = re.compile(r"\b(" + "|".join(sorted({*BASIC_COLORS, *_SPELLINGS})) + r")\b", re.IGNORECASE)
_MANY = re.compile(r"\bmulti[\s-]?colou?r(ed|s)?\b|\bassorted\b", re.IGNORECASE)


def colour_word(text: Any) -> str | None:
    """The one basic colour a text names, or None: whole words, any case, "grey"/"violet"/"turquoise"/"cyan"
    folded into gray/purple/teal; None when it names none, several distinct ones, or says multicolour or
    assorted."""
    if not isinstance(text, str) or _MANY.search(text):
        return None
    found = {_SPELLINGS.get(w.lower(), w.lower()) for w in _WORDS.findall(text)}
    return found.pop() if len(found) == 1 else None


def _normalise(value: Any, vocabulary: Vocabulary) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if vocabulary == "basic":
        text = _SPELLINGS.get(text, text)
    return text if text in (BASIC_COLORS if vocabulary == "basic" else CSS_COLORS) else None


def _pairs(source: Workspace | Iterable[tuple[ImageLike, Any]], target: str) -> Iterable[tuple[ImageLike, Any]]:
    if isinstance(source, Workspace):
        from curata.tasks.data import single_target

        items = source.items()
        return zip(items["image"].tolist(), single_target(items, target).tolist(), strict=True)
    return source


def score_namer(source: Workspace | Iterable[tuple[ImageLike, Any]], target: str = "tag:color", *,
                vocabulary: Vocabulary = "basic", k: int = 5,
                namer: Literal["foreground", "whole_image"] = "foreground", reporter: Reporter = SILENT
                ) -> dict[str, Any]:
    """Accuracy of the namer's top colour against a colour target.

    `source`: a workspace (its items' images, and the target spec `target`: "tag:color", "label",
    "meta:<field>") or (image, colour) pairs, an image being an RGB(A) array, a path or bytes.
    `namer`: "foreground" (the namer) or "whole_image" (the palette of the whole picture, as before).
    Returns: items, usable (items with a target in the vocabulary), unusable, unreadable, correct,
    accuracy (of the usable; None without any), top2_accuracy (the target among the first two names),
    per_class {colour: {n, correct, accuracy}}, confusion {true: {predicted: count}}, predicted (counts of
    top names), white_over_non_white (usable items not white whose top name is white: the backdrop
    problem), methods (how the splits were made).
    """
    from curata.imageio import load_image

    items = usable = unreadable = correct = top2 = white_over = 0
    confusion: dict[str, Counter[str]] = {}
    predicted: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    pairs = list(_pairs(source, target))
    advance = reporter.task("naming colours", len(pairs))
    for image, value in pairs:
        items += 1
        advance(1)
        truth = _normalise(value, vocabulary)
        if truth is None:
            continue
        try:
            pixels = image if isinstance(image, np.ndarray) else load_image(image)
        except (OSError, ValueError):
            unreadable += 1
            continue
        named = name_colours(pixels, k=k, vocabulary=vocabulary, foreground=namer == "foreground")
        top = named.top or ""
        usable += 1
        correct += top == truth
        top2 += truth in [c.name for c in named.object[:2]]
        white_over += top == "white" and truth != "white"
        confusion.setdefault(truth, Counter())[top] += 1
        predicted[top] += 1
        methods[named.method] += 1
    per_class = {c: {"n": sum(row.values()), "correct": row[c], "accuracy": round(row[c] / sum(row.values()), 4)}
                 for c, row in sorted(confusion.items())}
    return {"target": target if isinstance(source, Workspace) else None, "vocabulary": vocabulary, "namer": namer,
            "items": items, "usable": usable, "unusable": items - usable - unreadable, "unreadable": unreadable,
            "correct": correct, "accuracy": round(correct / usable, 4) if usable else None,
            "top2_accuracy": round(top2 / usable, 4) if usable else None,
            "per_class": per_class, "confusion": {t: dict(row) for t, row in sorted(confusion.items())},
            "predicted": dict(predicted), "white_over_non_white": white_over, "methods": dict(methods)}

