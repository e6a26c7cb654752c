"""Optional model plug-ins, exercised with tiny randomly initialised models saved to tmp dirs."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CLIP_DIM as PROJ_DIM
from conftest import make_tiny_clip
from curata.features.base import REGISTRY
from curata.features.plugins import (
    HFCLIP,
    HFCLIPImage,
    HFCLIPText,
    HFVision,
    OpenCLIPPlugin,
    PluginUnavailable,
    TimmPlugin,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=20,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
    )
    torch.manual_seed(1)
    ViTModel(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = np.full((60, 90, 3), 255, dtype=np.uint8)
    shapes[10:40, 10:40] = (220, 20, 20)
    return [
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        shapes,
        np.full((20, 20, 3), (10, 200, 90), dtype=np.uint8),
        np.array([[[255, 0, 0]]], dtype=np.uint8),  # 1x1: ambiguous channel axis unless told
        np.repeat(rng.integers(0, 256, (30, 40, 1), dtype=np.uint8), 3, axis=2),
        rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8),
    ]


def test_registry() -> None:
    for name, cls in [
        ("hf_clip_image", HFCLIPImage),
        ("hf_clip_text", HFCLIPText),
        ("hf_vision", HFVision),
        ("open_clip", OpenCLIPPlugin),
        ("timm", TimmPlugin),
    ]:
        assert REGISTRY[name] is cls
    assert HFCLIPText.modality == "text" and HFCLIPImage.modality == "image"


# ---------------------------------------------------------------------------------------------- HF CLIP


def test_clip_images(clip_dir: Path) -> None:
    clip = HFCLIP(clip_dir)
    assert clip.dim == PROJ_DIM
    images = _images()
    X = clip.encode_images(images)
    assert X.shape == (len(images), PROJ_DIM) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clip.encode_images(images), X)
    assert not np.allclose(X[0], X[1])


def test_clip_texts(clip_dir: Path) -> None:
    clip = HFCLIP(clip_dir)
    texts = ["a photo of a cat", "a photo of a dog", "", None, "café 猫 unknownword", "cat " * 50]
    T = clip.encode_texts(texts)
    assert T.shape == (len(texts), PROJ_DIM) and T.dtype == np.float32
    norms = np.linalg.norm(T, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 4, 5]], 1.0, atol=1e-5)
    assert not T[[2, 3]].any()  # empty text -> zero vector
    assert not np.allclose(T[0], T[1])
    # batching and padding do not change a text's vector
    np.testing.assert_allclose(clip.encode_texts(["a photo of a cat"])[0], T[0], atol=1e-5)


def test_clip_extractors_share_one_model(clip_dir: Path) -> None:
    img, txt = HFCLIPImage(clip_dir), HFCLIPText(str(clip_dir))
    assert img.clip is txt.clip  # one model in memory for both modalities
    assert img.dim == txt.dim == PROJ_DIM
    assert img.key != txt.key and str(clip_dir) in img.key
    holder = HFCLIP.shared(clip_dir)
    np.testing.assert_array_equal(img.transform(_images()[:2]), holder.encode_images(_images()[:2]))
    np.testing.assert_array_equal(txt.transform(["red car"]), holder.encode_texts(["red car"]))
    from_holder = holder.text_extractor()
    assert from_holder.clip is holder and from_holder.key == txt.key
    # zero-shot scoring is a dot product of normalised vectors
    scores = img.transform(_images()[:3]) @ txt.transform(["a red car", "a blue house"]).T
    assert scores.shape == (3, 2) and np.all(np.abs(scores) <= 1 + 1e-5)
    clone = pickle.loads(pickle.dumps(img))
    np.testing.assert_allclose(clone.transform(_images()[:1]), img.transform(_images()[:1]), atol=1e-6)


@pytest.mark.parametrize("cls", [HFCLIPImage, HFCLIPText, HFVision])
def test_hf_missing_paths(cls: type, tmp_path: Path) -> None:
    probe = ["x"] if cls is HFCLIPText else [np.zeros((4, 4, 3), np.uint8)]
    with pytest.raises(PluginUnavailable, match="no model path given"):
        cls().transform(probe)
    missing = tmp_path / "nope"
    with pytest.raises(PluginUnavailable, match=r"nope.*does not exist.*save_pretrained"):
        cls(missing).transform(probe)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PluginUnavailable, match=r"empty.*is empty.*config\.json"):
        cls(empty).transform(probe)
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(PluginUnavailable, match="not a directory"):
        cls(a_file).transform(probe)


def test_hf_broken_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(PluginUnavailable, match="cannot load"):
        HFCLIP(tmp_path).encode_texts(["x"])


# ---------------------------------------------------------------------------------------------- HF vision


def test_hf_vision(vit_dir: Path) -> None:
    ext = HFVision(vit_dir)
    images = _images()
    X = ext.transform(images)
    assert ext.dim == 20
    assert X.shape == (len(images), 20) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(ext.transform(images), X)
    assert ext.transform([]).shape == (0, 20)
    gray = np.random.default_rng(5).integers(0, 256, (30, 30), dtype=np.uint8)
    np.testing.assert_allclose(
        ext.transform([gray])[0], ext.transform([np.repeat(gray[:, :, None], 3, axis=2)])[0], atol=1e-6
    )


def test_hf_vision_pooling_modes(vit_dir: Path) -> None:
    images = _images()[:3]
    outs = {p: HFVision(vit_dir, pooling=p).transform(images) for p in ("auto", "mean", "cls")}
    assert all(o.shape == (3, 20) for o in outs.values())
    assert not np.allclose(outs["auto"], outs["mean"]) and not np.allclose(outs["mean"], outs["cls"])
    assert len({HFVision(vit_dir, pooling=p).key for p in outs}) == 3
    with pytest.raises(ValueError):
        HFVision(vit_dir, pooling="max")


# -------------------------------------------------------------------------------------- open_clip, timm


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_open_clip_missing_package(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    ext = OpenCLIPPlugin("ViT-B-32", path=ckpt)
    assert "ViT-B-32" in ext.key  # constructing is free; the error comes on use
    with pytest.raises(PluginUnavailable, match="install open_clip_torch and give a local checkpoint path"):
        ext.transform([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(PluginUnavailable, match="open_clip_torch"):
        ext.check()


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_missing_package(tmp_path: Path) -> None:
    ext = TimmPlugin("resnet18", path=tmp_path / "resnet18.safetensors")
    with pytest.raises(PluginUnavailable, match="install timm and give a local checkpoint path"):
        ext.transform([np.zeros((4, 4, 3), np.uint8)])


@pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None, reason="open_clip not installed (optional)"
)
def test_open_clip_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(PluginUnavailable, match="does not exist"):
        OpenCLIPPlugin("ViT-B-32", path=tmp_path / "none.pt").check()


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed (optional)")
def test_timm_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(PluginUnavailable, match="does not exist"):
        TimmPlugin("resnet18", path=tmp_path / "none.safetensors").check()


@pytest.mark.skip(reason="positive path needs open_clip/timm and a real local checkpoint; neither ships here")
def test_open_clip_and_timm_positive_path() -> None:  # pragma: no cover
    pass


def test_a_plugin_without_its_model_is_one_line_and_exit_2(tmp_path):
    """`curata features -e hf_vision` with no checkpoint: what to give, in one line, never a traceback."""
    from typer.testing import CliRunner

    from conftest import write_image
    from curata.cli import app
    from curata.collection import Item, items_to_frame
    from curata.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.add_items(items_to_frame([Item(id="s/1", source="s", collection="c", image=str(write_image(tmp_path / "a.png")),
                                      image_sha256="h1")]))
    done = CliRunner().invoke(app, ["features", "-w", str(ws.root), "-e", "hf_vision"])
    assert done.exit_code == 2, done.output
    assert "Traceback" not in done.output and "no model path given" in done.output


def test_plugin_path_is_given_once_and_remembered_by_the_workspace(tmp_path, vit_dir, monkeypatch):
    """`features -e hf_vision --plugin-path DIR` computes with that model and records it, so a later command
    (a new process: the in-process paths cleared) reads the same vectors without being told the path again."""
    from typer.testing import CliRunner

    from conftest import write_image
    from curata.cli import app
    from curata.collection import Item, items_to_frame
    from curata.features import plugins
    from curata.features.engine import load_matrix, make_extractor
    from curata.workspace import Workspace

    monkeypatch.setattr(plugins, "_PATHS", {})
    ws = Workspace(tmp_path / "ws")
    ws.add_items(items_to_frame([Item(id=f"s/{i}", source="s", collection="c", image_sha256=f"h{i}",
                                      image=str(write_image(tmp_path / f"{i}.png", color=(40 * i, 90, 200))))
                                 for i in range(3)]))
    cli = CliRunner()
    wrong = cli.invoke(app, ["features", "-w", str(ws.root), "-e", "color_stats", "--plugin-path", str(vit_dir)])
    assert wrong.exit_code == 2 and "plug-in extractors" in wrong.output
    done = cli.invoke(app, ["features", "-w", str(ws.root), "-e", "hf_vision", "--plugin-path", str(vit_dir), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)[0]["computed"] == 3
    assert json.loads((ws.root / "plugins.json").read_text()) == {"hf_vision": str(Path(vit_dir).resolve())}
    monkeypatch.setattr(plugins, "_PATHS", {})
    matrix, errors = load_matrix(Workspace(ws.root), make_extractor("hf_vision"))
    assert matrix.shape == (3, 20) and errors == [None] * 3
    (ws.root / "plugins.json").write_text("{broken")
    broken = cli.invoke(app, ["features", "-w", str(ws.root), "-e", "color_stats"])
    assert broken.exit_code == 2 and "plugins.json is unreadable" in " ".join(broken.output.split())
