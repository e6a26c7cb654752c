"""Concatenated image features (`effnet_lite0+pixels_onehot`): blocks read from their own caches, L2-normalised
per block; a joint space trained, indexed and searched on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.test_joint_selection import QUICK
from tests.test_search import COLOURS, _draw, ingest_synthetic

from curata.features.concat import ConcatExtractor, join_blocks
from curata.features.engine import compute, load_matrix, make_extractor
from curata.features.pixels import looks_like_pixel_art
from curata.features.store import FeatureStore
from curata.imageio import load_image
from curata.search.joint import PIXEL_ART_FEATURES, JointOptions, train_joint
from curata.workspace import Workspace

SPEC = "effnet_lite0+pixels_onehot"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("concat")
    ws = Workspace(root / "ws")
    ingest_synthetic(ws, root / "src")  # flat drawn shapes, a handful of colours: pixel art by the 256-colour test
    return ws


def test_spec_builds_a_concatenation() -> None:
    ext = make_extractor(SPEC)
    effnet, onehot = make_extractor("effnet_lite0"), make_extractor("pixels_onehot")
    assert isinstance(ext, ConcatExtractor) and ext.name == SPEC and ext.modality == "image"
    assert ext.dim == effnet.dim + onehot.dim and ext.key == f"{effnet.key}+{onehot.key}"
    assert ext.max_side == max(effnet.max_side, onehot.max_side)
    for bad, message in (("effnet_lite0+minilm", "image and text"), ("pixels+pixels", "named twice"),
                         ("pixels+orb_bovw", "fitted"), ("pixels+nope", "unknown extractor")):
        with pytest.raises(ValueError, match=message):
            make_extractor(bad)


def test_cached_blocks_equal_the_blocks_transforms(workspace: Workspace) -> None:
    ext = make_extractor(SPEC)
    run = compute(ext, workspace)
    assert run.items == 48 and run.errors == 0
    # No store of its own: each block sits in its extractor's store, reused by anything else that uses it.
    stores = sorted(p.name for p in (workspace.root / "features").iterdir())
    assert len(stores) == 2 and not any("+" in s for s in stores)
    assert compute(ext, workspace).computed == 0
    items = workspace.items().iloc[:6]
    cached, errors = load_matrix(workspace, ext, items)
    assert cached.shape == (6, ext.dim) and errors == [None] * 6
    images = [load_image(p) for p in items["image"]]
    blocks = [b.transform([b.prepare(im) for im in images]) for b in ext.blocks]
    expected = join_blocks(blocks)
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    np.testing.assert_allclose(ext.transform(images), expected, atol=1e-5)  # raw images: each block prepares
    np.testing.assert_allclose(ext.transform([ext.prepare(im) for im in images]), expected, atol=1e-5)
    # per block: unit norm, and each block is the normalised block, not rescaled together
    width = ext.blocks[0].dim
    np.testing.assert_allclose(np.linalg.norm(cached[:, :width], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cached[:, width:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cached[:, width:], blocks[1] / np.linalg.norm(blocks[1], axis=1, keepdims=True),
                               atol=1e-6)


def test_a_failed_block_fails_the_row(workspace: Workspace) -> None:
    ext = make_extractor(SPEC)
    compute(ext, workspace)
    items = workspace.items().iloc[:3].copy()
    effnet = ext.blocks[0]
    # an image only the EfficientNet block has (content hash unknown to the pixels store)
    items.loc[items.index[1], "image_sha256"] = "0" * 64
    FeatureStore.for_extractor(workspace.root / "features", effnet).append(
        ["0" * 64], np.ones((1, effnet.dim), np.float32), [None])
    matrix, errors = load_matrix(workspace, ext, items)
    assert errors == [None, "not computed", None] and not matrix[1].any() and matrix[0].any()


@pytest.mark.slow
def test_joint_space_on_the_concatenation(workspace: Workspace) -> None:
    from curata.search.searcher import Searcher, build_index

    summary = train_joint(workspace, JointOptions(name="concat", image_features=SPEC, **QUICK))
    card = json.loads((Path(summary["path"]) / "card.json").read_text())
    image = card["encoders"]["image"]
    ext = make_extractor(SPEC)
    assert image == {"extractor": SPEC, "key": ext.key, "dim": ext.dim} and card["params"]["image_features"] == SPEC
    assert build_index(workspace, model="concat")["total"] == 48
    searcher = Searcher.open(workspace, model="concat")
    assert searcher.card["model"]["encoders"]["image"] == ext.key
    hits = searcher.by_text("a yellow square", k=5)
    assert len(hits) == 5 and all({"id", "score"} <= set(h) for h in hits)
    query = workspace.root.parent / "query.png"
    _draw(query, COLOURS["green"], "triangle", 1)  # the very picture of warm/green_triangle_1
    by_image = searcher.by_image(np.asarray(Image.open(query).convert("RGB")), k=3)  # both blocks computed
    assert by_image[0]["id"] == "warm/green_triangle_1" and by_image[0]["score"] > 0.99


@pytest.mark.slow
def test_selection_tries_the_concatenation_on_pixel_art(workspace: Workspace) -> None:
    assert looks_like_pixel_art(workspace.items())
    summary = train_joint(workspace, JointOptions(select=("features",), **QUICK), save=False)
    tried = [c["config"]["image_features"] for c in summary["selection"]["candidates"] if "score" in c]
    assert tried == list(PIXEL_ART_FEATURES) and summary["selection"]["pixel_art"] is True
    assert summary["encoders"]["image"]["extractor"] == summary["selection"]["chosen"]["image_features"]
