"""One plain sentence from the keywords: colours first, then what it is, then its most telling traits."""

from __future__ import annotations

from collections.abc import Sequence

from curata.describe.keywords import Keyword, tag_trait

ARTICLE_VOWELS = tuple("aeiou")
# Traits whose name adds nothing after the value in a sentence ("teal color", "voronoi algorithm").
SILENT_TRAITS = {"algorithm", "color", "colour", "label", "type", "category", "collection"}


def trait_phrase(keyword: Keyword) -> str:
    """NFT1000-style "{value} {trait}" for a `trait=value` tag ("medium stroke", "axe right arm")."""
    trait = tag_trait(keyword.tag) if keyword.tag else None
    if not trait:
        return keyword.keyword
    trait = trait.replace("_", " ").strip()
    if trait.lower() in SILENT_TRAITS or trait.lower() in keyword.keyword.lower():
        return keyword.keyword
    return f"{keyword.keyword} {trait}"


def colour_phrase(colours: Sequence[tuple[str, float]]) -> str:
    """`[("teal", .55), ("black", .3)]` -> "mostly teal and black"; one colour over 80 % -> "teal"."""
    named = [(n, s) for n, s in colours if s >= 0.15][:2] or list(colours[:1])
    if not named:
        return ""
    if len(named) == 1:
        return named[0][0] if named[0][1] >= 0.8 else f"mostly {named[0][0]}"
    return f"mostly {named[0][0]} and {named[1][0]}"


def make_sentence(colours: Sequence[tuple[str, float]], subject: str | None, keywords: Sequence[Keyword],
                  n_traits: int = 3) -> str:
    """E.g. "A mostly teal and black reaction-diffusion with dense density, radial symmetry and thin stroke."."""
    noun = subject or "image"
    words = " ".join(w for w in (colour_phrase(colours), noun) if w)
    article = "An" if words[:1].lower().startswith(ARTICLE_VOWELS) else "A"
    taken = {noun.lower(), *noun.lower().split(), *(c for c, _ in colours)}
    traits = []
    for kw in keywords:
        if kw.source in ("colour", "collection") or kw.keyword.lower() in taken:
            continue
        taken.add(kw.keyword.lower())
        traits.append(trait_phrase(kw))
        if len(traits) == n_traits:
            break
    if not traits:
        return f"{article} {words}."
    listed = traits[0] if len(traits) == 1 else ", ".join(traits[:-1]) + f" and {traits[-1]}"
    return f"{article} {words} with {listed}."
