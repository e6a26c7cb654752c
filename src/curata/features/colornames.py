"""Colour naming: sRGB <-> CIE L*a*b* (D65) and nearest-name lookup in CIEDE2000.

Two vocabularies: the 12 basic colour terms of the art dataset (each with several reference points,
so that dark navy and sky blue are both "blue") and the 148 CSS Color Module Level 4 named colours.
Conversions and CIEDE2000 come from scikit-image (sRGB standard, D65 white), not OpenCV's 8-bit Lab,
because CIEDE2000 is defined on true L*a*b* values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from skimage import color as skcolor

Vocabulary = Literal["basic", "css"]

# The 12 basic colour terms used by the art dataset's colour labels. Several reference points per
# term: names cover regions of colour space, and a single prototype (e.g. pure blue) would hand
# navy to "black" and sky blue to "gray".
BASIC_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0), (28, 28, 28)),
    "white": ((255, 255, 255), (242, 242, 238)),
    "gray": ((128, 128, 128), (80, 80, 80), (180, 180, 180), (112, 128, 144)),
    "red": ((255, 0, 0), (200, 16, 32), (139, 0, 0), (220, 60, 60), (178, 34, 34)),
    "orange": ((255, 165, 0), (255, 128, 0), (230, 110, 40), (255, 140, 70)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 230, 140), (255, 240, 90), (218, 190, 30)),
    "green": (
        (0, 128, 0), (0, 255, 0), (34, 139, 34), (144, 238, 144), (107, 142, 35), (0, 80, 30), (60, 179, 113),
    ),
    "blue": (
        (0, 0, 255), (0, 0, 139), (25, 25, 112), (30, 144, 255), (135, 206, 235), (70, 130, 180),
        (65, 105, 225),
    ),
    "purple": ((128, 0, 128), (148, 0, 211), (186, 85, 211), (75, 0, 130), (147, 112, 219), (102, 51, 153)),
    "pink": (
        (255, 192, 203), (255, 105, 180), (255, 20, 147), (219, 112, 147), (255, 0, 255), (250, 128, 160),
    ),
    "brown": (
        (165, 42, 42), (139, 69, 19), (160, 82, 45), (101, 67, 33), (210, 180, 140), (120, 80, 50),
        (70, 45, 25),
    ),
    "teal": (
        (0, 128, 128), (0, 150, 136), (64, 224, 208), (0, 206, 209), (32, 178, 170), (0, 255, 255),
        (0, 90, 90),
    ),
}  # fmt: skip

# CSS Color Module Level 4 named colours (148 names, including the grey/gray spellings and the
# aqua/cyan, fuchsia/magenta aliases).
CSS_COLORS: dict[str, str] = {
    "aliceblue": "#f0f8ff", "antiquewhite": "#faebd7", "aqua": "#00ffff", "aquamarine": "#7fffd4",
    "azure": "#f0ffff", "beige": "#f5f5dc", "bisque": "#ffe4c4", "black": "#000000",
    "blanchedalmond": "#ffebcd", "blue": "#0000ff", "blueviolet": "#8a2be2", "brown": "#a52a2a",
    "burlywood": "#deb887", "cadetblue": "#5f9ea0", "chartreuse": "#7fff00", "chocolate": "#d2691e",
    "coral": "#ff7f50", "cornflowerblue": "#6495ed", "cornsilk": "#fff8dc", "crimson": "#dc143c",
    "cyan": "#00ffff", "darkblue": "#00008b", "darkcyan": "#008b8b", "darkgoldenrod": "#b8860b",
    "darkgray": "#a9a9a9", "darkgreen": "#006400", "darkgrey": "#a9a9a9", "darkkhaki": "#bdb76b",
    "darkmagenta": "#8b008b", "darkolivegreen": "#556b2f", "darkorange": "#ff8c00", "darkorchid": "#9932cc",
    "darkred": "#8b0000", "darksalmon": "#e9967a", "darkseagreen": "#8fbc8f", "darkslateblue": "#483d8b",
    "darkslategray": "#2f4f4f", "darkslategrey": "#2f4f4f", "darkturquoise": "#00ced1",
    "darkviolet": "#9400d3", "deeppink": "#ff1493", "deepskyblue": "#00bfff", "dimgray": "#696969",
    "dimgrey": "#696969", "dodgerblue": "#1e90ff", "firebrick": "#b22222", "floralwhite": "#fffaf0",
    "forestgreen": "#228b22", "fuchsia": "#ff00ff", "gainsboro": "#dcdcdc", "ghostwhite": "#f8f8ff",
    "gold": "#ffd700", "goldenrod": "#daa520", "gray": "#808080", "green": "#008000",
    "greenyellow": "#adff2f", "grey": "#808080", "honeydew": "#f0fff0", "hotpink": "#ff69b4",
    "indianred": "#cd5c5c", "indigo": "#4b0082", "ivory": "#fffff0", "khaki": "#f0e68c",
    "lavender": "#e6e6fa", "lavenderblush": "#fff0f5", "lawngreen": "#7cfc00", "lemonchiffon": "#fffacd",
    "lightblue": "#add8e6", "lightcoral": "#f08080", "lightcyan": "#e0ffff",
    "lightgoldenrodyellow": "#fafad2", "lightgray": "#d3d3d3", "lightgreen": "#90ee90",
    "lightgrey": "#d3d3d3", "lightpink": "#ffb6c1", "lightsalmon": "#ffa07a", "lightseagreen": "#20b2aa",
    "lightskyblue": "#87cefa", "lightslategray": "#778899", "lightslategrey": "#778899",
    "lightsteelblue": "#b0c4de", "lightyellow": "#ffffe0", "lime": "#00ff00", "limegreen": "#32cd32",
    "linen": "#faf0e6", "magenta": "#ff00ff", "maroon": "#800000", "mediumaquamarine": "#66cdaa",
    "mediumblue": "#0000cd", "mediumorchid": "#ba55d3", "mediumpurple": "#9370db",
    "mediumseagreen": "#3cb371", "mediumslateblue": "#7b68ee", "mediumspringgreen": "#00fa9a",
    "mediumturquoise": "#48d1cc", "mediumvioletred": "#c71585", "midnightblue": "#191970",
    "mintcream": "#f5fffa", "mistyrose": "#ffe4e1", "moccasin": "#ffe4b5", "navajowhite": "#ffdead",
    "navy": "#000080", "oldlace": "#fdf5e6", "olive": "#808000", "olivedrab": "#6b8e23",
    "orange": "#ffa500", "orangered": "#ff4500", "orchid": "#da70d6", "palegoldenrod": "#eee8aa",
    "palegreen": "#98fb98", "paleturquoise": "#afeeee", "palevioletred": "#db7093",
    "papayawhip": "#ffefd5", "peachpuff": "#ffdab9", "peru": "#cd853f", "pink": "#ffc0cb",
    "plum": "#dda0dd", "powderblue": "#b0e0e6", "purple": "#800080", "rebeccapurple": "#663399",
    "red": "#ff0000", "rosybrown": "#bc8f8f", "royalblue": "#4169e1", "saddlebrown": "#8b4513",
    "salmon": "#fa8072", "sandybrown": "#f4a460", "seagreen": "#2e8b57", "seashell": "#fff5ee",
    "sienna": "#a0522d", "silver": "#c0c0c0", "skyblue": "#87ceeb", "slateblue": "#6a5acd",
    "slategray": "#708090", "slategrey": "#708090", "snow": "#fffafa", "springgreen": "#00ff7f",
    "steelblue": "#4682b4", "tan": "#d2b48c", "teal": "#008080", "thistle": "#d8bfd8",
    "tomato": "#ff6347", "turquoise": "#40e0d0", "violet": "#ee82ee", "wheat": "#f5deb3",
    "white": "#ffffff", "whitesmoke": "#f5f5f5", "yellow": "#ffff00", "yellowgreen": "#9acd32",
}  # fmt: skip

# Aliases that name the same sRGB value; naming returns the first spelling, so these are left out
# of the lookup table (the "gray" spellings, "cyan" and "magenta" are returned instead).
CSS_ALIASES: frozenset[str] = frozenset(
    {"aqua", "fuchsia", "grey", "darkgrey", "darkslategrey", "dimgrey", "lightgrey", "lightslategrey",
     "slategrey"}
)


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b)."""
    v = value.lstrip("#")
    if len(v) != 6:
        raise ValueError(f"expected #rrggbb, got {value!r}")
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def rgb_to_hex(rgb: tuple[int, int, int] | np.ndarray) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB -> CIE L*a*b* (D65, 2° observer), over any leading shape (..., 3); scikit-image does the maths.

    uint8 input is read as 0..255; float input as 0..1. Returns float64 with L in 0..100.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) colours, got shape {rgb.shape}")
    unit = rgb / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    return skcolor.rgb2lab(unit, illuminant="D65", observer="2")


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) -> sRGB uint8 (..., 3); out-of-gamut colours are clipped."""
    srgb = skcolor.lab2rgb(np.asarray(lab, dtype=np.float64), illuminant="D65", observer="2")
    return np.clip(np.rint(srgb * 255), 0, 255).astype(np.uint8)


def delta_e_ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1), broadcasting over leading dimensions."""
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64))
    return skcolor.deltaE_ciede2000(lab1, lab2)


@lru_cache(maxsize=2)
def _reference(vocabulary: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, Lab points) of a vocabulary; a name may own several points."""
    if vocabulary == "basic":
        pairs = [(name, rgb) for name, points in BASIC_COLORS.items() for rgb in points]
    elif vocabulary == "css":
        pairs = [(name, hex_to_rgb(h)) for name, h in CSS_COLORS.items() if name not in CSS_ALIASES]
    else:
        raise ValueError(f"unknown colour vocabulary {vocabulary!r}; use 'basic' or 'css'")
    names = tuple(n for n, _ in pairs)
    lab = rgb_to_lab(np.array([p for _, p in pairs], dtype=np.uint8))
    lab.setflags(write=False)
    return names, lab


def name_lab_colors(lab: np.ndarray, vocabulary: Vocabulary = "basic") -> list[tuple[str, float]]:
    """Nearest vocabulary name (and its CIEDE2000 distance) for each L*a*b* colour of an (n, 3) array."""
    lab = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
    names, ref = _reference(vocabulary)
    out: list[tuple[str, float]] = []
    # Chunks bound the (n, m) distance matrix when naming many pixels at once.
    for start in range(0, len(lab), 4096):
        d = delta_e_ciede2000(lab[start : start + 4096, None, :], ref[None, :, :])
        idx = d.argmin(axis=1)
        out.extend((names[i], float(d[j, i])) for j, i in enumerate(idx))
    return out


def name_colors(rgb: np.ndarray, vocabulary: Vocabulary = "basic") -> list[tuple[str, float]]:
    """Nearest colour name for each sRGB colour of an (n, 3) array: [(name, CIEDE2000 distance)].

    Values are 8-bit levels 0..255 whatever the dtype (floats are rounded; unlike `rgb_to_lab`, 0..1
    floats are not recognised). `vocabulary`: "basic" (the 12 basic terms) or "css" (the CSS named
    colours, aliases collapsed).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
            raise ValueError("name_colors expects 8-bit sRGB values in 0..255")
        rgb = np.rint(rgb).astype(np.uint8)
    return name_lab_colors(rgb_to_lab(rgb.reshape(-1, 3)), vocabulary)
