"""Captions to train and evaluate the joint text-image space, and NFT1000-style attribute masking.

Where the captions of an item come from (``source="auto"``):

1. NFT metadata (the ``attributes`` column): the NFT1000 template
   ``A picture of {name}, containing {value} {trait_type}, ...`` built by `curata.ingest.nft`, so the
   attributes are known one by one and can be masked;
2. otherwise the item's ``captions`` (human captions, e.g. COCO's five per image; a table source
   with no caption column stores its text there);
3. otherwise its ``text``; and if it has none, its tags as attributes.

``source="attributes"`` builds attribute captions from the tags (``trait=value`` or bare values)
and the label where there is no NFT metadata and no human captions beyond the item's one text
(CryptoPunks: type + accessories; COCO's five captions are kept); ``source="text"`` never uses
attributes.

Masking (NFT1000's dynamic attribute masking) drops each attribute with probability ``p``. Drawing a
fresh mask every epoch would need the text encoder every epoch (far too slow on a CPU), so a bounded
set of variants is drawn once per item: the full caption plus ``n_variants`` masked ones, and the
trainer samples one of them per epoch. `masked_variants` is deterministic for a (seed, item id).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curata.ingest.nft import ABSENT, nft1000_caption, trait_value

SOURCES = ("auto", "attributes", "text")


@dataclass
class ItemCaptions:
    """The captions of one item: `captions` are the full ones (queries in evaluation); `attributes`
    (trait, value) the visible attributes they were built from, empty for free text."""

    id: str
    captions: list[str]
    name: str = ""
    attributes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def maskable(self) -> bool:
        return len(self.attributes) > 1


def _as_list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    return [str(v) for v in list(value) if v is not None and str(v).strip()]


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _visible(attributes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attributes that appear in an NFT1000 caption (absent values such as `cape: none` do not)."""
    return [a for a in attributes if trait_value(a.get("value")).lower() not in ABSENT]


def _json_attributes(row: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        raw = json.loads(row.get("attributes") or "[]")
    except ValueError:
        return []
    return [a for a in raw if isinstance(a, dict) and "value" in a] if isinstance(raw, list) else []


def _tag_attributes(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Tags as attributes (`trait=value`, or a bare value), the label first when it is not a tag."""
    out: list[dict[str, Any]] = []
    label = row.get("label")
    tags = _as_list(row.get("tags"))
    if isinstance(label, str) and label.strip() and label not in tags:
        out.append({"trait_type": "", "value": label})
    for tag in tags:
        trait, _, value = tag.partition("=") if "=" in tag else ("", "", tag)
        out.append({"trait_type": trait, "value": value})
    return out


def _name(row: dict[str, Any]) -> str:
    return str(_meta(row).get("name") or row.get("collection") or "").strip()


def item_captions(items: pd.DataFrame, source: str = "auto") -> list[ItemCaptions]:
    """The captions of every item, in row order (see the module docstring for the rules)."""
    if source not in SOURCES:
        raise ValueError(f"unknown caption source {source!r}; choose from {', '.join(SOURCES)}")
    out = []
    for row in items.to_dict("records"):
        attributes = [] if source == "text" else _visible(_json_attributes(row))
        if not attributes and source == "attributes" and len(_as_list(row.get("captions"))) <= 1:
            attributes = _visible(_tag_attributes(row))
        name = _name(row)
        if attributes:
            out.append(ItemCaptions(row["id"], [nft1000_caption(name, attributes)], name, attributes))
            continue
        captions = _as_list(row.get("captions"))
        text = str(row.get("text") or "").strip()
        if not captions and text:
            captions = [text]
        if not captions and source != "text":
            attributes = _visible(_tag_attributes(row))
            if attributes:
                captions = [nft1000_caption(name, attributes)]
        out.append(ItemCaptions(row["id"], list(dict.fromkeys(captions)), name, attributes))
    return out


def masked_variants(item: ItemCaptions, p: float, n_variants: int = 4, seed: int = 0) -> list[str]:
    """The captions training samples from: the full caption(s), plus up to `n_variants` distinct
    masked ones where each attribute was dropped with probability `p` (at least one is kept).

    Free-text items (and p == 0) only have their own captions. Deterministic per (seed, item id).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"mask probability must be in [0, 1), got {p}")
    variants = list(item.captions)
    if p == 0 or not item.maskable or n_variants <= 0:
        return variants
    rng = np.random.default_rng([seed, zlib.crc32(item.id.encode("utf-8"))])
    n = len(item.attributes)
    for _ in range(n_variants * 3):  # a few extra draws so duplicates still leave n_variants distinct
        keep = rng.random(n) >= p
        if not keep.any():
            keep[rng.integers(n)] = True
        caption = nft1000_caption(item.name, [a for a, k in zip(item.attributes, keep, strict=True) if k])
        if caption not in variants:
            variants.append(caption)
        if len(variants) >= len(item.captions) + n_variants:
            break
    return variants


# -------------------------------------------------------------------------------------------------- partial queries


@dataclass
class PartialQuery:
    """A query naming `size` attributes of one token (`owner`, a row of the captions list it was built
    from), in the NFT1000 template. `relevant`: rows of every item of the same collection name holding
    all those attributes (the owner included), the hits of the "any token with those attributes" score."""

    text: str
    owner: int
    size: int
    relevant: np.ndarray


def _attribute_key(attribute: dict[str, Any]) -> tuple[str, str]:
    return (str(attribute.get("trait_type") or "").strip().lower(), trait_value(attribute.get("value")).strip().lower())


def collection_name(name: str) -> str:
    """The token name without its number (`Filthy Peasant #12` -> `Filthy Peasant`): a partial query names
    the collection, never the token itself."""
    return re.sub(r"\s*#\s*\d+\s*$", "", name or "").strip()


def partial_queries(captions: list[ItemCaptions], sizes: tuple[int, ...] = (1, 2, 3), max_per_size: int | None = 500,
                    seed: int = 0) -> list[PartialQuery]:
    """Queries naming 1, 2, 3 ... attributes of a token, deterministic for (captions, sizes, seed).

    For each size, the tokens with more attributes than `size` (so the query is really partial) are
    eligible; at most `max_per_size` of them (a seeded sample) get one query each, naming `size` of
    their attributes drawn at random, in their caption order: ``A picture of {collection}, containing
    {value} {trait}, ...``. Items without attributes (free-text captions) yield none."""
    keys = [frozenset(_attribute_key(a) for a in c.attributes) for c in captions]
    names = [collection_name(c.name) for c in captions]
    holders: dict[tuple[str, tuple[str, str]], set[int]] = {}
    for row, (name, key) in enumerate(zip(names, keys, strict=True)):
        for attribute in key:
            holders.setdefault((name, attribute), set()).add(row)
    out: list[PartialQuery] = []
    for size in sizes:
        eligible = [i for i, c in enumerate(captions) if len(c.attributes) > size]
        rng = np.random.default_rng([seed, size])
        if max_per_size is not None and len(eligible) > max_per_size:
            eligible = sorted(rng.choice(eligible, max_per_size, replace=False).tolist())
        for i in eligible:
            item = captions[i]
            pick = sorted(rng.choice(len(item.attributes), size, replace=False).tolist())
            attributes = [item.attributes[j] for j in pick]
            relevant = set.intersection(*[holders[(names[i], _attribute_key(a))] for a in attributes])
            out.append(PartialQuery(nft1000_caption(names[i], attributes), i, size,
                                    np.array(sorted(relevant), dtype=np.int64)))
    return out
