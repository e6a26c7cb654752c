"""Search start-up without torch (heads.npz), the trimmed loading path, and the zero-shot (ConSE) encoder.

Small data made here: a joint space trained for a few epochs on fake image features (no image is decoded)
with real MiniLM captions, and a few drawn pictures for the zero-shot encoder (real EfficientNet-Lite0
logits and palettes). The 10k-item timings are a benchmark (benchmarks/search_open.py), not a test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.collection import COLUMNS
from curata.features.engine import make_extractor
from curata.features.store import FeatureStore
from curata.ingest.pipeline import IngestOptions, ingest
from curata.search.encoders import make_encoder
from curata.search.joint import HEADS_NPZ, JointOptions, JointSpace, train_joint
from curata.search.searcher import Searcher, build_index
from curata.search.zeroshot import ZeroShotEncoder, conse
from curata.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue", "yellow")


def fake_workspace(root: Path, n: int = 48) -> Workspace:
    """n items whose fake effnet_lite0 features carry their colour; captions name it."""
    ws = Workspace(root).create()
    rows = [{"id": f"s/{i}", "source": "s", "collection": f"c{i % 2}", "image": str(root / f"{i}.png"),
             "image_sha256": f"{i:064x}", "text": f"a {COLOURS[i % 4]} thing", "captions": [], "tags": [],
             "label": COLOURS[i % 4], "attributes": "[]", "meta": "{}"} for i in range(n)]
    ws.replace_items(pd.DataFrame(rows, columns=COLUMNS))
    ext = make_extractor("effnet_lite0")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, ext.dim)).astype(np.float32)
    x = centres[np.arange(n) % 4] + 0.3 * rng.normal(size=(n, ext.dim)).astype(np.float32)
    FeatureStore.for_extractor(ws.dir("features"), ext).append([r["image_sha256"] for r in rows], x, [None] * n)
    return ws


@pytest.fixture(scope="module")
def joint_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    ws = fake_workspace(tmp_path_factory.mktemp("speed") / "ws")
    summary = train_joint(ws, JointOptions(name="joint", dim=16, hidden=32, epochs=3, batch_size=16, patience=3,
                                           captions="text", mask_p=0.0, val_fraction=0.25))
    build_index(ws, "joint")
    return ws, summary


# ------------------------------------------------------------------------------------------ heads.npz, no torch


def test_heads_npz_is_written_beside_heads_pt_and_loads_without_a_model(joint_ws) -> None:
    ws, summary = joint_ws
    bundle = ws.root / "models" / "joint"
    assert (bundle / "heads.pt").is_file() and (bundle / HEADS_NPZ).is_file()
    card = json.loads((bundle / "card.json").read_text())
    assert card["heads_npz"] and card["fingerprint"]
    with np.load(bundle / HEADS_NPZ, allow_pickle=False) as z:  # plain arrays, no pickle
        structure = json.loads(str(z["structure"][()]))
        assert structure["image"] == ["net.0", "net.3"] and z["image/net.0.weight"].shape == (32, 1280)
    space = JointSpace.load(bundle)
    assert space.model is None and space.heads is not None
    assert space.temperature == pytest.approx(summary["space"].temperature, rel=1e-5)
    x = np.random.default_rng(2).standard_normal((5, 384)).astype(np.float32)
    trained = summary["space"]
    np.testing.assert_allclose(space.embed_texts(x), trained.embed_texts(x), atol=1e-5)
    feats = np.random.default_rng(3).standard_normal((5, 1280)).astype(np.float32)
    np.testing.assert_allclose(space.embed_images(feats), trained.embed_images(feats), atol=1e-5)


def test_a_bundle_without_heads_npz_still_loads_through_torch(joint_ws, tmp_path) -> None:
    ws, _ = joint_ws
    old = tmp_path / "old"
    shutil.copytree(ws.root / "models" / "joint", old)
    (old / HEADS_NPZ).unlink()
    space = JointSpace.load(old)
    assert space.model is not None
    x = np.random.default_rng(4).standard_normal((3, 384)).astype(np.float32)
    np.testing.assert_allclose(space.embed_texts(x), JointSpace.load(ws.root / "models" / "joint").embed_texts(x),
                               atol=1e-6)


def test_damaged_weights_are_named(joint_ws, tmp_path) -> None:
    ws, _ = joint_ws
    for name in (HEADS_NPZ, "heads.pt"):
        copy = tmp_path / name
        shutil.copytree(ws.root / "models" / "joint", copy)
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=f"{name}.*(truncated|corrupt)"):
            JointSpace.load(copy)


def test_searcher_open_and_a_text_query_never_import_torch(joint_ws) -> None:
    ws, _ = joint_ws
    code = ("import sys\nfrom curata.search.searcher import Searcher\nfrom curata.workspace import Workspace\n"
            f"s = Searcher.open(Workspace({str(ws.root)!r}), 'joint')\n"
            "hits = s.by_text('a red thing', 3)\n"
            "assert hits and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n"
            "print('ok', 'sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "ok"


def test_the_searcher_reads_only_the_columns_it_needs(joint_ws) -> None:
    ws, _ = joint_ws
    frame = ws.items(["id", "label"])
    assert list(frame.columns) == ["id", "label"] and len(frame) == 48
    with pytest.raises(ValueError, match="not collection columns"):
        ws.items(["id", "nope"])
    searcher = Searcher.open(ws, "joint")
    hit = searcher.by_text("a blue thing", 1)[0]
    assert {"id", "score", "label", "collection", "text", "image"} <= set(hit)
    assert hit["label"] in COLOURS and hit["text"].startswith("a ")
    assert searcher.by_item("s/0", 3) and all(h["id"] != "s/0" for h in searcher.by_item("s/0", 3))


# ------------------------------------------------------------------------------------------ zero-shot (ConSE)


def test_conse_mixes_the_top_labels_by_probability() -> None:
    labels = np.eye(4, dtype=np.float32)
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = conse(probs, labels, top=2)
    want = np.array([0.7, 0.2, 0, 0]) / 0.9
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)
    assert not got[1].any()  # no prediction: no vector


def draw(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, rgb in (("red", (225, 25, 30)), ("blue", (25, 50, 215)), ("green", (30, 160, 40))):
        im = Image.new("RGB", (96, 96), rgb)
        im.paste((245, 245, 245), (30, 30, 66, 66))  # a small white square: not a flat image
        im.save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def zeroshot_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("zeroshot")
    ws = Workspace(root / "ws")
    ingest(draw(root / "pictures"), ws, IngestOptions(source_name="pictures", collection="pictures"))
    return ws


def test_zeroshot_is_the_default_without_a_joint_space_and_ranks_by_colour(zeroshot_ws) -> None:
    ws = zeroshot_ws
    encoder = make_encoder(ws, None)
    assert isinstance(encoder, ZeroShotEncoder) and encoder.name == "zeroshot" and encoder.dim == 384
    with pytest.raises(ValueError, match="curata index build"):
        Searcher.open(ws)
    summary = build_index(ws, "zeroshot")
    assert summary["model"] == "zeroshot" and summary["total"] == 3 and not summary["failed"]
    searcher = Searcher.open(ws)  # no model named: the zero-shot index
    assert searcher.encoder.name == "zeroshot"
    for colour in ("red", "blue", "green"):
        assert Path(searcher.by_text(colour, 3)[0]["id"]).stem == colour, colour
    red = np.array(Image.open(ws.root.parent / "pictures" / "red.png"))
    assert Path(searcher.by_image(red, 1)[0]["id"]).stem == "red"
    vectors = encoder.encode_images([red])
    assert vectors.shape == (1, 384) and np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_zeroshot_fallback_failure_is_one_clear_error(tmp_path, monkeypatch) -> None:
    import curata.search.zeroshot as zeroshot

    def broken(self, *args, **kwargs):
        raise RuntimeError("no MiniLM here")

    monkeypatch.setattr(zeroshot.ZeroShotEncoder, "__init__", broken)
    with pytest.raises(ValueError, match=r"no joint-space model.*zero-shot encoder cannot run.*no MiniLM here"):
        make_encoder(Workspace(tmp_path / "empty"), None)


# ------------------------------------------------------------------------------------------ the CLI's import path


def test_the_cli_imports_neither_ingest_nor_collectors_until_they_run() -> None:
    from curata.collect.fxhash import DEFAULT_ENDPOINT
    from curata.commands.collect import DEFAULT_ENDPOINT as CLI_ENDPOINT
    from curata.commands.ingest import INGEST_FORMATS
    from curata.ingest.pipeline import FORMATS

    assert INGEST_FORMATS == FORMATS and CLI_ENDPOINT == DEFAULT_ENDPOINT  # spelled out there, checked here
    code = ("import sys, curata.cli\n"
            "heavy = [m for m in ('torch', 'sklearn', 'httpx', 'curata.ingest.pipeline', 'curata.collect', "
            "'curata.search.searcher') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
