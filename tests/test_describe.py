"""Keywords and sentences from a workspace's own models, colours and neighbours, on a demo collection
the test draws itself; and the keyword evaluation against held-out tags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny_clip, write_image
from curata.cli import app
from curata.demo.generate import generate_collection
from curata.describe import DescribeOptions, Describer, Keyword, evaluate_keywords
from curata.describe.keywords import merge, tag_display
from curata.describe.sentence import colour_phrase, make_sentence
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.tasks.runner import TrainOptions, run
from curata.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("describe")
    out = generate_collection(root / "demo", per_algorithm=8, size=96, workers=1)
    ws = Workspace(root / "ws")
    ingest(out.root, ws, IngestOptions(format="nft", source_name="demo", label_trait="algorithm"))
    for name in ("effnet_lite0", "color_hist"):
        compute(make_extractor(name), ws)
    run(ws, TrainOptions(task="collection", features=["effnet_lite0"], folds=2, name="algo"))
    run(ws, TrainOptions(task="tags", target="tags:symmetry", features=["color_hist"], folds=2, name="sym"))
    return ws


def test_keyword_helpers():
    assert tag_display("hair=short_black") == "short black" and tag_display("Earring") == "Earring"
    merged = merge([[Keyword("dense", 0.6, "tags", "density=dense"), Keyword("teal", 0.5, "colour")],
                    [Keyword("dense", 0.8, "neighbours", "density=dense")]], top=5)
    assert merged[0].tag == "density=dense" and merged[0].source == "neighbours+tags"
    assert merged[0].score == pytest.approx(1 - 0.4 * 0.2)  # noisy-OR: agreement raises the score
    assert [k.keyword for k in merge([[Keyword("a", 0.1, "tags")]] * 3, top=0)] == []
    assert colour_phrase([("teal", 0.55), ("black", 0.3), ("white", 0.1)]) == "mostly teal and black"
    assert colour_phrase([("red", 0.9)]) == "red" and colour_phrase([]) == ""
    sentence = make_sentence([("orange", 0.7)], "cellular automaton",
                             [Keyword("dense", 0.9, "tags"), Keyword("orange", 0.7, "colour"),
                              Keyword("radial", 0.8, "neighbours")])
    assert sentence == "A mostly orange cellular automaton with dense and radial."
    assert make_sentence([], None, []) == "An image."


def test_describe_items_uses_every_source(ws):
    describer = Describer.open(ws)
    assert set(describer.sources) == {"colour", "tags", "collection", "neighbours"}
    items = ws.items()
    ids = items["id"].tolist()[:4]
    rows = describer.describe_items([*ids, "demo/nope"], top_k=30)
    assert rows[-1] == {"id": "demo/nope", "error": "no item 'demo/nope' in the workspace"}
    for row, item_id in zip(rows[:4], ids, strict=True):
        assert row["id"] == item_id and 0 < len(row["keywords"]) <= 30
        scores = [k["score"] for k in row["keywords"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        sources = {s for k in row["keywords"] for s in k["source"].split("+")}
        assert {"colour", "neighbours"} <= sources
        assert item_id not in {n["id"] for n in row["neighbours"]}  # an item is never its own neighbour
        assert row["sentence"].startswith(("A ", "An ")) and row["sentence"].endswith(".")
        # Trait-tagged generative art: no ImageNet content words, the colour-first trait sentence.
        assert not row["sentence"].startswith("A picture of")
        assert all("content" not in k["source"] for k in row["keywords"])
        assert row["colours"][0]["name"] in row["sentence"]
        assert abs(sum(c["share"] for c in row["colours"]) - 1) < 0.02
        # The collection model's best guess is always a keyword; an algorithm name is never "unknown".
        guesses = [k["keyword"] for k in row["keywords"] if "collection" in k["source"]]
        assert len(guesses) == 1 and guesses[0] in set(items["label"])


def test_describe_new_image_and_colours_only(ws, tmp_path):
    describer = Describer.open(ws, DescribeOptions(use_models=False))
    assert set(describer.sources) == {"colour", "neighbours"}
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 220
    row = describer.describe_images([red], top_k=5)[0]
    assert row["colours"][0]["name"] == "red" and row["sentence"].startswith("A red ")
    assert describer.describe_images([]) == []


def test_keyword_evaluation_beats_popularity(ws):
    result = evaluate_keywords(ws, k=5, test_fraction=0.25)
    assert result["protocol"]["test"] == 16 and result["protocol"]["reference"] == 48
    sources = result["sources"]
    assert set(sources) == {"neighbours", "popularity baseline", "tag model", "combined"}
    for scores in sources.values():
        assert 0 <= scores["precision@5"] <= 1 and 0 <= scores["recall@5"] <= 1
    # Every demo tag follows from the algorithm or the palette, so look-alikes share tags.
    assert sources["neighbours"]["precision@5"] > sources["popularity baseline"]["precision@5"]


def test_clip_reranks_keywords(ws, tmp_path):
    clip = make_tiny_clip(tmp_path / "clip")
    describer = Describer.open(ws, DescribeOptions(clip_path=str(clip), use_models=False))
    row = describer.describe_items([ws.items()["id"].iloc[0]], top_k=6)[0]
    assert row["keywords"] and all(k["source"].endswith("+clip") for k in row["keywords"])
    assert "clip" in describer.sources


def test_cli_describe_items_images_and_errors(ws, tmp_path):
    runner = CliRunner()
    good = write_image(tmp_path / "blue.png", size=(64, 64), color=(20, 40, 220))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    item = ws.items()["id"].iloc[3]
    result = runner.invoke(app, ["describe", str(good), str(bad), "--item", item, "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["descriptions"]
    assert rows[0]["id"] == item and rows[1]["image"] == str(good) and "blue" in rows[1]["sentence"]
    assert rows[2]["image"] == str(bad) and rows[2]["error"]
    table = runner.invoke(app, ["describe", str(bad), "-w", str(ws.root)])
    assert table.exit_code == 2 and "broken.png" in table.output
    assert runner.invoke(app, ["describe", "-w", str(ws.root)]).exit_code == 2
    evaluation = runner.invoke(app, ["describe", "--evaluate", "-w", str(ws.root), "--json"])
    assert evaluation.exit_code == 0 and "precision@5" in evaluation.stdout


def test_describe_needs_a_collection(tmp_path):
    with pytest.raises(ValueError, match="no collection"):
        Describer.open(Workspace(tmp_path / "empty"))
