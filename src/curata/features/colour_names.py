"""The zero-label colour namer (nothing trained): the colours of the object, and the backdrop apart.

`name_colours(image)` is the one function that names an image's colours for `curata describe`, the
`Describer` and POST /v1/colours, so that they cannot disagree: it splits object from background
(`curata.features.foreground`), takes the k-means palette of the object's pixels only
(`curata.features.palette.extract_palette`, CIEDE2000 names), and names the background on its own:
"black on white" rather than "mostly white".

The names are read from a fixed-length vector (`object_palette_vector`: the object's palette, the backdrop's
colour and share, the split method), the vector the cached `object_palette` feature stores
(`curata.features.object_palette`): naming a decoded image and naming its cached vector go through the same
`read_object_palette`, float32 rounding included, so they give the same names. The cached `palette` feature
(whole image) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curata.features.colornames import Vocabulary, lab_to_rgb, name_lab_colors, rgb_to_hex
from curata.features.foreground import Foreground, Method, split_foreground, whole_image
from curata.features.palette import describe_palette, extract_palette, merge_shares

SECOND_COLOUR_SHARE = 0.3  # a second object colour joins the phrase from this share of the object up
# Dark neutrals are black (basic vocabulary): in a photo exposed for a white backdrop black materials, which
# reflect 3-6 % of the light, come out at L* 20-30, which CIEDE2000 to the vocabulary's black (L* 0-11) and
# gray (L* 34+) often calls gray.
NEUTRAL_CHROMA = 12.0  # C*ab below this a colour is a neutral
BLACK_BELOW = 30.0  # L*
# Gray ranks at half its share in an object cut from its backdrop: in a product photo it is mostly shading,
# shadows, metal and glass, rarely the colour a seller names. Shares are reported as they are; only the order
# uses the weight. A whole picture (no backdrop found) is ranked by plain shares.
GRAY_RANK_WEIGHT = 0.5

# The object palette vector: k entries of [L*, a*, b*, share] (the object's palette, as `extract_palette`), then
# [background L*, a*, b*, background share, method code, object share]. The background colour is meaningful for
# method "border" only (an alpha backdrop is transparent, a whole image has none).
OBJECT_PALETTE_EXTRA = 6
METHOD_CODES: dict[str, int] = {"whole_image": 0, "border": 1, "alpha": 2}
_METHODS = {code: method for method, code in METHOD_CODES.items()}
# What a cached vector says when the whole image was named: the split's exact reason is text, not cached.
WHOLE_IMAGE_NOTE = "no backdrop to remove (none found, or the split left too little): named the whole image"


@dataclass(frozen=True)
class NamedColour:
    name: str
    share: float  # of the object (object colours) or of the whole image (the background)
    hex: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share, "hex": self.hex}


@dataclass(frozen=True)
class ColourNames:
    """What `name_colours` says about one image.

    `object`: colour names of the object with their share of the object (sum 1), largest first (in a
    cut-out object gray ranks at GRAY_RANK_WEIGHT of its share, see above);
    `background`: the backdrop's name and its share of the image, or None (transparent, or no backdrop:
    the whole image was named, `note` says why); `phrase`: e.g. "black on white"; `palette`: the
    object's k-means palette (`describe_palette` entries); `method`: alpha, border or whole_image.
    """

    object: list[NamedColour]
    background: NamedColour | None
    phrase: str
    method: Method
    note: str | None = None
    palette: list[dict[str, Any]] = field(default_factory=list)
    object_share: float = 1.0

    @property
    def top(self) -> str | None:
        """The object's dominant colour name (None for an empty palette)."""
        return self.object[0].name if self.object else None

    def to_dict(self) -> dict[str, Any]:
        return {"object": [c.to_dict() for c in self.object],
                "background": self.background.to_dict() if self.background else None,
                "phrase": self.phrase, "method": self.method, "note": self.note,
                "object_share": self.object_share}


def _phrase(names: list[NamedColour], background: NamedColour | None) -> str:
    words = [names[0].name] if names else []
    if len(names) > 1 and names[1].share >= SECOND_COLOUR_SHARE:
        words.append(names[1].name)
    text = " and ".join(words)
    return f"{text} on {background.name}" if text and background is not None else text


def basic_names(lab: np.ndarray) -> list[str]:
    """The namer's basic name of each L*a*b* colour of an (n, 3) array: the nearest vocabulary term in
    CIEDE2000, but "black" for a neutral darker than BLACK_BELOW."""
    lab = np.asarray(lab, float).reshape(-1, 3)
    names = [n for n, _ in name_lab_colors(lab, "basic")]
    dark = (lab[:, 0] < BLACK_BELOW) & (np.hypot(lab[:, 1], lab[:, 2]) < NEUTRAL_CHROMA)
    return ["black" if d else n for n, d in zip(names, dark, strict=True)]


def _named(palette: list[dict[str, Any]], vocabulary: Vocabulary, object_only: bool) -> list[NamedColour]:
    """Palette entries merged by name, ranked by share (gray at GRAY_RANK_WEIGHT in the basic vocabulary when
    the backdrop was removed), ties by name; the hex of each name's largest entry."""
    first_hex: dict[str, str] = {}
    for entry in palette:  # largest first, so the first hex seen is the name's main one
        first_hex.setdefault(entry[vocabulary], entry["hex"])
    merged = rank_colours(merge_shares((p[vocabulary], p["share"]) for p in palette),
                          cut_out=vocabulary == "basic" and object_only)
    return [NamedColour(name, round(share, 4), first_hex[name]) for name, share in merged]


def rank_colours(named: list[tuple[str, float]], cut_out: bool) -> list[tuple[str, float]]:
    """(name, share) pairs in the namer's order: by share, ties by name; in a cut-out object (basic names) gray
    ranks at GRAY_RANK_WEIGHT of its share (shading, shadows, metal), its share reported as it is. Every reader
    of object colours (cached vectors, cluster names) ranks through this one rule."""
    weight = {"gray": GRAY_RANK_WEIGHT} if cut_out else {}
    return sorted(named, key=lambda item: (-item[1] * weight.get(item[0], 1.0), item[0]))


def object_palette_k(vector: np.ndarray) -> int:
    """The k of an object palette vector (4k + OBJECT_PALETTE_EXTRA values)."""
    size = np.asarray(vector).size
    k, rest = divmod(size - OBJECT_PALETTE_EXTRA, 4)
    if rest or k < 1:
        raise ValueError(f"an object palette vector has 4k + {OBJECT_PALETTE_EXTRA} values, got {size}")
    return k


def encode_split(split: Foreground, k: int = 5) -> np.ndarray:
    """The object palette vector (float32, see OBJECT_PALETTE_EXTRA) of a foreground split."""
    out = np.zeros(4 * k + OBJECT_PALETTE_EXTRA, np.float32)
    out[:4 * k] = extract_palette(split.object_pixels, k)
    if split.background_lab is not None:
        out[4 * k:4 * k + 3] = split.background_lab
    out[4 * k + 3] = split.background_share
    out[4 * k + 4] = METHOD_CODES[split.method]
    out[4 * k + 5] = split.mask.mean()
    return out


def object_palette_vector(image: np.ndarray, k: int = 5, *, foreground: bool = True) -> np.ndarray:
    """The object palette vector of an RGB(A) uint8 image: what `object_palette` caches, and what
    `name_colours` names."""
    return encode_split(split_foreground(image) if foreground else whole_image(image), k)


def read_object_palette(vector: np.ndarray, vocabulary: Vocabulary = "basic", *,
                        note: str | None = None) -> ColourNames:
    """The colour names of an object palette vector (`object_palette_vector`, or the cached `object_palette`
    feature). `note` replaces the generic WHOLE_IMAGE_NOTE when the caller knows the split's reason. A vector of
    zeros (a missing row) names nothing."""
    if vocabulary not in ("basic", "css"):
        raise ValueError(f"unknown colour vocabulary '{vocabulary}': use basic or css")
    v = np.asarray(vector, np.float32).ravel()
    k = object_palette_k(v)
    extra = v[4 * k:].astype(np.float64)
    method: Method = _METHODS.get(round(float(extra[4])), "whole_image")  # type: ignore[assignment]
    # float32 -> float64 exactly as the cache reads it back: the same names from an image and from its cache.
    palette = describe_palette(v[:4 * k].astype(np.float64), k)
    if palette:
        for entry, name in zip(palette, basic_names(np.array([p["lab"] for p in palette])), strict=True):
            entry["basic"] = name
    names = _named(palette, vocabulary, method != "whole_image")
    background = None
    if method == "border":
        lab = extra[None, :3]
        name = basic_names(lab)[0] if vocabulary == "basic" else name_lab_colors(lab, vocabulary)[0][0]
        background = NamedColour(name, round(float(extra[3]), 4), rgb_to_hex(lab_to_rgb(lab)[0]))
    if method == "whole_image" and note is None and palette:
        note = WHOLE_IMAGE_NOTE
    return ColourNames(names, background, _phrase(names, background), method, note, palette,
                       round(float(extra[5]), 4))


def name_colours(image: np.ndarray, *, k: int = 5, vocabulary: Vocabulary = "basic",
                 foreground: bool = True) -> ColourNames:
    """Name the colours of the object in an RGB(A) uint8 image, and its background apart.

    `foreground=False` names the whole picture, backdrop included (for comparisons). The same image, k and
    vocabulary always give the same answer: every caller goes through here, or reads the cached
    `object_palette` vector with `read_object_palette`, which this calls too.
    """
    if vocabulary not in ("basic", "css"):
        raise ValueError(f"unknown colour vocabulary '{vocabulary}': use basic or css")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    split = split_foreground(image) if foreground else whole_image(image)
    return read_object_palette(encode_split(split, int(k)), vocabulary, note=split.note)
