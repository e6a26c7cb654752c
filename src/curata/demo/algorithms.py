"""Generative-art renderers for the built-in demo collection, one per algorithm family.

Every renderer draws into an *index canvas* (uint8, 0 = background, k = the palette's k-th colour) and
maps it to RGB only at the end. That keeps colours exact, makes ink coverage cheap to measure, and lets
the shared traits mean the same thing in every family:

- density: the share of the canvas covered by ink (`INK_COVERAGE`). Renderers draw in batches, or pick
  thresholds, until that share is reached (the cellular automaton and the L-systems steer it through
  their start row and rewriting depth). It stays below one half, so the background, and with it the
  palette's dominant colour, covers the largest share of the image.
- stroke: the width of lines, outlines and dots (`stroke_width`), or the scale of features.
- symmetry: the finished canvas is mirrored left-right or folded into a kaleidoscope. Only part of the
  canvas (its *source*) survives that, so coverage is measured on the source, never on the whole.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from curata.demo.palettes import Palette

DENSITIES = ("sparse", "medium", "dense")
SYMMETRIES = ("none", "mirror", "radial")
STROKES = ("thin", "medium", "bold")

INK_COVERAGE = {"sparse": 0.08, "medium": 0.2, "dense": 0.36}

Renderer = Callable[[np.random.Generator, Palette, dict, int], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def stroke_width(stroke: str, size: int) -> int:
    """Line width in pixels: 1 / 3 / 6 px at 256 px, never below 1 / 2 / 3 so small images still differ."""
    base = {"thin": 1.0, "medium": 3.0, "bold": 6.0}[stroke]
    floor = {"thin": 1, "medium": 2, "bold": 3}[stroke]
    return max(floor, round(base * size / 256))


def _ink_weights(n_inks: int) -> np.ndarray:
    # Halving weights give every image a main ink and rarer accents, like a designed piece.
    weights = 0.5 ** np.arange(n_inks)
    return weights / weights.sum()


def _pick_inks(rng: np.random.Generator, n_inks: int, count: int) -> np.ndarray:
    return rng.choice(np.arange(1, n_inks + 1), size=count, p=_ink_weights(n_inks)).astype(np.uint8)


def _draw_polylines(pixels: np.ndarray, lines: list[np.ndarray], inks: np.ndarray, width: int) -> None:
    # One cv2 call per ink: cv2 draws a whole list of polylines in C.
    for ink in np.unique(inks):
        group = [np.rint(line).astype(np.int32) for line, k in zip(lines, inks, strict=True) if k == ink]
        if group:
            cv2.polylines(pixels, group, isClosed=False, color=int(ink), thickness=width, lineType=cv2.LINE_8)


def _batch_count(target: float, size: int, ink_per_item: float, n_batches: int = 10) -> int:
    """Items per batch so that about `n_batches` batches reach `target` coverage (ignoring overlaps)."""
    return max(1, math.ceil(target * size * size / max(ink_per_item, 1.0) / n_batches))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _thicken(mask: np.ndarray, width: int) -> np.ndarray:
    """Grow a 1-px mask to about `width` pixels across."""
    if width <= 1:
        return mask
    return cv2.dilate(mask, _disk(width // 2) if width > 2 else np.ones((2, 2), np.uint8))


def _inner_band(region: np.ndarray, width: int) -> np.ndarray:
    """The band of `region` (0/1 uint8) within about `width` pixels of its edge."""
    kernel = _disk(max(1, width // 2)) if width > 1 else np.ones((3, 3), np.uint8)
    return region & (1 - cv2.erode(region, kernel, borderType=cv2.BORDER_REPLICATE))


def _value_noise(rng: np.random.Generator, size: int, cells: int, octaves: int) -> np.ndarray:
    """Smooth noise in [0, 1]: random lattices bicubically upsampled, summed over octaves."""
    field = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        n = cells * 2**octave + 1
        lattice = rng.random((n, n)).astype(np.float32)
        field += amplitude * cv2.resize(lattice, (size, size), interpolation=cv2.INTER_CUBIC)
        amplitude *= 0.5
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _split_paths(paths: np.ndarray, size: int) -> list[np.ndarray]:
    """Paths (steps, n, 2) cut where they first leave the canvas; paths of fewer than 2 points dropped."""
    inside = np.all((paths >= 0) & (paths <= size - 1), axis=2)
    lengths = np.where(inside.all(axis=0), paths.shape[0], np.argmin(inside, axis=0))
    return [paths[: lengths[i], i] for i in range(paths.shape[1]) if lengths[i] >= 2]


# ---------------------------------------------------------------------------------------------------
# Canvas and symmetry


@functools.lru_cache(maxsize=8)
def _polar_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - np.float32(centre)
    radius, angle = np.hypot(x, y), np.mod(np.arctan2(y, x), 2 * np.pi).astype(np.float32)
    radius.setflags(write=False)
    angle.setflags(write=False)
    return radius, angle


def _n_parts(symmetry: str, folds: int) -> int:
    return {"none": 1, "mirror": 2, "radial": 2 * folds}[symmetry]


@functools.lru_cache(maxsize=64)
def _source_region(size: int, symmetry: str, folds: int, part: int) -> np.ndarray:
    """Pixels that survive the symmetry: one half for a mirror (0 left, 1 right), one of the 2 * folds
    wedges for a kaleidoscope (wedge `part` spans angles [part, part + 1] * pi / folds)."""
    if symmetry == "mirror":
        region = np.zeros((size, size), bool)
        if part == 0:
            region[:, : (size + 1) // 2] = True
        else:
            region[:, size // 2 :] = True
    elif symmetry == "radial":
        _, angle = _polar_grid(size)
        wedge = np.pi / folds
        region = (angle >= part * wedge) & (angle <= (part + 1) * wedge)
    else:
        region = np.ones((size, size), bool)
    region.setflags(write=False)
    return region


def _kaleidoscope(pixels: np.ndarray, folds: int, part: int) -> np.ndarray:
    """Fold wedge `part` around the centre into a dihedral pattern with `folds` mirror axes."""
    size = pixels.shape[0]
    radius, angle = _polar_grid(size)
    wedge = np.pi / folds
    folded = np.mod(angle, 2 * wedge)
    folded = np.where(folded > wedge, 2 * wedge - folded, folded) + part * wedge
    centre = (size - 1) / 2
    map_x = (centre + radius * np.cos(folded)).astype(np.float32)
    map_y = (centre + radius * np.sin(folded)).astype(np.float32)
    return cv2.remap(pixels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)


@dataclass
class _Canvas:
    """An index canvas plus the symmetry it will get, so coverage is measured where it counts."""

    pixels: np.ndarray
    symmetry: str
    folds: int
    part: int = 0  # which half or wedge the symmetry keeps (see _source_region)

    @classmethod
    def blank(cls, size: int, traits: dict, rng: np.random.Generator) -> _Canvas:
        if traits["symmetry"] not in SYMMETRIES:
            raise ValueError(f"unknown symmetry {traits['symmetry']!r}")
        folds = int(rng.choice([4, 6, 8])) if traits["symmetry"] == "radial" else 1
        return cls(np.zeros((size, size), np.uint8), traits["symmetry"], folds)

    @property
    def size(self) -> int:
        return self.pixels.shape[0]

    @property
    def source(self) -> np.ndarray:
        return _source_region(self.size, self.symmetry, self.folds, self.part)

    def coverage(self) -> float:
        """Share of ink in the part of the canvas that the symmetry keeps."""
        source = self.source
        return np.count_nonzero(self.pixels[source]) / np.count_nonzero(source)

    def quantile(self, field: np.ndarray, q: float) -> float:
        return float(np.quantile(field[self.source], q))

    def choose_part(self, mask: np.ndarray, goal: float) -> None:
        """Keep the half or wedge in which `mask` covers a share closest to `goal`: for drawings that are
        not spread evenly (one plant, one cone), so the symmetric result is neither empty nor flooded."""
        shares = []
        for part in range(_n_parts(self.symmetry, self.folds)):
            region = _source_region(self.size, self.symmetry, self.folds, part)
            shares.append(np.count_nonzero(mask[region]) / np.count_nonzero(region))
        self.part = int(np.argmin(np.abs(np.array(shares) - goal)))

    def draw_until_covered(self, target: float, draw_batch: Callable[[np.ndarray], None],
                           max_batches: int = 40) -> None:
        """Call `draw_batch(pixels)` until `target` coverage is reached or `max_batches` were drawn.

        A batch that would overshoot the target by far is undone: in a small source (a kaleidoscope
        wedge of a small image) one bold stroke can flood it, and the background must stay the majority.
        """
        ceiling = max(1.4 * target, target + 0.05)
        for _ in range(max_batches):
            if self.coverage() >= target:
                return
            before = self.pixels.copy()
            draw_batch(self.pixels)
            if self.coverage() > ceiling:
                self.pixels[...] = before

    def symmetric(self) -> np.ndarray:
        pixels = self.pixels
        if self.symmetry == "mirror":
            half = self.size // 2
            pixels = pixels.copy()
            if self.part == 0:
                pixels[:, self.size - half :] = pixels[:, :half][:, ::-1]
            else:
                pixels[:, :half] = pixels[:, self.size - half :][:, ::-1]
        elif self.symmetry == "radial":
            pixels = _kaleidoscope(pixels, self.folds, self.part)
        return pixels

    def to_rgb(self, palette: Palette) -> np.ndarray:
        return palette.rgb_array()[self.symmetric()]


# ---------------------------------------------------------------------------------------------------
# Cellular automaton: an elementary 1-D rule, one row per time step, top to bottom.

# Only rules that map an all-dead neighbourhood to dead, so a lone seed grows on an empty background.
CA_RULES = ("rule 18", "rule 22", "rule 30", "rule 54", "rule 90", "rule 110", "rule 126", "rule 150")


def _evolve_elementary(rule: int, first_row: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """History (n_rows, width) of the automaton, and each cell's 3-cell neighbourhood code (0..7)."""
    table = np.array([(rule >> i) & 1 for i in range(8)], np.uint8)
    rows = np.empty((n_rows, first_row.size), np.uint8)
    codes = np.zeros((n_rows, first_row.size), np.uint8)
    rows[0] = first_row
    for t in range(1, n_rows):
        prev = rows[t - 1]
        codes[t] = (np.roll(prev, 1) << 2) | (prev << 1) | np.roll(prev, -1)
        rows[t] = table[codes[t]]
    return rows, codes


def render_cellular_automaton(rng: np.random.Generator, palette: Palette, traits: dict,
                              size: int) -> np.ndarray:
    """Elementary cellular automaton: density sets the start row (how much of the canvas it fills), stroke
    the cell size and how much of each cell is drawn (small dots, tiles with gaps, solid blocks)."""
    canvas = _Canvas.blank(size, traits, rng)
    cells_across = {"thin": 64, "medium": 44, "bold": 28}[traits["stroke"]] * rng.uniform(0.85, 1.15)
    cell = max(2, round(size / cells_across))
    n = math.ceil(size / cell)
    first = np.zeros(n, np.uint8)
    if traits["density"] == "sparse":  # one seed: a single growing cone
        first[n // 2] = 1
    elif traits["density"] == "medium":  # a few seeds: cones that meet further down
        first[rng.choice(n, size=3, replace=False)] = 1
    else:  # random soup: texture from the first row
        first = (rng.random(n) < 0.5).astype(np.uint8)
    live, codes = _evolve_elementary(int(traits["rule"].split()[1]), first, n)
    if live.mean() > 0.5:  # draw the minority state so the background stays the majority
        live = 1 - live
    inks = (codes % palette.n_inks + 1) * live
    side_px = {"thin": max(1, round(cell * 0.45)), "medium": max(1, round(cell * 0.7)), "bold": cell}
    side_px = side_px[traits["stroke"]]
    offset = (cell - side_px) // 2
    tile = np.zeros((cell, cell), np.uint8)
    tile[offset : offset + side_px, offset : offset + side_px] = 1
    canvas.pixels = np.ascontiguousarray(np.kron(inks, tile)[:size, :size], dtype=np.uint8)
    canvas.choose_part(canvas.pixels > 0, INK_COVERAGE[traits["density"]])
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Flow field: particles follow the angle of a smooth noise field and leave smooth parallel strands.

FLOW_FIELDS = ("calm", "turbulent")


def render_flow_field(rng: np.random.Generator, palette: Palette, traits: dict, size: int) -> np.ndarray:
    """Strands traced through a value-noise angle field; density sets how many strands are drawn."""
    canvas = _Canvas.blank(size, traits, rng)
    turbulent = traits["field"] == "turbulent"
    noise = _value_noise(rng, size, cells=5 if turbulent else 2, octaves=2 if turbulent else 1)
    turns = 2.0 if turbulent else 1.0  # full turns of heading across the noise range
    angle = noise * np.float32(2 * np.pi * turns) + np.float32(rng.uniform(0, 2 * np.pi))
    cos_field, sin_field = np.cos(angle), np.sin(angle)
    width = stroke_width(traits["stroke"], size)
    step = max(1.0, 1.5 * size / 256)
    steps = int(rng.integers(40, 90))
    target = INK_COVERAGE[traits["density"]]
    per_batch = _batch_count(target, size, steps * step * width * 0.7)
    max_batches = 40
    # Trace every strand that might be needed at once: one numpy step for all of them is far cheaper
    # than one per batch, and unused strands cost little.
    pos = rng.uniform(0, size - 1, (per_batch * max_batches, 2)).astype(np.float32)
    paths = np.empty((steps, len(pos), 2), np.float32)
    for s in range(steps):
        paths[s] = pos
        xi = np.clip(pos[:, 0].astype(np.int32), 0, size - 1)
        yi = np.clip(pos[:, 1].astype(np.int32), 0, size - 1)
        pos = pos + step * np.stack([cos_field[yi, xi], sin_field[yi, xi]], axis=1)
    batches = iter(np.array_split(paths, max_batches, axis=1))

    def trace(pixels: np.ndarray) -> None:
        lines = _split_paths(next(batches), size)
        _draw_polylines(pixels, lines, _pick_inks(rng, palette.n_inks, len(lines)), width)

    canvas.draw_until_covered(target, trace, max_batches)
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Reaction-diffusion: Gray-Scott on a small grid, upscaled, thresholded into filled shapes.

RD_PATTERNS = {"spotted": (0.0367, 0.0649), "coral": (0.0545, 0.062), "labyrinth": (0.029, 0.057)}
_LAPLACIAN = np.array([[0.05, 0.2, 0.05], [0.2, -1.0, 0.2], [0.05, 0.2, 0.05]], np.float32)


def _gray_scott(rng: np.random.Generator, n: int, feed: float, kill: float, diffusion: float,
                steps: int) -> np.ndarray:
    """Concentration of V after `steps` explicit Euler steps (Du = diffusion, Dv = diffusion / 2, dt = 1)."""
    u = np.ones((n, n), np.float32)
    v = np.zeros((n, n), np.float32)
    # Many seeds all over the grid so the pattern fills it within a few hundred steps; seeds smaller
    # than ~4 cells dissolve before they can grow.
    for _ in range(max(4, n * n // 120)):
        y, x = rng.integers(0, n - 4, 2)
        u[y : y + 4, x : x + 4] = 0.5
        v[y : y + 4, x : x + 4] = 0.25 + rng.random((4, 4), dtype=np.float32) * 0.1
    feed32, decay = np.float32(feed), np.float32(feed + kill)
    du, dv = np.float32(diffusion), np.float32(diffusion / 2)
    uvv = np.empty_like(u)
    for _ in range(steps):
        lap_u = cv2.filter2D(u, -1, _LAPLACIAN, borderType=cv2.BORDER_REFLECT)
        lap_v = cv2.filter2D(v, -1, _LAPLACIAN, borderType=cv2.BORDER_REFLECT)
        np.multiply(u, v, out=uvv)
        uvv *= v
        lap_u *= du
        lap_v *= dv
        u += lap_u - uvv + feed32 * (1 - u)
        v += lap_v + uvv - decay * v
    return v


def render_reaction_diffusion(rng: np.random.Generator, palette: Palette, traits: dict,
                              size: int) -> np.ndarray:
    """Gray-Scott pattern; density sets the share of the field filled, stroke the width of its features
    and of their outlines."""
    canvas = _Canvas.blank(size, traits, rng)
    feed, kill = RD_PATTERNS[traits["pattern"]]
    # Features scale with the square root of the diffusion rate: slower diffusion, finer pattern.
    diffusion = {"thin": 0.4, "medium": 0.65, "bold": 1.0}[traits["stroke"]]
    field = _gray_scott(rng, min(size, 64), feed, kill, diffusion, steps=700)
    field = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    target = INK_COVERAGE[traits["density"]]
    shape = (field >= canvas.quantile(field, 1 - target)).astype(np.uint8)
    core = field >= canvas.quantile(field, 1 - target * 0.3)
    inks = [min(k, palette.n_inks) for k in (1, 2, 3)]
    canvas.pixels = shape * np.uint8(inks[0])
    canvas.pixels[core] = inks[1]
    canvas.pixels[_inner_band(shape, stroke_width(traits["stroke"], size)) > 0] = inks[2]
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Voronoi: cells around random seeds, outlined, some filled.

VORONOI_METRICS = {"euclidean": cv2.DIST_L2, "manhattan": cv2.DIST_L1, "chebyshev": cv2.DIST_C}


def _voronoi_labels(rng: np.random.Generator, size: int, n_cells: int, metric: int) -> np.ndarray:
    seeds = np.full((size, size), 255, np.uint8)
    seeds[rng.integers(0, size, n_cells), rng.integers(0, size, n_cells)] = 0
    mask_size = 5 if metric == cv2.DIST_L2 else 3  # L1 and C are exact with a 3x3 mask
    _, labels = cv2.distanceTransformWithLabels(seeds, metric, mask_size, labelType=cv2.DIST_LABEL_PIXEL)
    return labels


def render_voronoi(rng: np.random.Generator, palette: Palette, traits: dict, size: int) -> np.ndarray:
    """Voronoi cells; stroke sets the outline width, density the number of cells and of filled cells."""
    canvas = _Canvas.blank(size, traits, rng)
    width = stroke_width(traits["stroke"], size)
    target = INK_COVERAGE[traits["density"]]
    # Outlines of n cells cover about 3.7 * width * sqrt(n / area) of the canvas; let them take ~60% of
    # the ink budget and filled cells the rest.
    n_cells = int(np.clip((0.6 * target / (3.7 * width)) ** 2 * size * size, 5, 400))
    labels = _voronoi_labels(rng, size, n_cells, VORONOI_METRICS[traits["metric"]])
    edges = np.zeros((size, size), np.uint8)
    edges[:, :-1] |= (labels[:, :-1] != labels[:, 1:]).astype(np.uint8)
    edges[:-1, :] |= (labels[:-1, :] != labels[1:, :]).astype(np.uint8)
    edges = _thicken(edges, width)
    canvas.choose_part(edges > 0, 0.6 * target)  # few big cells: keep a half or wedge that shows outlines
    # Fill cells in random order while the ink share stays within the budget (plus a little slack).
    source = canvas.source
    n_labels = int(labels.max()) + 1
    free_area = np.bincount(labels[source & (edges == 0)], minlength=n_labels) / np.count_nonzero(source)
    inked = np.count_nonzero(edges[source]) / np.count_nonzero(source)
    cell_ink = np.zeros(n_labels, np.uint8)
    fill_inks = _pick_inks(rng, palette.n_inks, n_labels)
    fill_inks[fill_inks == 1] = min(2, palette.n_inks)  # fills differ from the outline ink when possible
    for label in rng.permutation(np.arange(1, n_labels)):
        if inked + free_area[label] <= target * 1.15:
            cell_ink[label] = fill_inks[label]
            inked += free_area[label]
    canvas.pixels = cell_ink[labels]
    canvas.pixels[edges > 0] = 1
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Fractal: Mandelbrot or Julia escape times, drawn as equipotential contour lines.

FRACTAL_SETS = ("mandelbrot", "julia")
# (centre x, centre y, half width): views where at most a third of the plane is still orbiting after
# _MAX_ITER steps, so there is room for contours.
_MANDELBROT_VIEWS = ((-0.6, 0.0, 1.5), (-0.16, 1.035, 0.08), (-1.768, 0.0, 0.02), (-1.4, 0.0, 0.3),
                     (-0.1, 0.9, 0.3), (-0.745, 0.186, 0.03))
_JULIA_CONSTANTS = (complex(-0.8, 0.156), complex(0.285, 0.01), complex(-0.4, 0.6),
                    complex(-0.70176, -0.3842), complex(0.355, 0.355), complex(-0.835, -0.2321))
_MAX_ITER = 96


def _escape_time(z: np.ndarray, c: np.ndarray, max_iter: int) -> np.ndarray:
    """Smooth escape count per point; points that never escape get max_iter + 1."""
    smooth = np.full(z.shape, max_iter + 1, np.float32)
    flat = smooth.ravel()
    z, c = z.ravel().copy(), c.ravel().copy()
    index = np.arange(z.size)
    for i in range(max_iter):
        z = z * z + c
        modulus2 = z.real**2 + z.imag**2
        out = modulus2 > 256.0
        if out.any():
            log_modulus = 0.5 * np.log(modulus2[out])
            flat[index[out]] = i + 1 - np.log2(np.maximum(log_modulus, 1e-6))
            # Only points still orbiting are iterated further: most of the plane escapes early.
            keep = ~out
            z, c, index = z[keep], c[keep], index[keep]
            if index.size == 0:
                break
    return smooth


def _fractal_plane(rng: np.random.Generator, which: str, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Starting z and constant c for every grid point of a Mandelbrot view or a rotated Julia set."""
    if which == "mandelbrot":
        cx, cy, half = _MANDELBROT_VIEWS[int(rng.integers(len(_MANDELBROT_VIEWS)))]
        rotation = 1.0
    else:
        cx, cy, half = 0.0, 0.0, 1.5
        rotation = np.exp(1j * rng.uniform(0, 2 * np.pi))
    axis = np.linspace(-half, half, grid)
    plane = ((axis[None, :] + 1j * axis[:, None]) * rotation + complex(cx, cy)).astype(np.complex64)
    if which == "mandelbrot":
        return np.zeros_like(plane), plane
    constant = _JULIA_CONSTANTS[int(rng.integers(len(_JULIA_CONSTANTS)))] + complex(*rng.normal(0, 0.004, 2))
    return plane, np.full_like(plane, constant)


def render_fractal(rng: np.random.Generator, palette: Palette, traits: dict, size: int) -> np.ndarray:
    """Escape-time fractal as contour lines; density sets how far out the lines reach, stroke their width
    (and, so thin lines still add up, their spacing)."""
    canvas = _Canvas.blank(size, traits, rng)
    grid = min(size, 160)  # computed coarse and upsampled: contours stay smooth, cost stays flat
    z, c = _fractal_plane(rng, traits["set"], grid)
    field = cv2.resize(np.log1p(_escape_time(z, c, _MAX_ITER)), (size, size), interpolation=cv2.INTER_LINEAR)
    target = INK_COVERAGE[traits["density"]]
    width = stroke_width(traits["stroke"], size)
    interior = field >= np.float32(np.log1p(_MAX_ITER + 0.5))
    canvas.choose_part(~interior, 1.0)  # the half or wedge with the most room for contours
    if np.count_nonzero(interior & canvas.source) <= 0.5 * target * np.count_nonzero(canvas.source):
        canvas.pixels[interior] = 1  # a small set reads best as a solid silhouette
    # Contour levels evenly spaced in rank, innermost first, until the ink budget is reached.
    escaped = np.sort(field[~interior & canvas.source])
    spacing = {"thin": 0.012, "medium": 0.03, "bold": 0.05}[traits["stroke"]] * float(rng.uniform(0.8, 1.25))
    for j in range(1, int(1 / spacing)):
        if canvas.coverage() >= target or escaped.size == 0:
            break
        level = escaped[int((1 - j * spacing) * (escaped.size - 1))]
        ring = _thicken(_inner_band((field >= level).astype(np.uint8), 1), width)
        canvas.pixels[(ring > 0) & (canvas.pixels == 0)] = (j - 1) % palette.n_inks + 1
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# L-system: string rewriting then turtle drawing.


@dataclass(frozen=True)
class _LSystem:
    axiom: str
    rules: dict[str, str]
    angle: float  # degrees per turn
    max_depth: int
    draws: str = "F"  # symbols that move the turtle forward with the pen down
    heading: float | None = 0.0  # initial heading in degrees (0 = east, -90 = up); None = random
    jitter: float = 0.0  # random spread of each turn, degrees
    min_step: float = 0.0  # shortest readable step, in line widths: deeper levels would be a solid blur


L_SYSTEMS = {
    "plant": _LSystem("X", {"X": "F+[[X]-X]-F[-FX]+X", "F": "FF"}, 25.0, 7, heading=-90.0, jitter=6.0),
    "dragon": _LSystem("FX", {"X": "X+YF+", "Y": "-FX-Y"}, 90.0, 14, heading=None, min_step=2.5),
    "koch": _LSystem("F--F--F", {"F": "F+F--F+F"}, 60.0, 6, min_step=1.5),
    "sierpinski": _LSystem("A", {"A": "B-A-B", "B": "A+B+A"}, 60.0, 9, draws="AB", heading=None,
                           min_step=2.5),
    "hilbert": _LSystem("A", {"A": "+BF-AFA-FB+", "B": "-AF+BFB+FA-"}, 90.0, 7, min_step=2.5),
}
_MAX_L_STRING = 60_000
_L_MARGIN = 0.06


def _expand(system: _LSystem, depth: int) -> str | None:
    """The rewritten string, or None when it would outgrow what the turtle can trace quickly."""
    text = system.axiom
    for _ in range(depth):
        text = "".join(system.rules.get(ch, ch) for ch in text)
        if len(text) > _MAX_L_STRING:
            return None
    return text


def _turtle(text: str, system: _LSystem, heading: float, turns: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Polylines (points, branch depth) traced by the turtle; `turns` holds one turn angle per symbol."""
    x = y = 0.0
    angle = math.radians(heading)
    stack: list[tuple[float, float, float]] = []
    strokes: list[tuple[np.ndarray, int]] = []
    current = [(x, y)]

    def flush() -> None:
        if len(current) >= 2:
            strokes.append((np.array(current, np.float64), len(stack)))

    for i, ch in enumerate(text):
        if ch in system.draws:
            x += math.cos(angle)
            y += math.sin(angle)
            current.append((x, y))
        elif ch == "+":
            angle += turns[i]
        elif ch == "-":
            angle -= turns[i]
        elif ch == "[":
            flush()
            stack.append((x, y, angle))
            current = [(x, y)]
        elif ch == "]":
            flush()
            x, y, angle = stack.pop()
            current = [(x, y)]
    flush()
    return strokes


def _fit(strokes: list[tuple[np.ndarray, int]], size: int) -> float:
    """Scale and centre strokes in place to fill the canvas; returns the scale (pixels per step)."""
    points = np.concatenate([pts for pts, _ in strokes])
    low, high = points.min(axis=0), points.max(axis=0)
    scale = size * (1 - 2 * _L_MARGIN) / max(float((high - low).max()), 1e-9)
    offset = size / 2 - (low + high) / 2 * scale
    for pts, _ in strokes:
        pts *= scale
        pts += offset
    return scale


def _l_system_strokes(rng: np.random.Generator, system: _LSystem, size: int, width: int,
                      target: float) -> list[tuple[np.ndarray, int]]:
    """Strokes at the rewriting depth whose ink share is closest to `target`: each level adds detail."""
    heading = system.heading if system.heading is not None else float(rng.uniform(0, 360))
    best: tuple[float, list[tuple[np.ndarray, int]]] | None = None
    for depth in range(1, system.max_depth + 1):
        text = _expand(system, depth)
        if text is None:
            break
        turns = np.radians(system.angle + rng.normal(0, system.jitter, len(text)))
        strokes = _turtle(text, system, heading, turns)
        scale = _fit(strokes, size)
        if best is not None and scale < system.min_step * width:
            break
        ink = sum(len(pts) - 1 for pts, _ in strokes) * scale * width / (size * size)
        distance = abs(math.log(max(ink, 1e-6) / target))
        if best is None or distance < best[0]:
            best = (distance, strokes)
        if ink > target:
            break
    assert best is not None
    return best[1]


def render_l_system(rng: np.random.Generator, palette: Palette, traits: dict, size: int) -> np.ndarray:
    """Turtle drawing of an L-system; density sets the rewriting depth, stroke the line width."""
    canvas = _Canvas.blank(size, traits, rng)
    width = stroke_width(traits["stroke"], size)
    strokes = _l_system_strokes(rng, L_SYSTEMS[traits["form"]], size, width, INK_COVERAGE[traits["density"]])
    if len(strokes) > 1:  # branching: ink by branch depth
        lines = [pts for pts, _ in strokes]
        inks = np.array([depth % palette.n_inks + 1 for _, depth in strokes], np.uint8)
    else:  # one curve: ink changes along the path, each piece joined to the next
        pieces = np.array_split(strokes[0][0], palette.n_inks * 2)
        lines = [np.vstack([a, b[:1]]) for a, b in itertools.pairwise(pieces)] + [pieces[-1]]
        inks = np.array([i % palette.n_inks + 1 for i in range(len(lines))], np.uint8)
    _draw_polylines(canvas.pixels, lines, inks, width)
    canvas.choose_part(canvas.pixels > 0, INK_COVERAGE[traits["density"]])
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Random walk: jagged walks on a lattice (or free), with a node marking each walker's start.

WALK_LATTICES = ("grid", "hex", "free")


def _walk_headings(rng: np.random.Generator, lattice: str, steps: int, n: int) -> np.ndarray:
    """Heading angles (steps, n) of n walkers."""
    if lattice == "free":
        return np.cumsum(rng.normal(0, 1.0, (steps, n)), axis=0) + rng.uniform(0, 2 * np.pi, n)
    k = 4 if lattice == "grid" else 6
    # Mostly keep going, sometimes turn one notch: long corridors, like circuit traces.
    turns = rng.choice([-1, 0, 1], size=(steps, n), p=[0.2, 0.6, 0.2])
    start = rng.integers(0, k, n)
    return (np.cumsum(turns, axis=0) + start) * (2 * np.pi / k)


def render_random_walk(rng: np.random.Generator, palette: Palette, traits: dict, size: int) -> np.ndarray:
    """Random walkers; density sets how many walk, stroke the width of their trails."""
    canvas = _Canvas.blank(size, traits, rng)
    width = stroke_width(traits["stroke"], size)
    step = max(2.0, rng.uniform(4, 8) * size / 256)
    steps = int(rng.integers(40, 120))
    target = INK_COVERAGE[traits["density"]]
    # Walks overlap themselves a lot, so each covers far less than its length.
    per_batch = _batch_count(target, size, steps * step * width * 0.4)
    node_radius = width + max(1, size // 128)

    def walk(pixels: np.ndarray) -> None:
        start = rng.uniform(size * 0.1, size * 0.9, (per_batch, 2))
        heading = _walk_headings(rng, traits["lattice"], steps, per_batch)
        moves = step * np.stack([np.cos(heading), np.sin(heading)], axis=2)
        paths = np.concatenate([start[None], start[None] + np.cumsum(moves, axis=0)])
        lines = _split_paths(paths, size)
        inks = _pick_inks(rng, palette.n_inks, len(lines))
        _draw_polylines(pixels, lines, inks, width)
        for line, ink in zip(lines, inks, strict=True):
            cx, cy = np.rint(line[0]).astype(int)
            cv2.circle(pixels, (int(cx), int(cy)), node_radius, int(ink), thickness=-1)

    canvas.draw_until_covered(target, walk)
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Particle system: particles under a force, stamped as dots along their trajectories.

PARTICLE_FORCES = ("gravity", "vortex", "burst")


def _trajectories(rng: np.random.Generator, force: str, n: int, steps: int, size: int,
                  origin: np.ndarray) -> np.ndarray:
    """Closed-form positions (steps, n, 2) of n particles."""
    t = np.arange(steps, dtype=np.float64)[:, None]
    if force == "gravity":  # a fountain: launched upwards in a cone, pulled down
        angle = -np.pi / 2 + rng.normal(0, 0.35, n)
        speed = rng.uniform(0.35, 0.6, n) * size / steps * 4
        gravity = size / steps**2 * 3.0
        x = origin[0] + speed * np.cos(angle) * t
        y = origin[1] + speed * np.sin(angle) * t + 0.5 * gravity * t**2
    elif force == "vortex":  # spirals falling into a centre
        r0 = rng.uniform(0.15, 0.48, n) * size
        phase = rng.uniform(0, 2 * np.pi, n)
        radius = r0 * np.exp(-t / steps * rng.uniform(0.5, 1.5, n))
        angle = phase + t / steps * 2.5 * (size * 0.25 / r0)
        x = origin[0] + radius * np.cos(angle)
        y = origin[1] + radius * np.sin(angle)
    else:  # burst: fireworks, launched in all directions and slowed by drag
        angle = rng.uniform(0, 2 * np.pi, n)
        speed = rng.uniform(0.2, 1.0, n) * size * 0.06
        drag = 0.06
        travel = (1 - np.exp(-drag * t)) / drag
        x = origin[0] + speed * np.cos(angle) * travel
        y = origin[1] + speed * np.sin(angle) * travel
    return np.stack([x, y], axis=2)


def _particle_origins(rng: np.random.Generator, force: str, size: int) -> list[np.ndarray]:
    if force == "gravity":
        return [np.array([rng.uniform(0.35, 0.65) * size, size * 0.9])]
    if force == "vortex":
        return [np.array([size / 2, size / 2]) + rng.normal(0, size * 0.05, 2)]
    return [rng.uniform(0.25, 0.75, 2) * size for _ in range(int(rng.integers(1, 4)))]


def render_particle_system(rng: np.random.Generator, palette: Palette, traits: dict,
                           size: int) -> np.ndarray:
    """Dots stamped along particle trajectories; density sets the particle count, stroke the dot size."""
    canvas = _Canvas.blank(size, traits, rng)
    force = traits["force"]
    radius = stroke_width(traits["stroke"], size)
    steps = 48
    target = INK_COVERAGE[traits["density"]]
    origins = _particle_origins(rng, force, size)
    # Dots along a trajectory overlap; count about a third of each dot as new ink.
    per_batch = _batch_count(target, size, steps * math.pi * (radius + 0.5) ** 2 * 0.35, n_batches=6)
    kernels = (_disk(radius), _disk(max(0, radius // 2)))  # young particles are bigger than old ones

    def emit(pixels: np.ndarray) -> None:
        origin = origins[int(rng.integers(len(origins)))]
        paths = np.rint(_trajectories(rng, force, per_batch, steps, size, origin)).astype(np.int64)
        inks = _pick_inks(rng, palette.n_inks, per_batch)
        for age, kernel in enumerate(kernels):
            part = paths[age * steps // 2 : (age + 1) * steps // 2]
            for ink in np.unique(inks):
                pts = part[:, inks == ink].reshape(-1, 2)
                pts = pts[np.all((pts >= 0) & (pts < size), axis=1)]
                stamp = np.zeros((size, size), np.uint8)
                stamp[pts[:, 1], pts[:, 0]] = 1
                pixels[cv2.dilate(stamp, kernel) > 0] = ink

    canvas.draw_until_covered(target, emit)
    return canvas.to_rgb(palette)


# ---------------------------------------------------------------------------------------------------
# Registry

ALGORITHMS: dict[str, Renderer] = {
    "cellular automaton": render_cellular_automaton,
    "flow field": render_flow_field,
    "reaction-diffusion": render_reaction_diffusion,
    "voronoi": render_voronoi,
    "fractal": render_fractal,
    "l-system": render_l_system,
    "random walk": render_random_walk,
    "particle system": render_particle_system,
}

# The one algorithm-specific trait of each family: trait name and its possible values.
ALGORITHM_TRAITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cellular automaton": ("rule", CA_RULES),
    "flow field": ("field", FLOW_FIELDS),
    "reaction-diffusion": ("pattern", tuple(RD_PATTERNS)),
    "voronoi": ("metric", tuple(VORONOI_METRICS)),
    "fractal": ("set", FRACTAL_SETS),
    "l-system": ("form", tuple(L_SYSTEMS)),
    "random walk": ("lattice", WALK_LATTICES),
    "particle system": ("force", PARTICLE_FORCES),
}
