"""Named colour palettes for the built-in demo collection.

Every palette's first colour is the background that the renderers paint first and keep as the
majority of the canvas, so `dominant` (the basic colour name of that background) is what a colour
classifier should read off any image drawn with the palette. The backgrounds are chosen close to the
prototype of their basic colour, and the palettes together cover all twelve basic colour names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASIC_COLOURS = (
    "black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "teal",
)


@dataclass(frozen=True)
class Palette:
    """A background colour followed by ink colours, each with the basic colour name it reads as."""

    name: str
    colors: tuple[str, ...]  # hex "#rrggbb"; colors[0] is the background
    color_names: tuple[str, ...]  # basic colour name of each entry in `colors`

    def __post_init__(self) -> None:
        if len(self.colors) != len(self.color_names) or len(self.colors) < 2:
            raise ValueError(f"palette {self.name!r} needs a background, at least one ink, and a name each")
        unknown = set(self.color_names) - set(BASIC_COLOURS)
        if unknown:
            raise ValueError(f"palette {self.name!r} uses unknown basic colours {sorted(unknown)}")

    @property
    def dominant(self) -> str:
        """The basic colour that covers the largest share of any image drawn with this palette."""
        return self.color_names[0]

    @property
    def n_inks(self) -> int:
        return len(self.colors) - 1

    def rgb_array(self) -> np.ndarray:
        """(len(colors), 3) uint8 lookup table: index 0 background, 1.. inks."""
        return np.array([hex_to_rgb(c) for c in self.colors], dtype=np.uint8)


def hex_to_rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _palette(name: str, *entries: tuple[str, str]) -> Palette:
    return Palette(name, tuple(hex_ for hex_, _ in entries), tuple(basic for _, basic in entries))


# Inks are ordered by how much they are used: renderers favour the first ink (see algorithms._ink_weights).
PALETTES: tuple[Palette, ...] = (
    _palette("ink wash", ("#f4f1ea", "white"), ("#1b1b1b", "black"), ("#6b6b6b", "gray"), ("#b03a2e", "red")),
    _palette("midnight neon", ("#0b0b12", "black"), ("#ff3caa", "pink"), ("#21d4d4", "teal"),
             ("#f5e663", "yellow")),
    _palette("obsidian gold", ("#111111", "black"), ("#e0a31c", "orange"), ("#f2e8cf", "white"),
             ("#7a5230", "brown")),
    _palette("ember", ("#c0392b", "red"), ("#1a0f0f", "black"), ("#f39c12", "orange"), ("#f7dc6f", "yellow")),
    _palette("tangerine", ("#f07c1a", "orange"), ("#4b1d6b", "purple"), ("#fff3e0", "white"),
             ("#c81d25", "red")),
    _palette("lemonade", ("#f4d03f", "yellow"), ("#1e3a8a", "blue"), ("#e84a7f", "pink"),
             ("#2a2a2a", "black")),
    _palette("forest floor", ("#2e7d32", "green"), ("#f1f8e9", "white"), ("#5d4037", "brown"),
             ("#fff176", "yellow")),
    _palette("cobalt", ("#1f4bb8", "blue"), ("#f5f5f5", "white"), ("#ffb703", "orange"),
             ("#111111", "black")),
    _palette("ultraviolet", ("#5e2a8c", "purple"), ("#ff77c8", "pink"), ("#ffd166", "yellow"),
             ("#16101c", "black")),
    _palette("bubblegum", ("#f7a1c4", "pink"), ("#ffffff", "white"), ("#6a4c93", "purple"),
             ("#1b998b", "teal")),
    _palette("cocoa", ("#7b4a24", "brown"), ("#fbf3e4", "white"), ("#e8734a", "orange"),
             ("#1a120b", "black")),
    _palette("concrete", ("#8d8d8d", "gray"), ("#1c1c1c", "black"), ("#ededed", "white"), ("#e63946", "red")),
    _palette("teal night", ("#0f7173", "teal"), ("#0b1d26", "black"), ("#f6d55c", "yellow"),
             ("#e9f5f2", "white")),
)

PALETTES_BY_NAME: dict[str, Palette] = {p.name: p for p in PALETTES}
