"""EfficientNet-Lite: ONNX export once, parity with PyTorch, features and ImageNet top-k."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from curata.features import efficientnet as eff
from curata.features.base import REGISTRY, ItemError
from curata.features.efficientnet import (
    FEATURE_DIM,
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite2,
    build_torch_model,
    imagenet_classes,
    preprocess,
    top_classes,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private CURATA_CACHE for the whole module, so the (slow) export happens once."""
    root = tmp_path_factory.mktemp("curata_cache")
    old = os.environ.get("CURATA_CACHE")
    os.environ["CURATA_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("CURATA_CACHE", None)
    else:
        os.environ["CURATA_CACHE"] = old


@pytest.fixture(scope="module")
def lite0(cache: Path) -> EfficientNetLite0:
    ext = EfficientNetLite0(threads=2)
    ext.session  # noqa: B018 - triggers the export
    return ext


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    shapes = np.full((180, 240, 3), 255, dtype=np.uint8)
    shapes[40:140, 30:130] = (200, 30, 30)  # a red square
    yy, xx = np.mgrid[:180, :240]
    shapes[(yy - 90) ** 2 + (xx - 180) ** 2 < 35**2] = (20, 40, 220)  # a blue disc
    solid = np.full((64, 64, 3), (30, 160, 60), dtype=np.uint8)
    one_pixel = np.array([[[255, 128, 0]]], dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    gray_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    big = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    return [noise, shapes, solid, one_pixel, gray_rgb, big]


def test_registered_names_and_params() -> None:
    assert REGISTRY["effnet_lite0"] is EfficientNetLite0
    assert REGISTRY["effnet_lite2"] is EfficientNetLite2
    a, b = EfficientNetLite0(), EfficientNetLite2()
    assert (a.size, a.max_side, b.size, b.max_side) == (224, 224, 260, 260)
    assert a.dim == b.dim == FEATURE_DIM
    assert a.key != b.key
    # cls(**params()) must rebuild the same extractor (the engine persists params).
    assert EfficientNetLite0(**a.params()).key == a.key
    assert EfficientNetLite("lite2").key != a.key
    with pytest.raises(ValueError, match="lite2"):
        EfficientNetLite0(variant="lite2")
    with pytest.raises(ValueError, match="unknown"):
        EfficientNetLite("lite9")


def test_imagenet_class_list() -> None:
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) >= 998  # "crane" and "maillot" are each listed twice
    assert names[0].startswith("tench") and names[281].startswith("tabby")


def test_onnx_matches_pytorch(lite0: EfficientNetLite0) -> None:
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        feats, logits = (t.numpy() for t in build_torch_model("lite0")(torch.from_numpy(x)))
    o_feats, o_logits = lite0.session.run(["features", "logits"], {"image": x})
    assert o_feats.shape == (3, FEATURE_DIM) and o_logits.shape == (3, 1000)
    np.testing.assert_allclose(o_feats, feats, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(o_logits, logits, atol=1e-4, rtol=1e-4)


def test_features_on_varied_images(lite0: EfficientNetLite0) -> None:
    images = _images()
    out = lite0.transform(images)
    assert out.shape == (len(images), FEATURE_DIM) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert (out >= 0).all()  # pooled ReLU6 activations
    # distinct inputs give distinct vectors; a batch equals its items one by one (no cross-talk)
    assert not np.allclose(out[0], out[1])
    single = np.concatenate([lite0.transform([im]) for im in images[:3]])
    np.testing.assert_allclose(single, out[:3], atol=1e-5)
    np.testing.assert_array_equal(lite0.transform(images), out)  # deterministic


def test_grayscale_forms_agree(lite0: EfficientNetLite0) -> None:
    gray = np.random.default_rng(2).integers(0, 256, (40, 30), dtype=np.uint8)
    forms = [gray, gray[:, :, None], np.repeat(gray[:, :, None], 3, axis=2)]
    out = lite0.transform(forms)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[2])


def test_bad_inputs(lite0: EfficientNetLite0) -> None:
    assert lite0.transform([]).shape == (0, FEATURE_DIM)
    with pytest.raises(ItemError):
        lite0.transform([np.zeros((10, 10, 4), dtype=np.uint8)])
    with pytest.raises(ItemError):
        lite0.transform([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ItemError):
        lite0.transform([np.zeros((0, 10, 3), dtype=np.uint8)])


def test_large_batch_is_split(lite0: EfficientNetLite0) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(eff._SUB_BATCH + 3)]
    out = lite0.transform(images)
    assert out.shape == (len(images), FEATURE_DIM)
    np.testing.assert_allclose(out[-3:], lite0.transform(images[-3:]), atol=1e-5)


def test_preprocess_range_and_layout() -> None:
    x = preprocess([np.zeros((5, 5, 3), np.uint8), np.full((300, 100, 3), 255, np.uint8)], 224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    assert x[0].max() == pytest.approx(-127 / 128) and x[1].min() == pytest.approx(128 / 128)


def test_predict_imagenet_format(lite0: EfficientNetLite0) -> None:
    names = set(imagenet_classes())
    preds = lite0.predict_imagenet(_images()[:4], top=5)
    assert len(preds) == 4
    for row in preds:
        assert len(row) == 5
        probs = [p for _, p in row]
        assert all(name in names for name, _ in row)
        assert all(0.0 < p <= 1.0 for p in probs)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0 + 1e-6
    assert [len(r) for r in lite0.predict_imagenet(_images()[:1], top=1)] == [1]


def test_top_classes_from_logits() -> None:
    logits = np.zeros((1, 1000), dtype=np.float32)
    logits[0, 281] = 20.0  # tabby
    (row,) = top_classes(logits, top=3)
    assert row[0][0].startswith("tabby") and row[0][1] > 0.99


def test_export_is_reused(lite0: EfficientNetLite0, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lite0.onnx_file
    assert path.is_file() and path.name == "efficientnet_lite0_v1.onnx"
    mtime = path.stat().st_mtime_ns

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = EfficientNetLite0(threads=1)
    out = again.transform(_images()[:2])
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(out, lite0.transform(_images()[:2]), atol=1e-4)
    assert not list(path.parent.glob("*.tmp"))  # no leftovers of the atomic write


def test_concurrent_exports_write_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads racing to export: the lock makes the second one reuse the first one's file."""
    monkeypatch.setenv("CURATA_CACHE", str(tmp_path))
    calls: list[int] = []
    entered = threading.Event()

    def fake_export(model: object, args: object, f: str, **kwargs: object) -> None:
        calls.append(1)
        entered.set()
        threading.Event().wait(0.3)  # hold the lock long enough for the other thread to queue
        Path(f).write_bytes(b"fake onnx")

    monkeypatch.setattr(eff, "build_torch_model", lambda variant: None)
    monkeypatch.setattr(torch.onnx, "export", fake_export)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(eff.export_onnx("lite0"))) for _ in range(2)]
    threads[0].start()
    entered.wait(5)
    threads[1].start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == b"fake onnx"


def test_pickle_drops_session(lite0: EfficientNetLite0) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(lite0))
    assert clone._session is None
    np.testing.assert_allclose(clone.transform(_images()[:1]), lite0.transform(_images()[:1]), atol=1e-4)


def test_lite2_export_and_parity(cache: Path) -> None:
    ext = EfficientNetLite2(threads=2)
    x = np.random.default_rng(4).standard_normal((2, 3, 260, 260)).astype(np.float32)
    with torch.no_grad():
        feats, logits = (t.numpy() for t in build_torch_model("lite2")(torch.from_numpy(x)))
    o_feats, o_logits = ext.session.run(["features", "logits"], {"image": x})
    np.testing.assert_allclose(o_feats, feats, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(o_logits, logits, atol=1e-4, rtol=1e-4)
    out = ext.transform(_images()[:3])
    assert out.shape == (3, FEATURE_DIM) and out.dtype == np.float32
    assert ext.onnx_file.name == "efficientnet_lite2_v1.onnx"


def test_logits_extractor_is_the_classifier_output(lite0: EfficientNetLite0) -> None:
    logits = REGISTRY["effnet_lite0_logits"]()
    assert logits.dim == 1000 and logits.key != lite0.key
    images = _images()[:3]
    out = logits.transform(images)
    assert out.shape == (3, 1000) and out.dtype == np.float32
    _, expected = lite0.features_and_logits(images)
    assert np.allclose(out, expected, atol=1e-5)
    assert [n for n, _ in top_classes(out, 1)[0]] == [lite0.predict_imagenet(images[:1], top=1)[0][0][0]]


def test_int8_model_is_quantised_and_agrees_with_fp32(lite0: EfficientNetLite0) -> None:
    import onnx

    from curata.features.efficientnet import EfficientNetLite0Int8, calibration_images

    int8 = EfficientNetLite0Int8()
    assert int8.key != lite0.key and int8.onnx_file.name.endswith("_int8_v1.onnx")
    images = _images()[:3] + calibration_images(3, 224, seed=99)
    a, b = lite0.transform(images), int8.transform(images)
    assert int8.onnx_file.is_file()
    ops = {node.op_type for node in onnx.load(str(int8.onnx_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised, not a copy of fp32
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.9 and cosine.mean() > 0.95, cosine
    assert not np.allclose(a, b, atol=1e-3)


def test_single_threaded_twin_gives_the_same_features(lite0: EfficientNetLite0) -> None:
    assert lite0.single_threaded() is lite0  # a chosen thread count is kept
    default = EfficientNetLite0()
    twin = default.single_threaded()
    assert twin is not default and twin.threads == 1 and default.threads is None
    assert default.single_threaded() is twin  # made once: its session loads once
    images = _images()[:3]
    np.testing.assert_allclose(twin.transform(images), lite0.transform(images), atol=1e-4)
