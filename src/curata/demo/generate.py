"""Generate the built-in demo collection: fxhash-style generative art drawn by curata's own code.

Layout written under `out_dir` (ERC-721 / OpenSea style):

    images/{token_id}.png          RGB, size x size
    metadata/{token_id}.json       name, description, image, hash, attributes
    metadata/_metadata.json        the list of all tokens' metadata, by token id

Token ids interleave the algorithms (0 is the first cellular automaton, 1 the first flow field, ...), so
any prefix of the collection shows every family. Each token's randomness comes from a SHA-256 of
(collection seed, algorithm, index), never from Python's salted `hash()`, so the same arguments give
byte-identical files on any machine and with any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from curata.demo.algorithms import ALGORITHM_TRAITS, ALGORITHMS, DENSITIES, STROKES, SYMMETRIES
from curata.demo.palettes import PALETTES, PALETTES_BY_NAME, Palette

IMAGE_URI_PREFIX = "ipfs://curata-demo/"
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Proper nouns among algorithm and trait values: capitalised in descriptions, lower case as trait values.
_DISPLAY_NAMES = {
    "voronoi": "Voronoi", "l-system": "L-system", "mandelbrot": "Mandelbrot", "julia": "Julia",
    "koch": "Koch", "sierpinski": "Sierpinski", "hilbert": "Hilbert", "euclidean": "Euclidean",
    "manhattan": "Manhattan", "chebyshev": "Chebyshev",
}
_DENSITY_WORDS = {"sparse": "sparse", "medium": "moderately dense", "dense": "dense"}
_SYMMETRY_WORDS = {"none": "asymmetric", "mirror": "mirror-symmetric", "radial": "radially symmetric"}


@dataclass(frozen=True)
class GeneratedCollection:
    """What `generate_collection` wrote: its folder, token count and algorithm names (in token-id order)."""

    root: Path  # out_dir
    n_tokens: int
    algorithms: tuple[str, ...]


@dataclass(frozen=True)
class _TokenJob:
    token_id: int
    algorithm: str
    index: int  # position of the token within its algorithm
    seed: int
    size: int
    images_dir: Path


def token_digest(seed: int, algorithm: str, index: int) -> bytes:
    """Stable 32-byte digest that every random choice of one token derives from."""
    return hashlib.sha256(f"curata-demo/{seed}/{algorithm}/{index}".encode()).digest()


def fxhash_string(digest: bytes) -> str:
    """fxhash-style token hash: "oo" followed by 51 base58 characters."""
    value = int.from_bytes(hashlib.sha512(digest).digest(), "big")
    chars = []
    for _ in range(51):
        value, rest = divmod(value, 58)
        chars.append(_BASE58[rest])
    return "oo" + "".join(chars)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def draw_traits(rng: np.random.Generator, algorithm: str) -> dict[str, str]:
    """The token's traits, drawn uniformly so every value of every trait is well represented."""
    palette = PALETTES[int(rng.integers(len(PALETTES)))]
    traits = {
        "algorithm": algorithm,
        "palette": palette.name,
        "color": palette.dominant,
        "density": _pick(rng, DENSITIES),
        "symmetry": _pick(rng, SYMMETRIES),
        "stroke": _pick(rng, STROKES),
    }
    name, values = ALGORITHM_TRAITS[algorithm]
    traits[name] = _pick(rng, values)
    return traits


def _ink_colour_names(image: np.ndarray, palette: Palette) -> list[str]:
    """Basic names of the inks actually used, most used first, without the background's name."""
    packed = image.reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], np.int32)
    lut = palette.rgb_array().astype(np.int32) @ np.array([65536, 256, 1], np.int32)
    counts = [(int(np.count_nonzero(packed == lut[k])), k) for k in range(1, len(lut))]
    names: list[str] = []
    for count, k in sorted(counts, key=lambda item: (-item[0], item[1])):
        name = palette.color_names[k]
        if count > 0 and name != palette.dominant and name not in names:
            names.append(name)
    return names


def describe(traits: dict[str, str], ink_names: list[str]) -> str:
    """One plain sentence built from the traits and the colours actually drawn."""
    algorithm = traits["algorithm"]
    special = traits[ALGORITHM_TRAITS[algorithm][0]]
    subject = f"{_DISPLAY_NAMES.get(special, special)} {_DISPLAY_NAMES.get(algorithm, algorithm)}"
    adjectives = f"{_DENSITY_WORDS[traits['density']]}, {_SYMMETRY_WORDS[traits['symmetry']]}"
    article = "An" if adjectives[0] in "aeiou" else "A"
    colours = f"mostly {traits['color']}"
    if ink_names:
        colours += " with " + " and ".join(ink_names[:2])
    return (f"{article} {adjectives} {subject} piece with {traits['stroke']} strokes "
            f"in the {traits['palette']} palette, {colours}.")


def _render_token(job: _TokenJob) -> tuple[int, dict]:
    """Render one token, write its PNG, and return its id and metadata."""
    digest = token_digest(job.seed, job.algorithm, job.index)
    rng = np.random.default_rng(int.from_bytes(digest, "big"))
    traits = draw_traits(rng, job.algorithm)
    palette = PALETTES_BY_NAME[traits["palette"]]
    image = ALGORITHMS[job.algorithm](rng, palette, traits, job.size)
    Image.fromarray(image, "RGB").save(job.images_dir / f"{job.token_id}.png", format="PNG")
    return job.token_id, {
        "name": f"{job.algorithm.title()} #{job.index + 1}",
        "description": describe(traits, _ink_colour_names(image, palette)),
        "image": f"{IMAGE_URI_PREFIX}{job.token_id}.png",
        "hash": fxhash_string(digest),
        "attributes": [{"trait_type": key, "value": value} for key, value in traits.items()],
    }


def _worker_init() -> None:
    # Two worker processes on two cores: OpenCV's own threads would only oversubscribe them.
    import cv2

    cv2.setNumThreads(1)


def _remove_stale(directory: Path, suffix: str, keep: set[str]) -> None:
    """Drop numbered files a previous, larger generation left behind, so the layout stays consistent."""
    for path in directory.glob(f"*{suffix}"):
        if re.fullmatch(r"\d+", path.stem) and path.stem not in keep:
            path.unlink()


def generate_collection(
    out_dir: Path,
    per_algorithm: int = 60,
    size: int = 256,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GeneratedCollection:
    """Draw `per_algorithm` tokens of every algorithm into `out_dir` (layout in the module docstring).

    `workers` > 1 renders in a pool of spawned processes (default: up to 2), `workers=1` in this process;
    the files are identical either way. As with any spawn pool, a script that calls this at import time
    must do so under `if __name__ == "__main__":`. `progress(done, total)` is called, in this process,
    each time a token is finished. Numbered files left in `images/` and `metadata/` by an earlier, larger
    generation are removed so the folder always describes exactly one collection.
    """
    if per_algorithm < 1 or size < 16:
        raise ValueError("per_algorithm must be >= 1 and size >= 16")
    out_dir = Path(out_dir)
    images_dir, metadata_dir = out_dir / "images", out_dir / "metadata"
    images_dir.mkdir(parents=True, exist_ok=True)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    algorithms = tuple(ALGORITHMS)
    jobs = [
        _TokenJob(index * len(algorithms) + a, algorithm, index, seed, size, images_dir)
        for index in range(per_algorithm)
        for a, algorithm in enumerate(algorithms)
    ]
    total = len(jobs)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)

    metadata: dict[int, dict] = {}

    def collect(token_id: int, meta: dict) -> None:
        metadata[token_id] = meta
        (metadata_dir / f"{token_id}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if progress is not None:
            progress(len(metadata), total)

    if workers == 1 or total == 1:
        for job in jobs:
            collect(*_render_token(job))
    else:
        # spawn, not fork: the caller may hold threads (torch, a web server) that fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        chunksize = max(1, total // (workers * 8))
        with context.Pool(workers, initializer=_worker_init) as pool:
            for token_id, meta in pool.imap_unordered(_render_token, jobs, chunksize=chunksize):
                collect(token_id, meta)

    keep = {str(job.token_id) for job in jobs}
    _remove_stale(images_dir, ".png", keep)
    _remove_stale(metadata_dir, ".json", keep)
    ordered = [metadata[token_id] for token_id in range(total)]
    (metadata_dir / "_metadata.json").write_text(json.dumps(ordered, indent=2) + "\n", encoding="utf-8")
    return GeneratedCollection(root=out_dir, n_tokens=total, algorithms=algorithms)
