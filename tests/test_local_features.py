"""Bags of visual words (ORB, SIFT) on textured images the tests draw themselves."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from curata.features.base import REGISTRY
from curata.features.local import OrbBoVW, SiftBoVW

EXTRACTORS = [OrbBoVW, SiftBoVW]


def textured(seed: int, size: int = 256) -> np.ndarray:
    """Shapes, a checkerboard patch and grain: plenty of corners and blobs for both detectors."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(25):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(4, 30)), color, -1)
        else:
            corner = (x + int(rng.integers(6, 50)), y + int(rng.integers(6, 50)))
            cv2.rectangle(img, (x, y), corner, color, -1)
    yy, xx = np.mgrid[0:64, 0:64]
    img[16:80, 16:80] = (((yy // 8 + xx // 8) % 2) * 255)[..., None].astype(np.uint8)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [textured(seed) for seed in range(6)]


@pytest.fixture(scope="module", params=EXTRACTORS, ids=lambda c: c.name)
def fitted(request, images):
    return request.param(vocab_size=32).fit(images)


def test_registered_and_declared():
    for cls in EXTRACTORS:
        assert REGISTRY[cls.name] is cls and cls.needs_fit
    assert OrbBoVW().dim == 256 and OrbBoVW().key == "orb_bovw@1[max_keypoints=500,vocab_size=256]"
    assert SiftBoVW(vocab_size=64).key != SiftBoVW().key


@pytest.mark.parametrize("cls", EXTRACTORS, ids=lambda c: c.name)
def test_transform_before_fit_is_a_clear_error(cls):
    ex = cls()
    assert not ex.is_fitted
    with pytest.raises(NotFittedError, match="fit"):
        ex.transform([textured(0)])


def test_histograms(fitted, images):
    assert fitted.is_fitted and fitted.vocabulary_.shape == (32, fitted.descriptor_dim)
    out = fitted.transform(images)
    assert out.shape == (len(images), 32) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert (out >= 0).all()
    assert (out > 0).sum(axis=1).min() > 3  # textured images use several words, not one
    np.testing.assert_array_equal(fitted.transform(images), out)  # deterministic


def test_flat_and_tiny_images_are_flagged(fitted, images):
    flat = np.full((200, 300, 3), 90, np.uint8)
    one = np.zeros((1, 1, 3), np.uint8)
    out, empty = fitted.transform_with_flags([images[0], flat, one, images[1]])
    assert empty.tolist() == [False, True, True, False]
    assert (out[1:3] == 0).all()
    np.testing.assert_allclose(out[[0, 3]].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fitted.transform([images[0], flat, one, images[1]]), out)


def test_pixel_art_sprite_gets_keypoints(fitted):
    # A 24 px sprite is all border for a detector; it is enlarged (NEAREST) so it still has words.
    sprite = np.zeros((24, 24, 3), np.uint8)
    sprite[4:20, 6:18] = (200, 60, 40)
    sprite[8:11, 8:10] = 255
    sprite[14:16, 7:17] = (30, 30, 160)
    out, empty = fitted.transform_with_flags([sprite])
    assert not empty[0] and out[0].sum() == pytest.approx(1.0, abs=1e-5)


def test_large_image_is_detected_at_bounded_size(fitted):
    big = cv2.resize(textured(9), (1600, 1200), interpolation=cv2.INTER_NEAREST)
    desc = fitted.descriptors(big)
    assert 0 < len(desc) <= fitted.max_keypoints
    out, empty = fitted.transform_with_flags([big])
    assert not empty[0] and out[0].sum() == pytest.approx(1.0, abs=1e-5)


def test_save_load_roundtrip(fitted, images, tmp_path):
    fitted.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"vocabulary.npy", "extractor.json"}
    meta = json.loads((tmp_path / "extractor.json").read_text())
    assert meta["key"] == fitted.key and meta["n_fit_images"] == len(images)
    fresh = type(fitted)(vocab_size=32)
    assert not fresh.is_fitted
    assert fresh.load(tmp_path) is fresh and fresh.is_fitted
    np.testing.assert_array_equal(fresh.transform(images), fitted.transform(images))
    with pytest.raises(ValueError, match="vocab_size"):
        type(fitted)(vocab_size=64).load(tmp_path)  # another vocabulary size must not load silently
    other = OrbBoVW if type(fitted) is SiftBoVW else SiftBoVW
    with pytest.raises(ValueError):
        other(vocab_size=32).load(tmp_path)


def test_fit_is_deterministic(images):
    a = OrbBoVW(vocab_size=32).fit(images[:4])
    b = OrbBoVW(vocab_size=32).fit(images[:4])
    np.testing.assert_array_equal(a.vocabulary_, b.vocabulary_)


def test_default_vocabulary_size(images):
    ex = OrbBoVW().fit(images)  # 6 textured images give enough ORB descriptors for 256 words
    out = ex.transform(images[:2])
    assert out.shape == (2, 256)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_fit_without_enough_keypoints_explains_itself():
    flat = [np.full((100, 100, 3), v, np.uint8) for v in (0, 128, 255)]
    with pytest.raises(ValueError, match="fewer than the vocabulary size"):
        OrbBoVW(vocab_size=8).fit(flat)
    with pytest.raises(ValueError):
        OrbBoVW(vocab_size=1)
