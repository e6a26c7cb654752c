"""One plain sentence from the keywords.

Items with `trait=value` tags (generative art, NFTs) get colours first, then what it is, then their most
telling traits ("A mostly teal and black reaction-diffusion with dense density and radial symmetry.").
Photos and paintings, whose keywords include content words (`curata.describe.content`), get what they
show first and colours last ("A picture of a dog and a sofa, mostly brown and white.").
"""

from __future__ import annotations

from collections.abc import Sequence

from curata.describe.content import SOURCE as CONTENT_SOURCE
from curata.describe.content import top_words
from curata.describe.keywords import Keyword, tag_trait

ARTICLE_VOWELS = tuple("aeiou")
# Traits whose name adds nothing after the value in a sentence ("teal color", "voronoi algorithm").
SILENT_TRAITS = {"algorithm", "color", "colour", "label", "type", "category", "collection"}
NOT_CONTENT = {"colour", "collection", "text"}  # sources whose words are not what the picture shows


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


def with_article(word: str) -> str:
    """"dog" -> "a dog", "umbrella" -> "an umbrella"; a plural-looking word ("skis") takes none."""
    if word.endswith("s") and not word.endswith("ss"):
        return word
    return f"{'an' if word[:1].lower().startswith(ARTICLE_VOWELS) else 'a'} {word}"


def listed(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + f" and {phrases[-1]}"


def content_sentence(colours: Sequence[tuple[str, float]], subject: str | None, keywords: Sequence[Keyword],
                     n_words: int = 2) -> str | None:
    """"A picture of a dog and a sofa, mostly brown and white." (with a confident collection subject:
    "A landscape showing a boat and a lakeside, mostly blue."); None when no keyword says what it shows."""
    colour_names = {c.lower() for c, _ in colours}
    shown = [kw for kw in keywords
             if set(kw.source.split("+")) - NOT_CONTENT and not (kw.tag and tag_trait(kw.tag))
             and kw.keyword.lower() not in colour_names and kw.keyword.lower() != (subject or "").lower()]
    words = top_words(shown, n_words)
    if not words:
        return None
    if subject:
        head = f"{'An' if subject[:1].lower().startswith(ARTICLE_VOWELS) else 'A'} {subject} showing"
    else:
        head = "A picture of"
    colour = colour_phrase(colours)
    if colour and not colour.startswith("mostly"):
        colour = f"in {colour}"  # one colour covers the picture: "..., in blue."
    return f"{head} {listed([with_article(w) for w in words])}" + (f", {colour}." if colour else ".")


def make_sentence(colours: Sequence[tuple[str, float]], subject: str | None, keywords: Sequence[Keyword],
                  n_traits: int = 3, content: bool | None = None) -> str:
    """E.g. "A mostly teal and black reaction-diffusion with dense density, radial symmetry and thin stroke."
    for trait-tagged items; "A picture of a dog and a sofa, mostly brown and white." for photos and
    paintings: when `content` (the describer has a content-word source; None: when a keyword comes from
    one) and no keyword is a trait."""
    if content is None:
        content = any(CONTENT_SOURCE in kw.source.split("+") for kw in keywords)
    if content and not any(kw.tag and tag_trait(kw.tag) for kw in keywords):
        sentence = content_sentence(colours, subject, keywords)
        if sentence:
            return sentence
    noun = subject or "image"
    words = " ".join(w for w in (colour_phrase(colours), noun) if w)
    article = "An" if words[:1].lower().startswith(ARTICLE_VOWELS) else "A"
    taken = {noun.lower(), *noun.lower().split(), *(c for c, _ in colours)}
    traits = []
    for kw in keywords:
        if kw.source in ("colour", "collection", CONTENT_SOURCE) or kw.keyword.lower() in taken:
            continue
        taken.add(kw.keyword.lower())
        traits.append(trait_phrase(kw))
        if len(traits) == n_traits:
            break
    if not traits:
        return f"{article} {words}."
    return f"{article} {words} with {listed(traits)}."
