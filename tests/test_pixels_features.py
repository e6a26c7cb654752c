"""The raw-pixel extractor, on tiny images the tests draw: exact values, resampling, odd inputs, caching."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from curata.features.base import REGISTRY, ItemError
from curata.features.engine import compute, load_batch, load_matrix, make_extractor
from curata.features.pixels import Pixels, is_pixel_art, resize_pixels
from curata.ingest.pipeline import ingest
from curata.workspace import Workspace

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def pattern_2x2() -> np.ndarray:
    return np.array([[RED, BLUE], [GREEN, (10, 20, 30)]], np.uint8)


def grid_art(cells: int, scale: float, seed: int = 0, colours: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Random pixel art of cells x cells, upscaled with NEAREST to round(cells * scale) px: (art, big)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    art = palette[rng.integers(0, colours, (cells, cells))]
    side = round(cells * scale)
    big = np.asarray(Image.fromarray(art).resize((side, side), Image.Resampling.NEAREST))
    return art, big


def load_one(extractor: Pixels, path: Path) -> np.ndarray:
    """Load through the engine's own loader (load_image + prepare in a thread), then transform."""
    with ThreadPoolExecutor(1) as pool:
        [(item, error)] = load_batch(extractor, [str(path)], pool)
    assert error is None, error
    return extractor.transform([item])[0]


def test_registered_and_key_changes_with_parameters():
    assert REGISTRY["pixels"] is Pixels
    default = make_extractor("pixels")
    assert default.dim == 24 * 24 * 3
    assert default.key == "pixels@1[resample=auto,size=24]"
    keys = {default.key, Pixels(size=32).key, Pixels(resample="area").key, Pixels(levels=3).key}
    assert len(keys) == 4
    assert Pixels(size=8, levels=3).dim == 8 * 8 * (3 + 27)
    assert Pixels(size="16").size == 16  # CLI parameters arrive as strings


@pytest.mark.parametrize("params", [{"size": 0}, {"size": 500}, {"resample": "bicubic"}, {"levels": 1},
                                    {"levels": 9}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(ValueError, match="pixels"):
        Pixels(**params)


def test_nearest_upscale_of_a_2x2_pattern_is_exact():
    out = Pixels(size=8).transform([pattern_2x2()])[0].reshape(8, 8, 3)
    expected = np.repeat(np.repeat(pattern_2x2(), 4, axis=0), 4, axis=1) / np.float32(255)
    np.testing.assert_array_equal(out, expected)
    # row-major (y, x, channel): the first value is the red channel of the top-left pixel
    assert out.dtype == np.float32 and out[0, 0, 0] == 1.0 and out[0, 7, 2] == 1.0 and out[7, 0, 1] == 1.0


def test_same_size_is_passed_through_unchanged():
    img = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(Pixels().transform([img])[0], img.reshape(-1) / np.float32(255))


@pytest.mark.parametrize("scale", [4.0, 13.125])  # integer, and the 420 px / 32 cells of a real NFT collection
def test_upscaled_pixel_art_is_recovered_exactly(scale):
    art, big = grid_art(32, scale)
    assert is_pixel_art(big, 32)
    np.testing.assert_array_equal(resize_pixels(big, 32), art)
    # Area averaging blends neighbouring cells at non-integer scales into colours the art never had.
    area = resize_pixels(big, 32, "area")
    assert scale == 4.0 or not np.array_equal(area, art)


def test_photo_is_area_averaged():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)  # thousands of colours: not pixel art
    assert not is_pixel_art(photo, 24)
    small = resize_pixels(photo, 24)
    block_means = photo.reshape(24, 2, 24, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small - block_means).max() <= 1.0
    # forcing NEAREST picks one source pixel per cell instead
    nearest = resize_pixels(photo, 24, "nearest")
    assert np.isin(nearest.reshape(-1, 3).view([("", np.uint8)] * 3), photo.reshape(-1, 3).view([("", np.uint8)] * 3)
                   ).all()
    assert np.abs(nearest.astype(float) - block_means).max() > 20


def test_transparent_pixels_get_the_loader_background(tmp_path: Path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # one opaque red pixel, three fully transparent ones
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_one(Pixels(size=2), tmp_path / "a.png").reshape(2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(out.reshape(-1, 3)[1:], np.ones((3, 3)))  # white background


def test_odd_images_do_not_break(tmp_path: Path):
    ex = Pixels(size=6, levels=2)
    one = load_one(ex, write_image(tmp_path / "one.png", size=(1, 1), color=(90, 90, 90)))
    rgb = one[: 6 * 6 * 3].reshape(-1, 3)
    assert (rgb == rgb[0]).all()  # a 1x1 image fills the grid with its colour
    assert (one[6 * 6 * 3:].reshape(36, 8) == one[6 * 6 * 3:8 + 6 * 6 * 3]).all()  # and its colour code
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L").save(gray)
    g = load_one(ex, gray)[: 6 * 6 * 3].reshape(6, 6, 3)
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 5, 10))
    pal.save(tmp_path / "palette.png", transparency=0)  # index 0 (blue) is transparent
    p = load_one(Pixels(size=2), tmp_path / "palette.png").reshape(2, 2, 3)
    np.testing.assert_array_equal(p[:, 0], [[1, 0, 0]] * 2)
    np.testing.assert_array_equal(p[:, 1], [[1, 1, 1]] * 2)
    huge = load_one(Pixels(size=4), write_image(tmp_path / "huge.jpg", size=(1600, 1200), fmt="JPEG"))
    assert huge.shape == (48,) and huge.min() >= 0 and huge.max() <= 1
    # A 2-D gray array given directly is accepted; a wrong shape is an item error.
    assert Pixels(size=2).transform([np.zeros((5, 5), np.uint8)]).shape == (1, 12)
    with pytest.raises(ItemError):
        Pixels(size=2).transform([np.zeros((5, 5, 4), np.uint8)])


def test_one_hot_colour_code():
    ex = Pixels(size=2, levels=2)
    out = ex.transform([pattern_2x2()])[0]
    rgb, code = out[:12], out[12:].reshape(4, 8)
    np.testing.assert_array_equal(rgb, pattern_2x2().reshape(-1) / np.float32(255))
    assert (code.sum(axis=1) == 1).all()
    # index = (r * levels + g) * levels + b on the 0/1 grid: red 4, blue 1, green 2, near-black 0
    assert list(code.argmax(axis=1)) == [4, 1, 2, 0]


def test_engine_computes_and_caches_in_a_workspace(tmp_path: Path):
    src = tmp_path / "src"
    art, big = grid_art(8, 5.0, seed=2)
    src.mkdir()
    Image.fromarray(big).save(src / "art.png")
    write_image(src / "photo.jpg", size=(64, 48), fmt="JPEG")
    ws = Workspace(tmp_path / "ws")
    ingest(src, ws)
    run = compute(make_extractor("pixels", size=8), ws)
    assert (run.computed, run.errors) == (2, 0)
    assert compute(make_extractor("pixels", size=8), ws).computed == 0  # cached
    assert compute(make_extractor("pixels", size=4), ws).computed == 2  # another size, another key
    matrix, errors = load_matrix(ws, make_extractor("pixels", size=8))
    row = [Path(p).name for p in ws.items()["image"]].index("art.png")
    assert errors == [None, None] and matrix.shape == (2, 192)
    np.testing.assert_array_equal(matrix[row], art.reshape(-1) / np.float32(255))


def test_pixels_onehot_is_its_own_extractor():
    ex = make_extractor("pixels_onehot")
    assert ex.dim == 24 * 24 * (3 + 27) and "levels=3" in ex.key and ex.key != make_extractor("pixels").key


# The tagger these features are used with -----------------------------------------------------------


def test_ridge_tagger_equals_sklearn_ridge_in_primal_and_dual_form():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from curata.tasks.tags import RidgeTagger

    rng = np.random.default_rng(0)
    for n, d in [(200, 40), (40, 200)]:  # d <= n: Gram matrix; d > n: kernel
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 3] = 1.0  # a constant column is dropped, not divided by a zero std
        y = np.column_stack([x[:, 0] + x[:, 1] > 0, x[:, 5] > 0.5]).astype(np.int8)
        ours = RidgeTagger(alpha=0.01, clip=False).fit(x, y).predict_proba(x)
        keep = x.std(axis=0) > 0
        z = StandardScaler().fit_transform(x[:, keep])
        np.testing.assert_allclose(ours, Ridge(alpha=0.01 * n).fit(z, y).predict(z), atol=1e-4)
        clipped = RidgeTagger(alpha=0.01).fit(x, y).predict_proba(x)
        assert clipped.min() >= 0 and clipped.max() <= 1 and (clipped == np.clip(ours, 0, 1)).all()


def test_ridge_on_pixels_tags_synthetic_sprites():
    """Sprites on a shared 8x8 grid; each tag paints its own small patch in its own colour, like a
    CryptoPunk accessory. Thresholded ridge on pixels_onehot features recovers the tags of unseen sprites."""
    from curata.tasks.tags import RidgeTagger, ThresholdedTagger

    rng = np.random.default_rng(4)
    patches = [((1, 1), (200, 30, 30)), ((5, 2), (30, 200, 30)), ((3, 6), (240, 240, 40)), ((6, 6), (20, 20, 20))]
    n = 240
    y = (rng.random((n, len(patches))) < 0.3).astype(np.int8)
    images = np.empty((n, 8, 8, 3), np.uint8)
    for i in range(n):
        images[i] = rng.choice([(120, 90, 60), (200, 160, 120), (90, 60, 40)])  # skin tones
        for j, ((r, c), colour) in enumerate(patches):
            if y[i, j]:
                images[i, r:r + 2, c:c + 2] = colour
    x = Pixels(size=8, levels=3).transform(list(images))
    model = ThresholdedTagger(RidgeTagger(), inner_folds=3).fit({"pixels_onehot": x[:160]}, y[:160])
    assert (model.predict({"pixels_onehot": x[160:]}) == y[160:]).mean() > 0.97
