"""Fine-tuning EfficientNet-Lite0's last block on cached trunk activations, and TTA features.

Uses the machine's ONNX cache (the Lite0 and trunk exports happen once per machine, as for the other
tests that embed images), and small drawn images: 3 classes of distinct shapes and colours.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import Recorder
from curata.features.base import REGISTRY
from curata.features.efficientnet import (
    EfficientNetLite0,
    EfficientNetLite0TTA,
    centre_crop,
    tta_views,
)
from curata.tasks.finetune import FineTuneError, FineTuner

CLASSES = ("disc", "square", "triangle")


def draw(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A shape of the class's kind and colour, at a random place and size, on a light background."""
    img = np.full((72, 96, 3), int(rng.integers(200, 256)), np.uint8)
    cx, cy, r = int(rng.integers(30, 66)), int(rng.integers(26, 46)), int(rng.integers(12, 22))
    if kind == 0:
        cv2.circle(img, (cx, cy), r, (220, 30, 30), -1)
    elif kind == 1:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (30, 160, 40), -1)
    else:
        cv2.fillPoly(img, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], (30, 40, 200))
    return img


def dataset(per_class: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [draw(k, rng) for k in range(len(CLASSES)) for _ in range(per_class)]
    return images, np.repeat(np.array(CLASSES), per_class)


def small(**kwargs) -> FineTuner:
    return FineTuner("lite0", blocks=1, epochs=2, seed=0, threads=2, **kwargs)


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    train, y = dataset(10, seed=0)
    test, y_test = dataset(5, seed=1)
    return {"train": train, "y": y, "test": test, "y_test": y_test}


@pytest.fixture(scope="module")
def fitted(data) -> FineTuner:
    return small().fit(data["train"], data["y"])


def test_fit_predicts_held_out_images(fitted: FineTuner, data) -> None:
    assert list(fitted.classes_) == list(CLASSES)
    proba = fitted.predict_proba(data["test"])
    assert proba.shape == (15, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    accuracy = float(np.mean(fitted.predict(data["test"]) == data["y_test"]))
    assert accuracy >= 0.8  # chance is 1/3
    # 30 images, 20 % held out (stratified): 24 train, 6 validation; 1 or 2 epochs run, the best kept
    assert (fitted.n_train_, fitted.n_val_) == (24, 6)
    assert 1 <= fitted.best_epoch_ <= len(fitted.history_) <= 2
    assert fitted.predict_proba([]).shape == (0, 3)


def test_save_load_round_trip(fitted: FineTuner, data, tmp_path: Path) -> None:
    fitted.save(tmp_path / "model")
    assert sum(f.stat().st_size for f in (tmp_path / "model").iterdir()) < 5_000_000  # one block: ~3 MB
    loaded = FineTuner.load(tmp_path / "model", threads=2)
    assert list(loaded.classes_) == list(fitted.classes_) and loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(data["test"]), fitted.predict_proba(data["test"]))
    with pytest.raises(FileNotFoundError, match=r"finetune\.json"):
        FineTuner.load(tmp_path / "nothing")


def test_seeded_runs_are_identical_and_progress_is_reported(fitted: FineTuner, data) -> None:
    recorder = Recorder()
    again = small().fit(data["train"], data["y"], reporter=recorder)
    np.testing.assert_array_equal(again.predict_proba(data["test"]), fitted.predict_proba(data["test"]))
    assert again.history_ == [{**h, "seconds": a["seconds"]} for h, a in zip(fitted.history_, again.history_,
                                                                               strict=True)]
    assert recorder.tasks["fine-tune: trunk activations of the training images"] == 24
    assert recorder.tasks["fine-tune: epochs"] == len(again.history_)


def test_refit_trains_on_every_image_for_the_early_stopped_epoch_count(fitted: FineTuner, data) -> None:
    recorder = Recorder()
    refitted = small(refit=True).fit(data["train"], data["y"], reporter=recorder)
    assert (refitted.n_train_, refitted.n_val_) == (30, 0) and refitted.best_epoch_ == fitted.best_epoch_
    assert refitted.history_ == [{**h, "seconds": a["seconds"]} for h, a in zip(fitted.history_, refitted.history_,
                                                                                 strict=True)]
    assert recorder.tasks["fine-tune: refit on all"] == refitted.best_epoch_
    assert recorder.tasks["fine-tune: trunk activations of the validation images' crops"] == 6
    assert not np.array_equal(refitted.predict_proba(data["test"]), fitted.predict_proba(data["test"]))
    assert float(np.mean(refitted.predict(data["test"]) == data["y_test"])) >= 0.8


def test_explicit_validation_set(data) -> None:
    model = FineTuner("lite0", blocks=1, epochs=1, augment=False, seed=0, threads=2)
    model.fit(data["train"], data["y"], data["test"], data["y_test"])
    assert (model.n_train_, model.n_val_) == (30, 15)


def test_bad_inputs_are_refused_clearly(data) -> None:
    images, y = data["train"], data["y"]
    with pytest.raises(FineTuneError, match="at least 2 classes"):
        small().fit(images[:10], y[:10])
    with pytest.raises(FineTuneError, match="triangle have a single image"):
        small().fit(images[:21], y[:21])
    with pytest.raises(FineTuneError, match="30 images but 29 labels"):
        small().fit(images, y[:-1])
    with pytest.raises(FineTuneError, match=r"images\[3\].*uint8"):
        small().fit([im if i != 3 else im.astype(np.float32) for i, im in enumerate(images)], y)
    with pytest.raises(FineTuneError, match="not among the training classes: hexagon"):
        small().fit(images, y, images[:2], ["disc", "hexagon"])
    with pytest.raises(FineTuneError, match="both val_images and val_y"):
        small().fit(images, y, images[:2])
    with pytest.raises(ValueError, match="blocks must be"):
        FineTuner(blocks=17)
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        FineTuner(variant="lite9")
    with pytest.raises(RuntimeError, match="not fitted"):
        small().predict_proba(images)


# Test-time augmentation ---------------------------------------------------------------------------


def test_centre_crop_is_mirror_symmetric() -> None:
    image = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    crop = centre_crop(image)
    assert crop.shape[1] < 51 and (51 - crop.shape[1]) % 2 == 0
    np.testing.assert_array_equal(centre_crop(image[:, ::-1]), crop[:, ::-1])
    assert centre_crop(np.zeros((1, 2, 3), np.uint8)).shape == (1, 2, 3)  # tiny images stay whole
    assert [v.shape for v in tta_views(image, 224)] == [(224, 224, 3)] * 4


def test_tta_features_are_close_to_plain_and_flip_invariant(data) -> None:
    assert REGISTRY["effnet_lite0_tta"] is EfficientNetLite0TTA
    tta, plain = EfficientNetLite0TTA(threads=2), EfficientNetLite0(threads=2)
    assert tta.key != plain.key and tta.dim == plain.dim  # never read from the plain cache
    images = [data["train"][0], data["train"][15], data["train"][25]]
    mirrors = [im[:, ::-1].copy() for im in images]
    t, p = tta.transform(images), plain.transform(images)
    assert not np.allclose(t, p, atol=1e-3)
    cosine = np.sum(t * p, 1) / np.linalg.norm(t, axis=1) / np.linalg.norm(p, axis=1)
    assert (cosine > 0.85).all()
    np.testing.assert_allclose(tta.transform(mirrors), t, atol=1e-5)  # the mirror's vector is the image's
    assert not np.allclose(plain.transform(mirrors), p, atol=1e-3)  # which plain features are not
    # the engine's path (prepare in the loader threads, then transform) gives the same vectors
    np.testing.assert_allclose(tta.transform([tta.prepare(im) for im in images]), t, atol=1e-6)
