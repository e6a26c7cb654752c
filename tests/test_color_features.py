"""Colour statistics, histograms, colour names and palettes, on images the tests draw themselves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curata.features import color as color_mod
from curata.features.base import REGISTRY, ItemError
from curata.features.color import COLOR_STAT_NAMES, ColorHistogram, ColorStats, color_stats, sample_pixels
from curata.features.colornames import (
    BASIC_COLORS,
    CSS_COLORS,
    delta_e_ciede2000,
    hex_to_rgb,
    lab_to_rgb,
    name_colors,
    rgb_to_lab,
)
from curata.features.palette import (
    PaletteExtractor,
    describe_palette,
    dominant_color_names,
    extract_palette,
)

# --------------------------------------------------------------------------------------------------
# images


def shapes_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, min(h, w), 2))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(3, 30)), color, -1)
        else:
            corner = (x + int(rng.integers(3, 40)), y + int(rng.integers(3, 40)))
            cv2.rectangle(img, (x, y), corner, color, -1)
    return img


def gradient_image(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)]
    return np.stack(channels, -1).astype(np.uint8)


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def checkerboard(h: int, w: int, a=(255, 0, 0), b=(0, 0, 255), cell: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // cell + xx // cell) % 2).astype(bool)
    img = np.empty((h, w, 3), np.uint8)
    img[~mask], img[mask] = a, b
    return img


def two_colour(h: int, w: int, a=(255, 0, 0), b=(0, 128, 128), frac: float = 0.7) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    split = round(w * frac)
    img[:, :split], img[:, split:] = a, b
    return img


def solid(color, h: int = 20, w: int = 30) -> np.ndarray:
    return np.full((h, w, 3), color, np.uint8)


def reference_stats(rgb: np.ndarray) -> np.ndarray:
    """The reference project's definition, written out independently: BGR, HSV, Lab; mean, pop. std."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    spaces = [bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)]
    flat = [s.reshape(-1, 3).astype(np.float64) for s in spaces]
    return np.concatenate([f.mean(axis=0) for f in flat] + [f.std(axis=0) for f in flat])


# --------------------------------------------------------------------------------------------------
# ColorStats


def test_names_order_and_registry():
    expected = [
        "b_bgr_mean", "g_bgr_mean", "r_bgr_mean", "h_hsv_mean", "s_hsv_mean", "v_hsv_mean",
        "l_lab_mean", "a_lab_mean", "b_lab_mean",
        "b_bgr_std", "g_bgr_std", "r_bgr_std", "h_hsv_std", "s_hsv_std", "v_hsv_std",
        "l_lab_std", "a_lab_std", "b_lab_std",
    ]  # fmt: skip
    assert list(COLOR_STAT_NAMES) == expected
    assert ColorStats().dim == 18 and ColorStats().feature_names == COLOR_STAT_NAMES
    for name in ("color_stats", "color_hist", "palette"):
        assert name in REGISTRY
    assert ColorStats().key == "color_stats@1"


@pytest.mark.parametrize(
    "image",
    [
        shapes_image(),
        gradient_image(),
        noise_image(48, 64),
        checkerboard(33, 17, cell=3),
        solid((12, 200, 90)),
        solid((7, 7, 7), 1, 1),
        np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2),  # gray as RGB
    ],
    ids=["shapes", "gradient", "noise", "checker", "solid", "1x1", "gray"],
)
def test_stats_equal_direct_cv2(image):
    np.testing.assert_allclose(color_stats(image), reference_stats(image), rtol=1e-10, atol=1e-9)
    out = ColorStats().transform([image])
    assert out.shape == (1, 18) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], reference_stats(image), rtol=1e-6, atol=1e-4)


def test_stats_known_values():
    v = color_stats(solid((255, 0, 0), 4, 4))
    named = dict(zip(COLOR_STAT_NAMES, v, strict=True))
    assert (named["r_bgr_mean"], named["g_bgr_mean"], named["b_bgr_mean"]) == (255, 0, 0)
    assert (named["h_hsv_mean"], named["s_hsv_mean"], named["v_hsv_mean"]) == (0, 255, 255)
    assert all(named[n] == 0 for n in COLOR_STAT_NAMES[9:])
    gray = color_stats(solid((128, 128, 128), 3, 3))
    assert gray[COLOR_STAT_NAMES.index("s_hsv_mean")] == 0
    assert gray[COLOR_STAT_NAMES.index("a_lab_mean")] == 128  # OpenCV's 8-bit Lab: neutral a = 128


def test_batch_and_non_contiguous_input():
    a, b = shapes_image(seed=1), gradient_image()
    out = ColorStats().transform([a, b])
    np.testing.assert_allclose(out[1], reference_stats(b), rtol=1e-6, atol=1e-4)
    flipped = a[:, ::-1]  # a view with negative strides, which OpenCV refuses as such
    expected = reference_stats(np.ascontiguousarray(flipped))
    np.testing.assert_allclose(color_stats(flipped), expected, atol=1e-9)
    gray2d = gradient_image()[:, :, 0]
    np.testing.assert_allclose(color_stats(gray2d), color_stats(np.dstack([gray2d] * 3)))


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 5, 3), np.uint8)]
)
def test_bad_inputs_are_item_errors(bad):
    with pytest.raises(ItemError):
        ColorStats().transform([bad])


def within_one_percent(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative error <= 1%, or <= 1% of the channel's range for values near 0."""
    ranges = np.array([255, 255, 255, 180, 255, 255, 255, 255, 255] * 2, np.float64)
    err = np.abs(ours - ref)
    return (err <= 0.01 * np.abs(ref)) | (err <= 0.01 * ranges)


def test_large_noisy_image_within_one_percent_of_full_resolution():
    h = w = 2000
    assert h * w > color_mod.EXACT_MAX_PIXELS  # this exercises the sampled path
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / h
    img = np.stack([255 * xx, 255 * yy, 128 + 100 * np.sin(6 * xx * yy)], -1)
    img += np.random.default_rng(3).normal(0, 25, (h, w, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    cv2.circle(img, (700, 900), 300, (250, 220, 10), -1)
    img[:400, 1500:] = checkerboard(400, 500)  # a 1-px pattern that a fixed stride would alias
    ref = reference_stats(img)
    ours = ColorStats().transform([img])[0].astype(np.float64)
    assert within_one_percent(ours, ref).all(), dict(zip(COLOR_STAT_NAMES, np.abs(ours - ref), strict=True))
    assert np.array_equal(ColorStats().transform([img])[0], ours.astype(np.float32))  # deterministic


def test_jittered_sample_does_not_alias_on_a_checkerboard():
    img = checkerboard(1200, 1200)  # red/blue alternating every pixel
    strided = img[::2, ::2]  # the trap: an even stride sees one colour only
    assert len(np.unique(strided.reshape(-1, 3), axis=0)) == 1
    ours = color_stats(img)
    ref = reference_stats(img)
    assert within_one_percent(ours, ref).all()
    sample = sample_pixels(img, 10_000)
    assert sample.shape[0] * sample.shape[1] <= 10_000
    red_share = (sample[..., 0] == 255).mean()
    assert 0.45 < red_share < 0.55


def test_max_side_is_full_resolution():
    # Draft decoding averages pixel blocks and shifts the stds by >1% on textured photos (see the
    # comment in ColorStats); the speed comes from sampling instead.
    assert ColorStats.max_side is None


# --------------------------------------------------------------------------------------------------
# ColorHistogram


def test_histograms_sum_to_one_per_space():
    ex = ColorHistogram()
    assert ex.dim == 8 * 4 * 4 + 4 * 7 * 7
    images = [shapes_image(), gradient_image(), solid((0, 0, 0), 1, 1), noise_image(1200, 1100)]
    out = ex.transform(images)
    assert out.shape == (4, ex.dim) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :128].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(out[:, 128:].sum(axis=1), 1, atol=1e-5)
    assert (out >= 0).all()


def test_histogram_equals_direct_binning():
    img = shapes_image(seed=4)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(int)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(int)
    hue = (hsv[:, 0] + 90 // 8) % 180  # rotated by half a hue bin
    hsv_idx = (hue * 8 // 180) * 16 + (hsv[:, 1] * 4 // 256) * 4 + hsv[:, 2] * 4 // 256
    lab_idx = (lab[:, 0] * 4 // 256) * 49 + (lab[:, 1] * 7 // 256) * 7 + lab[:, 2] * 7 // 256
    expected = np.concatenate(
        [np.bincount(hsv_idx, minlength=128) / len(hsv), np.bincount(lab_idx, minlength=196) / len(lab)]
    )
    np.testing.assert_allclose(ColorHistogram().transform([img])[0], expected, atol=1e-7)


def test_histogram_params_change_the_key():
    a, b = ColorHistogram(), ColorHistogram(hsv_bins=(12, 3, 3), lab_bins=(3, 5, 5))
    assert a.key != b.key and b.dim == 12 * 3 * 3 + 3 * 5 * 5
    assert b.params() == {"hsv_bins": "12x3x3", "lab_bins": "3x5x5"}
    rebuilt = ColorHistogram(**b.params())
    assert rebuilt.key == b.key
    np.testing.assert_array_equal(rebuilt.transform([shapes_image()]), b.transform([shapes_image()]))
    with pytest.raises(ValueError):
        ColorHistogram(hsv_bins=(8, 0, 4))


def test_red_is_not_split_across_the_hue_wrap():
    ex = ColorHistogram()
    pure, bluish = ex.transform([solid((255, 0, 0)), solid((255, 0, 8))])
    hsv = cv2.cvtColor(solid((255, 0, 8), 1, 1), cv2.COLOR_RGB2HSV)[0, 0]
    assert hsv[0] > 170  # OpenCV puts this red at the top of the hue range...
    np.testing.assert_array_equal(pure, bluish)  # ...and it still shares pure red's bin


# --------------------------------------------------------------------------------------------------
# colour names, Lab, CIEDE2000

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1: (Lab1, Lab2, dE00).
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_published_pairs():
    lab1 = np.array([p[0] for p in SHARMA_PAIRS])
    lab2 = np.array([p[1] for p in SHARMA_PAIRS])
    expected = np.array([p[2] for p in SHARMA_PAIRS])
    np.testing.assert_allclose(delta_e_ciede2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(delta_e_ciede2000(lab2, lab1), expected, atol=1e-4)  # symmetric
    assert delta_e_ciede2000(lab1[:, None, :], lab2[None, :, :]).shape == (len(lab1), len(lab2))
    assert delta_e_ciede2000([50.0, 10.0, -5.0], [50.0, 10.0, -5.0]) == 0


def test_rgb_to_lab_reference_values():
    rgb = np.array([[255, 0, 0], [255, 255, 255], [0, 0, 0], [0, 0, 255]], np.uint8)
    lab = rgb_to_lab(rgb)
    np.testing.assert_allclose(lab[0], [53.2408, 80.0925, 67.2032], atol=5e-3)
    np.testing.assert_allclose(lab[1], [100, 0, 0], atol=1e-2)  # published D65 white: |a|,|b| < 0.005
    np.testing.assert_allclose(lab[2], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(lab[3], [32.2970, 79.1875, -107.8602], atol=5e-3)
    np.testing.assert_allclose(rgb_to_lab(rgb / 255.0), lab, atol=1e-9)  # float input in 0..1
    assert rgb_to_lab(np.zeros((2, 5, 3), np.uint8)).shape == (2, 5, 3)  # vectorised over any shape
    colours = noise_image(40, 50).reshape(-1, 3)
    np.testing.assert_array_equal(lab_to_rgb(rgb_to_lab(colours)), colours)  # exact round trip


def test_vocabularies():
    assert set(BASIC_COLORS) == {
        "black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
        "teal",
    }  # fmt: skip
    assert len(CSS_COLORS) == 148
    assert all(len(hex_to_rgb(h)) == 3 for h in CSS_COLORS.values())
    with pytest.raises(ValueError):
        name_colors(np.array([[1, 2, 3]], np.uint8), vocabulary="x11")  # type: ignore[arg-type]


def test_basic_names():
    cases = {
        (255, 0, 0): "red",
        (0, 128, 128): "teal",
        (255, 165, 0): "orange",
        (255, 255, 255): "white",
        (0, 0, 0): "black",
        (128, 128, 128): "gray",
        (0, 0, 128): "blue",  # navy
        (135, 206, 235): "blue",  # sky blue
        (34, 139, 34): "green",
        (250, 240, 30): "yellow",
        (128, 0, 128): "purple",
        (255, 182, 193): "pink",
        (139, 69, 19): "brown",
        (64, 224, 208): "teal",
        (245, 245, 245): "white",
        (20, 20, 22): "black",
    }
    named = name_colors(np.array(list(cases), np.uint8), "basic")
    assert [n for n, _ in named] == list(cases.values())
    assert named[0][1] == pytest.approx(0, abs=1e-9)  # a reference point is at distance 0


def test_css_names():
    cases = {
        (255, 165, 0): "orange",
        (70, 130, 180): "steelblue",
        (0, 255, 255): "cyan",  # alias of aqua: one spelling is returned
        (128, 128, 128): "gray",  # not "grey"
        (72, 131, 182): "steelblue",  # near, not equal
        (254, 0, 1): "red",
    }
    named = name_colors(np.array(list(cases), np.uint8), "css")
    assert [n for n, _ in named] == list(cases.values())
    assert 0 < named[4][1] < 2


# --------------------------------------------------------------------------------------------------
# palette


def test_two_colour_palette():
    img = two_colour(40, 100)  # 70% red, 30% teal; 4000 pixels, all of them used
    ex = PaletteExtractor()
    assert ex.dim == 20 and ex.key == "palette@2[k=5]"
    vec = ex.transform([img])[0]
    entries = vec.reshape(5, 4)
    np.testing.assert_allclose(entries[:2, 3], [0.7, 0.3], atol=1e-6)
    np.testing.assert_allclose(entries[0, :3], rgb_to_lab(np.array([255, 0, 0], np.uint8)), atol=1e-4)
    np.testing.assert_allclose(entries[1, :3], rgb_to_lab(np.array([0, 128, 128], np.uint8)), atol=1e-4)
    assert (entries[2:, 3] == 0).all()  # padding: share 0, repeated colour
    desc = describe_palette(vec, 5)
    expected = [("red", "red", "#ff0000"), ("teal", "teal", "#008080")]
    assert [(d["basic"], d["css"], d["hex"]) for d in desc] == expected
    assert desc[0]["rgb"] == (255, 0, 0) and desc[0]["share"] == pytest.approx(0.7)
    assert desc[0]["delta_e"] == pytest.approx(0, abs=0.01)
    names = dominant_color_names(vec, 5)
    assert [n for n, _ in names] == ["red", "teal"]
    assert names[0][1] == pytest.approx(0.7, abs=1e-6)


def test_large_two_colour_image_is_sampled_but_shares_hold():
    img = two_colour(1000, 1000, frac=0.7)
    shares = extract_palette(img).reshape(5, 4)[:, 3]
    np.testing.assert_allclose(shares[:2], [0.7, 0.3], atol=0.02)


@pytest.mark.parametrize(
    ("image", "name"),
    [
        (solid((255, 255, 255)), "white"),
        (solid((0, 0, 0)), "black"),
        (solid((40, 90, 200)), "blue"),
        (solid((255, 0, 0), 1, 1), "red"),
    ],
    ids=["white", "black", "single", "1x1"],
)
def test_degenerate_palettes(image, name):
    vec = PaletteExtractor().transform([image])[0]
    entries = vec.reshape(5, 4)
    assert entries[0, 3] == pytest.approx(1.0) and (entries[1:, 3] == 0).all()
    assert np.isfinite(vec).all()
    desc = describe_palette(vec)
    assert len(desc) == 1 and desc[0]["basic"] == name
    assert dominant_color_names(vec) == [(name, pytest.approx(1.0))]


def test_fewer_colours_than_k():
    img = two_colour(30, 30, (255, 255, 0), (0, 0, 255), frac=0.5)
    img[:10] = (0, 128, 0)
    entries = extract_palette(img, k=5).reshape(5, 4)
    assert (entries[:3, 3] > 0).all() and (entries[3:, 3] == 0).all()
    assert len(describe_palette(entries.ravel())) == 3


def test_kmeans_palette_is_deterministic_and_sorted():
    grain = noise_image(200, 240)[..., :1] // 8
    img = np.clip(shapes_image(200, 240, seed=5).astype(np.int16) + grain, 0, 255).astype(np.uint8)
    a = PaletteExtractor(k=4).transform([img])[0]
    b = PaletteExtractor(k=4).transform([img.copy()])[0]
    np.testing.assert_array_equal(a, b)
    shares = a.reshape(4, 4)[:, 3]
    assert (shares > 0).all() and shares.sum() == pytest.approx(1.0, abs=1e-6)
    assert (np.diff(shares) <= 0).all()
    assert PaletteExtractor(k=4).dim == 16 and PaletteExtractor(k=4).key == "palette@2[k=4]"
    with pytest.raises(ValueError):
        PaletteExtractor(k=0)


def test_dominant_names_merge_entries_with_one_name():
    rgb = np.array([[0, 0, 128], [255, 255, 255], [135, 206, 235]], np.uint8)  # navy, white, sky blue
    lab = rgb_to_lab(rgb)
    vec = np.concatenate([np.r_[lab[0], 0.4], np.r_[lab[1], 0.35], np.r_[lab[2], 0.25]])
    names = dominant_color_names(vec, 3)
    assert [n for n, _ in names] == ["blue", "white"]
    assert names[0][1] == pytest.approx(0.65)
    css = dominant_color_names(vec, 3, vocabulary="css")
    assert [n for n, _ in css] == ["navy", "white", "skyblue"]
    with pytest.raises(ValueError):
        describe_palette(vec, 5)  # wrong k for the vector length
