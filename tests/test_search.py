"""Cross-modal search on a tiny synthetic collection where the text determines the image.

Images are solid backgrounds of a named colour with a black shape; the caption names both. They go
through the real ingest pipeline, real EfficientNet-Lite0 / MiniLM features, real training.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from curata.collection import Item, items_to_frame
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.table import ColumnMap
from curata.search.captions import item_captions, masked_variants
from curata.search.evaluate import difficulty, evaluate_retrieval
from curata.search.joint import JointOptions, load_joint, recall_at_k, train_joint
from curata.workspace import Workspace

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (130, 40, 160), "orange": (250, 140, 20), "pink": (250, 150, 200), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle")
# Small and quick: the heads are tiny, the collection is 48 items.
FAST = dict(dim=32, hidden=64, epochs=30, batch_size=16, lr=3e-3, patience=10, val_fraction=0.25,
            captions="attributes", mask_p=0.3, variants=3, seed=0)


def _draw(path: Path, colour: tuple[int, int, int], shape: str, variant: int) -> None:
    im = Image.new("RGB", (64, 64), colour)
    d = ImageDraw.Draw(im)
    o = 8 + 6 * variant
    box = (o, o, o + 32, o + 32)
    if shape == "circle":
        d.ellipse(box, fill=(0, 0, 0))
    elif shape == "square":
        d.rectangle(box, fill=(0, 0, 0))
    else:
        d.polygon([(o + 16, o), (o, o + 32), (o + 32, o + 32)], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_source(root: Path, colours: list[str], name: str) -> Path:
    rows = []
    for colour in colours:
        for shape in SHAPES:
            for variant in range(2):
                rel = f"images/{colour}_{shape}_{variant}.png"
                _draw(root / rel, COLOURS[colour], shape, variant)
                rows.append({"path": rel, "id": f"{colour}_{shape}_{variant}", "text": f"a {colour} {shape}",
                             "tags": f"color={colour};shape={shape}", "label": colour})
    table = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def ingest_synthetic(ws: Workspace, root: Path) -> None:
    names = list(COLOURS)
    for half, part in (("warm", names[:4]), ("cool", names[4:])):
        table = make_source(root / half, part, half)
        ingest(table, ws, IngestOptions(source_name=half, collection=half, columns=ColumnMap(tags="tags")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    root = tmp_path_factory.mktemp("search")
    ws = Workspace(root / "ws")
    ingest_synthetic(ws, root / "src")
    summary = train_joint(ws, JointOptions(name="joint", **FAST))
    return ws, summary


# ------------------------------------------------------------------------------------------ captions, maths


def _items() -> pd.DataFrame:
    attrs = [{"trait_type": "background", "value": "grass"}, {"trait_type": "hair", "value": "short_black"},
             {"trait_type": "cape", "value": "none"}, {"trait_type": "head", "value": "helmet"},
             {"trait_type": "top", "value": "chain"}]
    return items_to_frame([
        Item(id="nft/1", source="nft", collection="Peasant", image="x", image_sha256="a", attributes=attrs,
             meta={"name": "Peasant #1"}, captions=["ignored: attributes win"], text="Peasant #1"),
        Item(id="coco/1", source="coco", collection="coco", image="y", image_sha256="b",
             captions=["a dog on a couch", "a brown dog", "a dog on a couch"], tags=["dog", "couch"]),
        Item(id="punk/1", source="punk", collection="punks", image="z", image_sha256="c", label="Female",
             tags=["Earring", "Blonde Bob"], text="Female punk with Earring, Blonde Bob",
             captions=["Female punk with Earring, Blonde Bob"]),
        Item(id="bare/1", source="bare", collection="bare", image="w", image_sha256="d"),
    ])


def test_captions_from_each_source() -> None:
    auto = item_captions(_items())
    assert auto[0].captions == ["A picture of Peasant #1, containing grass background, short black hair, helmet head, "
                                "chain top"]  # NFT1000 template; the absent `cape: none` left out
    assert len(auto[0].attributes) == 4 and auto[0].maskable
    assert auto[1].captions == ["a dog on a couch", "a brown dog"] and not auto[1].maskable  # deduplicated
    assert auto[2].captions == ["Female punk with Earring, Blonde Bob"] and not auto[2].attributes
    assert auto[3].captions == []  # nothing to say: the trainer skips it
    attributes = item_captions(_items(), "attributes")
    assert attributes[2].captions == ["A picture of punks, containing Female, Earring, Blonde Bob"]
    assert attributes[1].captions == auto[1].captions  # human captions are kept in attributes mode
    assert item_captions(_items(), "text")[0].captions == ["ignored: attributes win"]
    with pytest.raises(ValueError, match="unknown caption source"):
        item_captions(_items(), "nope")


def test_masking_changes_the_variants() -> None:
    item = item_captions(_items())[0]
    full = item.captions[0]
    variants = masked_variants(item, 0.5, 4, seed=0)
    assert variants[0] == full and len(variants) == 5 and len(set(variants)) == 5
    for v in variants[1:]:
        kept = v.split("containing ", 1)[1].split(", ")
        assert 1 <= len(kept) < 4 and set(kept) <= set(full.split("containing ", 1)[1].split(", "))
    assert masked_variants(item, 0.5, 4, seed=0) == variants  # deterministic
    assert masked_variants(item, 0.5, 4, seed=1) != variants
    assert masked_variants(item, 0.0, 4) == [full]  # p = 0 disables masking
    assert masked_variants(item_captions(_items())[1], 0.5, 4) == ["a dog on a couch", "a brown dog"]
    with pytest.raises(ValueError, match="mask probability"):
        masked_variants(item, 1.0)


def test_recall_and_difficulty_maths() -> None:
    eye = np.eye(4, dtype=np.float32)
    # Query i matches gallery i exactly: every recall is 1; shifted by one, recall@1 is 0.
    assert recall_at_k(eye, eye, np.arange(4), np.arange(4), (1, 2)) == {1: 1.0, 2: 1.0}
    assert recall_at_k(eye, np.roll(eye, 1, axis=0), np.arange(4), np.arange(4), (1, 4)) == {1: 0.0, 4: 1.0}
    # A query whose group is absent from the gallery is a miss at every K.
    assert recall_at_k(eye[:1], eye, np.array([9]), np.arange(4), (4,)) == {4: 0.0}
    aligned = difficulty(eye, eye, np.arange(4))
    assert aligned["image_similarity"] == 0 and aligned["alignment"] == 1 and aligned["difficulty"] == -1
    same = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (4, 1))
    assert difficulty(same, same, np.arange(4))["difficulty"] == 1  # all alike, no alignment gap: hardest


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_joint_space_beats_untrained_projection(trained: tuple[Workspace, dict]) -> None:
    ws, summary = trained
    val, before = summary["metrics"]["val"], summary["metrics"]["val_untrained"]
    assert summary["training"]["val"] >= 10
    assert val["t2i_r1"] >= before["t2i_r1"] + 0.2, (val, before)
    assert val["t2i_r5"] > before["t2i_r5"] and val["i2t_r1"] > before["i2t_r1"]
    card = json.loads((ws.root / "models/joint/card.json").read_text())
    assert card["kind"] == "joint_space" and card["dim"] == 32
    assert card["encoders"]["image"]["key"].startswith("effnet_lite0") and card["encoders"]["text"]["dim"] == 384
    assert 0.01 <= card["temperature"] <= 1 and card["training"]["history"]
    assert (ws.root / "models/joint/heads.pt").stat().st_size < 2_000_000
    split = json.loads((ws.root / "models/joint/split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    # The saved bundle reproduces the metrics, and the same seed trains the same model.
    space = load_joint(ws)
    assert space.card["fingerprint"] == card["fingerprint"]
    again = train_joint(ws, JointOptions(**{**FAST, "epochs": 2}), save=False)
    same = train_joint(ws, JointOptions(**{**FAST, "epochs": 2}), save=False)
    assert again["metrics"] == same["metrics"]


@pytest.mark.slow
def test_evaluation_per_collection_and_pooled(trained: tuple[Workspace, dict]) -> None:
    ws, summary = trained
    payload = evaluate_retrieval(ws, subset="val")
    result = payload["sets"]["val"]
    assert set(result["collections"]) == {"warm", "cool"}
    assert result["pooled"]["items"] == summary["training"]["val"]
    assert result["pooled"]["t2i_r1"] == summary["metrics"]["val"]["t2i_r1"]
    for m in result["collections"].values():
        assert {"t2i_r50", "i2t_r10", "difficulty", "alignment"} <= set(m)
        assert m["t2i_r1"] >= result["pooled"]["t2i_r1"] - 0.5  # a smaller gallery is not harder
    assert Path(payload["report"]).exists() and (ws.root / "reports/retrieval-latest.json").exists()
    with pytest.raises(ValueError, match="no 'holdout' items"):
        evaluate_retrieval(ws, subset="holdout")


def test_training_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no items"):
        train_joint(Workspace(tmp_path / "empty"))
    with pytest.raises(ValueError, match="val fraction"):
        JointOptions(val_fraction=1.5).validate()
    with pytest.raises(ValueError, match="no path"):
        JointOptions(name="../x").validate()
    with pytest.raises(ValueError, match="no joint-space model"):
        load_joint(Workspace(tmp_path / "empty"))


def copy_workspace(ws: Workspace, dest: Path) -> Workspace:
    shutil.copytree(ws.root, dest)
    return Workspace(dest)


# ------------------------------------------------------------------------------------------ index and search


@pytest.mark.slow
def test_index_is_incremental(trained: tuple[Workspace, dict], tmp_path: Path) -> None:
    from curata.search.searcher import build_index

    ws = copy_workspace(trained[0], tmp_path / "ws")
    first = build_index(ws)
    assert (first["added"], first["removed"], first["total"], first["rebuilt"]) == (48, 0, 48, False)
    assert (ws.root / "index/joint").is_dir()
    assert build_index(ws)["added"] == 0  # nothing new: nothing encoded
    items = ws.items()
    ws.replace_items(items[~items["id"].isin(["warm/red_circle_0", "cool/white_square_1"])])
    extra = tmp_path / "extra"
    _draw(extra / "black_circle.png", (20, 20, 20), "circle", 0)
    ingest(extra, ws, IngestOptions(source_name="extra", collection="extra"))
    update = build_index(ws)
    assert (update["added"], update["removed"], update["total"]) == (1, 2, 47)
    from curata.search.searcher import Searcher

    searcher = Searcher.open(ws)
    ids = {h["id"] for h in searcher.by_text("a red circle", k=100)}
    assert "warm/red_circle_0" not in ids and "extra/black_circle.png" in ids and len(ids) == 47


@pytest.mark.slow
def test_search_by_text_image_and_item(trained: tuple[Workspace, dict], tmp_path: Path) -> None:
    from curata.search.searcher import Searcher, build_index

    ws = copy_workspace(trained[0], tmp_path / "ws")
    build_index(ws)
    searcher = Searcher.open(ws)
    assert searcher.card["items"] == 48 and searcher.card["model"]["name"] == "joint"
    hits = searcher.by_text("a yellow square", k=6)
    # hybrid by default (the index has its lexical part): the joint hit's fields plus matched/predicted/via
    assert len(hits) == 6 and {"id", "score", "label", "collection", "text", "image", "matched"} <= set(hits[0])
    assert hits[0]["id"].startswith("warm/yellow_square_"), hits  # the caption names both: the exact picture first
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    assert Path(hits[0]["image"]).exists() and searcher.notes == []
    cool = searcher.by_text("a yellow square", k=5, filters={"collection": "cool"})
    assert cool and all(h["collection"] == "cool" for h in cool)
    assert all(h["label"] == "blue" for h in searcher.by_text("a circle", k=5, filters={"label": "blue"}))
    query = tmp_path / "query.png"
    _draw(query, COLOURS["green"], "triangle", 1)
    by_image = searcher.by_image(np.asarray(Image.open(query).convert("RGB")), k=3)
    assert by_image[0]["id"] == "warm/green_triangle_1" and by_image[0]["score"] > 0.99  # the same picture
    assert searcher.by_image(query.read_bytes(), k=3)[0]["id"] == by_image[0]["id"]
    similar = searcher.by_item("cool/orange_circle_0", k=4)
    assert len(similar) == 4 and all(h["id"] != "cool/orange_circle_0" for h in similar)
    assert len(searcher.by_text("a red circle", k=500)) == 48 and "only 48" in searcher.notes[0]


@pytest.mark.slow
def test_search_bad_inputs(trained: tuple[Workspace, dict], tmp_path: Path) -> None:
    from curata.imageio import ImageError
    from curata.search.searcher import Searcher, build_index

    ws = copy_workspace(trained[0], tmp_path / "ws")
    with pytest.raises(ValueError, match=r"no search index for model 'joint'.*curata index build"):
        Searcher.open(ws)
    with pytest.raises(ValueError, match="no model named 'nope'"):
        Searcher.open(ws, "nope")
    with pytest.raises(ValueError, match=r"does not exist.*no CLIP weights"):
        Searcher.open(ws, f"clip:{tmp_path / 'no-such-clip'}")
    build_index(ws)
    searcher = Searcher.open(ws)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty text query"):
            searcher.by_text(bad)
    with pytest.raises(ImageError, match="query image cannot be decoded: not a recognised image format"):
        searcher.by_image(b"this is not an image")
    with pytest.raises(ValueError, match="empty image query"):
        searcher.by_image(b"")
    with pytest.raises(ValueError, match="expected an RGB uint8 array"):
        searcher.by_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="unknown item 'warm/nope'"):
        searcher.by_item("warm/nope")
    with pytest.raises(ValueError, match="cannot filter on 'colour'"):
        searcher.by_text("red", filters={"colour": "red"})
    with pytest.raises(ValueError, match="k must be a positive integer"):
        searcher.by_text("red", k=0)
    assert searcher.by_text("red", filters={"collection": "no such collection"}) == []
    assert "matching the filters" in searcher.notes[0]
    # Retraining the model under the same name: the old index no longer matches its query encoder.
    train_joint(ws, JointOptions(name="joint", **{**FAST, "epochs": 1}))
    with pytest.raises(ValueError, match=r"was built with 'joint'.*rebuild it"):
        Searcher.open(ws)
    rebuilt = build_index(ws)
    assert rebuilt["rebuilt"] and rebuilt["total"] == 48 and "rebuilt from scratch" in rebuilt["notes"][0]
    assert Searcher.open(ws).by_text("a red circle", k=1)


@pytest.mark.slow
def test_cli_end_to_end(trained: tuple[Workspace, dict], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curata.cli import app

    ws = copy_workspace(trained[0], tmp_path / "ws")
    runner = CliRunner()
    w = ["-w", str(ws.root)]

    def ok(*args: str) -> dict:
        result = runner.invoke(app, [*args, *w, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    trained_cli = ok("joint", "train", "--name", "cli", "--epochs", "3", "--dim", "16", "--hidden", "0",
                     "--batch-size", "16", "--captions", "attributes", "--mask-p", "0.3", "--seed", "1")
    assert trained_cli["name"] == "cli" and trained_cli["training"]["epochs_run"] <= 3
    assert ok("index", "build", "--model", "cli")["total"] == 48
    out = ok("search", "--text", "a pink triangle", "-k", "3", "--model", "cli")
    assert len(out["hits"]) == 3 and out["model"] == "cli"
    filtered = ok("search", "--text", "a pink triangle", "--filter", "collection=warm", "--model", "cli")
    assert filtered["hits"] and {h["collection"] for h in filtered["hits"]} == {"warm"}
    image = ws.items()["image"].iloc[0]
    assert ok("search", "--image", image, "-k", "1", "--model", "cli")["hits"][0]["image"] == image
    assert len(ok("search", "--item", "warm/red_circle_0", "-k", "2", "--model", "cli")["hits"]) == 2
    evaluation = ok("joint", "evaluate", "--model", "cli")
    assert set(evaluation["sets"]) == {"val"} and "difficulty" in evaluation["sets"]["val"]["pooled"]
    human = runner.invoke(app, ["search", "--text", "a red circle", "-k", "200", "--model", "cli", *w])
    assert human.exit_code == 0 and "only 48" in human.output
    table = runner.invoke(app, ["joint", "evaluate", "--model", "cli", *w])
    assert table.exit_code == 0 and "(pooled)" in table.output and "t2i@10" in table.output, table.output
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    for args, message in (
        (["search", *w], "exactly one of --text, --image, --item"),
        (["search", "--text", "x", "--item", "y", *w], "exactly one of"),
        (["search", "--text", "x", "--filter", "collection", *w], "expected FIELD=VALUE"),
        (["search", "--image", str(not_an_image), "--model", "cli", *w], "not a recognised image format"),
        (["search", "--text", "x", "--model", "missing", *w], "no model named 'missing'"),
        (["joint", "train", "--features", "effnet_lite0", *w], "IMAGE,TEXT"),
        (["joint", "train", "--features", "minilm,effnet_lite0", "--epochs", "1", *w], "need an image extractor"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.mark.slow
def test_demo_hook(trained: tuple[Workspace, dict], tmp_path: Path) -> None:
    from curata.search.searcher import demo_search

    ws = copy_workspace(trained[0], tmp_path / "ws")
    out = demo_search(ws, ["a blue circle", "a white triangle"], k=3, epochs=3)
    assert out["model"] == "demo-joint" and out["index"]["total"] == 48
    assert [q["query"] for q in out["queries"]] == ["a blue circle", "a white triangle"]
    assert all(len(q["hits"]) == 3 for q in out["queries"])
    assert {"t2i_r1", "t2i_r10"} <= set(out["val"]) and "t2i_r10" in out["train"]


@pytest.mark.parametrize("hidden", [0, 64])
def test_numpy_embedding_equals_the_torch_heads(hidden):
    """Queries are embedded in numpy on the heads' weights; it must be the torch eval forward."""
    import torch

    from curata.search.joint import JointOptions, JointSpace, _build_model

    model = _build_model(48, 24, JointOptions(dim=16, hidden=hidden))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        model.text.mean.copy_(torch.randn(24, generator=gen))
        model.text.inv_std.uniform_(0.5, 2.0, generator=gen)
    space = JointSpace(model, {"dim": 16})
    x = np.random.default_rng(1).standard_normal((9, 24)).astype(np.float32)
    x[4] = 0.0  # no text: matches nothing
    model.eval()
    with torch.no_grad():
        want = model.text(torch.from_numpy(x)).numpy()
    got = space.embed_texts(x)
    np.testing.assert_allclose(np.delete(got, 4, 0), np.delete(want, 4, 0), atol=1e-5)
    assert not got[4].any() and got.dtype == np.float32


def test_a_search_that_fails_at_open_leaves_no_thread_running(tmp_path: Path) -> None:
    """The text model's session opens in a thread while the searcher loads. When `open` fails at once (no
    index), that thread must be finished before the error leaves `open`: a native thread still inside ONNX
    Runtime when the command exits aborted the process ("terminate called without an active exception", about
    one run in four) instead of printing the one-line error."""
    import threading

    from conftest import write_colour_table
    from curata.search.searcher import Searcher

    table = write_colour_table(tmp_path / "images", 4, (8, 8), text=True)
    ws = Workspace(tmp_path / "ws")
    ingest(table, ws)
    with pytest.raises(ValueError, match="no search index"):
        Searcher.open(ws, "zeroshot")
    assert not [t.name for t in threading.enumerate() if t.name == "curata-warm-text" and t.is_alive()]
