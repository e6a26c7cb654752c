"""The built-in demo collection: layout, metadata, determinism, and traits that are true to the pixels."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curata.demo.algorithms import ALGORITHM_TRAITS, ALGORITHMS, DENSITIES, STROKES, SYMMETRIES
from curata.demo.generate import GeneratedCollection, generate_collection
from curata.demo.palettes import BASIC_COLOURS, PALETTES, PALETTES_BY_NAME, hex_to_rgb

PER_ALGORITHM = 3
SIZE = 64
SEED = 7
N_TOKENS = PER_ALGORITHM * len(ALGORITHMS)
REQUIRED_TRAITS = ("algorithm", "palette", "color", "density", "symmetry", "stroke")

# Our own reference point for each basic colour name, chosen independently of the palettes' hex values.
BASIC_REFERENCE = {
    "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "red": (200, 30, 30),
    "orange": (245, 130, 20), "yellow": (245, 215, 40), "green": (40, 140, 50), "blue": (30, 70, 190),
    "purple": (110, 40, 150), "pink": (245, 150, 195), "brown": (120, 72, 35), "teal": (15, 120, 120),
}  # fmt: skip


def basic_colour_shares(image: np.ndarray) -> dict[str, float]:
    """Share of pixels whose nearest reference colour (RGB distance) is each basic colour name."""
    names = list(BASIC_REFERENCE)
    refs = np.array([BASIC_REFERENCE[n] for n in names], np.float64)
    pixels = image.reshape(-1, 3).astype(np.float64)
    nearest = ((pixels[:, None, :] - refs[None]) ** 2).sum(axis=2).argmin(axis=1)
    counts = np.bincount(nearest, minlength=len(names)) / len(pixels)
    return dict(zip(names, counts.tolist(), strict=True))


def traits_of(meta: dict) -> dict[str, str]:
    return {a["trait_type"]: a["value"] for a in meta["attributes"]}


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedCollection, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    result = generate_collection(tmp_path_factory.mktemp("demo"), per_algorithm=PER_ALGORITHM, size=SIZE,
                                 seed=SEED, workers=1,
                                 progress=lambda done, total: calls.append((done, total)))
    return result, calls


@pytest.fixture(scope="module")
def collection(generated: tuple[GeneratedCollection, list]) -> GeneratedCollection:
    return generated[0]


@pytest.fixture(scope="module")
def metadata(collection: GeneratedCollection) -> list[dict]:
    return json.loads((collection.root / "metadata" / "_metadata.json").read_text())


# --- layout and metadata ----------------------------------------------------------------------------


def test_summary_and_progress(generated: tuple[GeneratedCollection, list[tuple[int, int]]]) -> None:
    collection, calls = generated
    assert collection.n_tokens == N_TOKENS
    assert collection.algorithms == tuple(ALGORITHMS)
    assert len(collection.algorithms) >= 8
    assert calls == [(done, N_TOKENS) for done in range(1, N_TOKENS + 1)]


def test_layout_has_one_image_and_one_metadata_file_per_token(collection: GeneratedCollection) -> None:
    images = {p.name for p in (collection.root / "images").iterdir()}
    metas = {p.name for p in (collection.root / "metadata").iterdir()}
    assert images == {f"{i}.png" for i in range(N_TOKENS)}
    assert metas == {f"{i}.json" for i in range(N_TOKENS)} | {"_metadata.json"}


def test_metadata_list_matches_per_token_files(collection: GeneratedCollection, metadata: list[dict]) -> None:
    assert len(metadata) == N_TOKENS
    for token_id, meta in enumerate(metadata):
        assert json.loads((collection.root / "metadata" / f"{token_id}.json").read_text()) == meta


def test_metadata_fields_and_trait_values(metadata: list[dict]) -> None:
    hashes = set()
    for token_id, meta in enumerate(metadata):
        assert set(meta) == {"name", "description", "image", "hash", "attributes"}
        assert meta["image"] == f"ipfs://curata-demo/{token_id}.png"
        assert re.fullmatch(r"oo[1-9A-HJ-NP-Za-km-z]{51}", meta["hash"])
        hashes.add(meta["hash"])
        trait_types = [a["trait_type"] for a in meta["attributes"]]
        assert len(trait_types) == len(set(trait_types))
        traits = traits_of(meta)
        algorithm = traits["algorithm"]
        special, values = ALGORITHM_TRAITS[algorithm]
        assert set(traits) == {*REQUIRED_TRAITS, special}
        assert traits[special] in values
        assert traits["density"] in DENSITIES
        assert traits["symmetry"] in SYMMETRIES
        assert traits["stroke"] in STROKES
        assert traits["color"] == PALETTES_BY_NAME[traits["palette"]].dominant
        assert re.fullmatch(rf"{re.escape(algorithm.title())} #[1-{PER_ALGORITHM}]", meta["name"])
        description = meta["description"]
        assert description.startswith(("A ", "An ")) and description.endswith(".")
        assert description.count(".") == 1  # one plain sentence
        for word in (traits["palette"], traits["color"], traits["stroke"], traits[special]):
            assert word.lower() in description.lower()
    assert len(hashes) == N_TOKENS


def test_images_are_rgb_pngs_of_the_requested_size(collection: GeneratedCollection) -> None:
    for token_id in range(N_TOKENS):
        with Image.open(collection.root / "images" / f"{token_id}.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE))


def test_every_algorithm_is_present_equally_and_interleaved(metadata: list[dict]) -> None:
    algorithms = [traits_of(m)["algorithm"] for m in metadata]
    assert Counter(algorithms) == {name: PER_ALGORITHM for name in ALGORITHMS}
    assert algorithms[: len(ALGORITHMS)] == list(ALGORITHMS)  # any prefix shows every family


# --- determinism ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_with_any_worker_count(collection: GeneratedCollection,
                                                              tmp_path: Path) -> None:
    again = generate_collection(tmp_path / "again", per_algorithm=PER_ALGORITHM, size=SIZE, seed=SEED,
                                workers=2)
    assert read_tree(again.root) == read_tree(collection.root)


def test_different_seed_gives_a_different_collection(collection: GeneratedCollection, metadata: list[dict],
                                                     tmp_path: Path) -> None:
    other = generate_collection(tmp_path / "other", per_algorithm=PER_ALGORITHM, size=SIZE, seed=SEED + 1,
                                workers=1)
    other_meta = json.loads((other.root / "metadata" / "_metadata.json").read_text())
    assert all(a["hash"] != b["hash"] for a, b in zip(metadata, other_meta, strict=True))
    ours, theirs = read_tree(collection.root), read_tree(other.root)
    differing = sum(ours[f"images/{i}.png"] != theirs[f"images/{i}.png"] for i in range(N_TOKENS))
    assert differing >= N_TOKENS - 1


def test_regenerating_a_smaller_collection_leaves_no_stale_tokens(tmp_path: Path) -> None:
    generate_collection(tmp_path, per_algorithm=2, size=32, workers=1)
    smaller = generate_collection(tmp_path, per_algorithm=1, size=32, workers=1)
    assert len(list((tmp_path / "images").glob("*.png"))) == smaller.n_tokens == len(ALGORITHMS)
    assert len(list((tmp_path / "metadata").glob("*.json"))) == smaller.n_tokens + 1


# --- traits are true to the pixels ------------------------------------------------------------------


def test_palettes_read_as_their_dominant_colour_and_cover_most_basic_colours() -> None:
    for palette in PALETTES:
        background = np.array([[hex_to_rgb(palette.colors[0])]], np.uint8)
        shares = basic_colour_shares(background)
        assert max(shares, key=shares.get) == palette.dominant, palette.name
    assert len({p.dominant for p in PALETTES}) >= 10
    assert {p.dominant for p in PALETTES} <= set(BASIC_COLOURS)


def test_color_trait_is_the_most_frequent_basic_colour_in_the_image(collection: GeneratedCollection,
                                                                     metadata: list[dict]) -> None:
    agree = 0
    for token_id, meta in enumerate(metadata):
        image = np.asarray(Image.open(collection.root / "images" / f"{token_id}.png"))
        shares = basic_colour_shares(image)
        agree += max(shares, key=shares.get) == traits_of(meta)["color"]
    assert agree / N_TOKENS >= 0.9


INK_WASH = PALETTES_BY_NAME["ink wash"]


def render(algorithm: str, seed: int, size: int = SIZE, **overrides: str) -> np.ndarray:
    """One rendering with fixed traits (medium density and stroke, no symmetry) unless overridden."""
    special, values = ALGORITHM_TRAITS[algorithm]
    traits = {"algorithm": algorithm, "palette": INK_WASH.name, "color": INK_WASH.dominant,
              "density": "medium", "symmetry": "none", "stroke": "medium",
              special: values[seed % len(values)], **overrides}
    image = ALGORITHMS[algorithm](np.random.default_rng(seed), INK_WASH, traits, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    return image


def ink_mask(image: np.ndarray) -> np.ndarray:
    return np.any(image != INK_WASH.rgb_array()[0], axis=2)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_density_controls_how_much_is_drawn(algorithm: str) -> None:
    def mean_ink(density: str) -> float:
        shares = [ink_mask(render(algorithm, seed, density=density)).mean() for seed in range(3)]
        return float(np.mean(shares))

    sparse, dense = mean_ink("sparse"), mean_ink("dense")
    assert 0 < sparse < dense < 0.5


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_stroke_controls_line_weight(algorithm: str) -> None:
    # Share of the main ink's pixels that survive a 3x3 erosion: ~0 for hairlines, high for bold strokes.
    # The main ink draws the lines, outlines and dots; filled areas in other inks would blur the measure.
    main_ink = INK_WASH.rgb_array()[1]

    def solidity(stroke: str) -> float:
        shares = []
        for seed in range(3):
            image = render(algorithm, seed, size=96, stroke=stroke)
            mask = np.all(image == main_ink, axis=2).astype(np.uint8)
            shares.append(cv2.erode(mask, np.ones((3, 3), np.uint8)).sum() / max(mask.sum(), 1))
        return float(np.mean(shares))

    assert solidity("bold") > solidity("thin") + 0.1


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_symmetry_is_applied(algorithm: str) -> None:
    mirrored = render(algorithm, 1, symmetry="mirror")
    assert np.array_equal(mirrored, mirrored[:, ::-1])
    # The kaleidoscope has a mirror axis through the centre along the horizontal.
    radial = render(algorithm, 1, symmetry="radial")
    assert np.all(radial == radial[::-1], axis=2).mean() > 0.99
    assert ink_mask(radial).any() and ink_mask(mirrored).any()


def test_algorithms_are_visually_distinct_families() -> None:
    # Palette-free, position-free descriptor: the log power spectrum of the ink mask, pooled to 16x16.
    def descriptor(image: np.ndarray) -> np.ndarray:
        mask = ink_mask(image).astype(np.float64)
        spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(mask - mask.mean()))))
        pooled = cv2.resize(spectrum.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA).ravel()
        return pooled / (np.linalg.norm(pooled) + 1e-9)

    families = {name: [descriptor(render(name, seed)) for seed in range(4)] for name in ALGORITHMS}

    def mean_distance(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        return float(np.mean([np.linalg.norm(a - b) for a, b in pairs]))

    within = {name: mean_distance(list(itertools.combinations(d, 2))) for name, d in families.items()}
    between = {
        name: mean_distance([(a, b) for other, e in families.items() if other != name for a in d for b in e])
        for name, d in families.items()
    }
    for name in families:
        assert within[name] < between[name], name
    assert np.mean(list(between.values())) > 1.15 * np.mean(list(within.values()))
