"""Hybrid text search: traits named in the query and BM25 over captions and tags, fused with the joint space.

The pure parts (tokens, BM25, the trait matcher, the fusion order) run on hand-made lexical indexes; the
rest on the tiny synthetic collection of test_search (solid colour backgrounds with a black shape,
tags `color=<colour>;shape=<shape>`), where a few items lose their tags, text and label so that only the
tags bundle's predictions (and the joint space) can find them, and where the joint space is untrained.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from curata.collection import Item, items_to_frame
from curata.search.hybrid import (
    PREDICTED_WEIGHT,
    RRF_K,
    LexicalIndex,
    build_lexical,
    rank_items,
    ranker,
    split_tag,
    words,
)
from curata.workspace import Workspace
from test_search import COLOURS, FAST, copy_workspace, ingest_synthetic

WARM = ("red", "green", "blue", "yellow")
UNTAGGED = [f"{'warm' if c in WARM else 'cool'}/{c}_triangle_1" for c in COLOURS]


def lexical_of(tmp_path: Path, rows: list[dict]) -> LexicalIndex:
    """A lexical index over hand-made items (a workspace without a tags bundle: no predictions)."""
    items = items_to_frame([Item(id=r["id"], source="t", collection=r.get("collection", "c"), image="x",
                                 image_sha256=r["id"], tags=r.get("tags", []), text=r.get("text", ""),
                                 captions=r.get("captions", []), label=r.get("label")) for r in rows])
    text, summary = build_lexical(Workspace(tmp_path / "ws"), items)
    assert summary["items"] == len(rows) and summary["predicted"] == 0
    return LexicalIndex.from_json(text)


PUNKS = [
    {"id": "p/hat", "tags": ["hat=red hat", "background=blue", "eyes=green", "cape=none"]},
    {"id": "p/hair", "tags": ["hair=red hat", "background=green"]},
    {"id": "p/eyes", "tags": ["eyes=blue", "background=red"], "collection": "other"},
    {"id": "p/cap", "tags": ["head=red_cap", "background=green"], "text": "a red cap on a punk"},
    {"id": "p/plain", "tags": ["Earring", "Blonde-Bob"]},
]


# ------------------------------------------------------------------------------------------ pure parts


def test_tokens_read_tags_as_trait_and_value_words() -> None:
    assert words("A picture of Peasant #1, containing short_black hair") == ["peasant", "1", "short", "black", "hair"]
    assert split_tag("hair=short_black") == (("hair",), ("short", "black"))
    assert split_tag("Blonde-Bob") == ((), ("blonde", "bob"))
    assert split_tag("head=red cap") == (("head",), ("red", "cap"))


def test_bm25_ranks_by_term_weight_and_length(tmp_path: Path) -> None:
    lex = lexical_of(tmp_path, [
        {"id": "once", "text": "a dog on a couch with a cat and a lamp and a rug"},
        {"id": "twice", "text": "dog dog lamp"},
        {"id": "equal", "text": "dog cat lamp"},
        {"id": "short", "text": "a dog"},
        {"id": "zebra", "text": "a zebra and a dog"},
        {"id": "none", "text": "a cat"},
    ])
    scores = dict(zip(lex.ids, lex.bm25("dog").tolist(), strict=True))
    assert scores["none"] == 0 and scores["twice"] > scores["equal"]  # term frequency
    assert scores["short"] > scores["equal"] > scores["once"] > 0  # length normalisation
    zebra = dict(zip(lex.ids, lex.bm25("zebra dog").tolist(), strict=True))
    assert max(zebra, key=zebra.get) == "zebra"  # the rare word weighs more
    assert not lex.bm25("unknown words").any() and not lex.bm25("a the of").any()  # stopwords
    assert [h["id"] for h in lex.rank("dog", None, 2)] == sorted(scores, key=scores.get, reverse=True)[:2]


def test_traits_named_in_the_query(tmp_path: Path) -> None:
    lex = lexical_of(tmp_path, PUNKS)

    def tags(query: str) -> list[list[str]]:
        return [sorted(m.tags) for m in lex.match_traits(query)]

    assert tags("red hat") == [["hair=red hat", "hat=red hat"]]
    assert tags("a punk with a red hat hair") == [["hair=red hat"]]  # "{value} {trait}": the longer match wins
    assert tags("blue background") == [["background=blue"]]  # not eyes=blue
    assert tags("blue") == [["background=blue", "eyes=blue"]]
    assert tags("A picture containing red hat hair and blue background") == [["hair=red hat"], ["background=blue"]]
    assert tags("red cap") == [["head=red_cap"]] and tags("blonde bob") == [["Blonde-Bob"]]
    assert tags("cape none") == [] and tags("red") == [["background=red"]]  # absent values are no traits
    only = lex.match_traits("a punk with a hat")
    assert [sorted(m.tags) for m in only] == [["hat=red hat"]] and only[0].weight == 0.5  # trait named, no value
    ranked = lex.rank("red hat", None, 5)
    assert {h["id"] for h in ranked[:2]} == {"p/hat", "p/hair"} and ranked[0]["matched"] in (["hat=red hat"],
                                                                                           ["hair=red hat"])
    assert ranked[0]["via"][0] == "traits" and all(not h["matched"] for h in ranked[2:])


def test_fusion_order(tmp_path: Path) -> None:
    lex = lexical_of(tmp_path, PUNKS)
    joint = [("p/plain", 0.9), ("p/eyes", 0.8), ("p/cap", 0.7), ("p/hat", 0.1)]
    hits = lex.rank("red cap", joint, 10)
    ids = [h["id"] for h in hits]
    # The trait match first even if the joint space ranks it third; then RRF over joint + lexical.
    assert ids[0] == "p/cap" and hits[0]["via"] == ["traits", "lexical", "joint"]
    assert hits[0]["matched"] == ["head=red_cap"]
    rrf = {h["id"]: h["score"] for h in hits}
    assert rrf["p/cap"] == pytest.approx(1 + 1 / (RRF_K + 1) + 1 / (RRF_K + 3), abs=1e-6)
    assert rrf["p/plain"] == pytest.approx(1 / (RRF_K + 1), abs=1e-6)
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    assert set(ids) >= {h for h, _ in joint}  # every joint hit is a candidate
    # More named traits outrank fewer; a joint-only list is RRF-ordered.
    two = lex.rank("red hat hair with green background", joint, 3)
    assert two[0]["id"] == "p/hair" and two[0]["matched"] == ["hair=red hat", "background=green"]
    assert [h["id"] for h in lex.rank("zzz", joint, 4)] == [h for h, _ in joint]
    # Filters apply to the traits and words (the joint list comes filtered from the vector index).
    assert [h["id"] for h in lex.rank("blue", None, 5, {"collection": "other"})] == ["p/eyes"]


# ------------------------------------------------------------------------------------------ workspace


@pytest.fixture(scope="module")
def hybrid_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from curata.features.engine import compute, make_extractor
    from curata.search.joint import JointOptions, train_joint
    from curata.search.searcher import build_index
    from curata.tasks.runner import TrainOptions, run

    root = tmp_path_factory.mktemp("hybrid")
    ws = Workspace(root / "ws")
    ingest_synthetic(ws, root / "src")
    items = ws.items()
    blank = items["id"].isin(UNTAGGED)
    assert blank.sum() == len(UNTAGGED)
    items.loc[blank, "text"] = ""
    items.loc[blank, "label"] = None
    items.loc[blank, "tags"] = items.loc[blank, "tags"].map(lambda _: [])
    items.loc[blank, "captions"] = items.loc[blank, "captions"].map(lambda _: [])
    ws.replace_items(items)
    compute(make_extractor("color_hist"), ws)
    run(ws, TrainOptions(task="tags", target="tags:color", features=["color_hist"], folds=2, name="colours"))
    train_joint(ws, JointOptions(name="joint", **{**FAST, "epochs": 0}))  # untrained: a random projection
    summary = build_index(ws)
    assert summary["lexical"]["tags_bundle"] == "colours" and summary["lexical"]["predicted"] >= 6
    assert summary["lexical"]["tagged"] == 48 - len(UNTAGGED)
    return ws


def _colour_of(ws: Workspace, item_id: str) -> str:
    return item_id.split("/")[1].split("_")[0]


@pytest.mark.slow
def test_hybrid_ranks_the_trait_first_where_the_joint_space_does_not(hybrid_ws: Workspace) -> None:
    from curata.search.searcher import Searcher

    searcher = Searcher.open(hybrid_ws)
    assert searcher.default_mode == "hybrid" and searcher.card["modes"] == ["hybrid", "joint", "lexical"]
    precision = {"hybrid": [], "joint": []}
    for colour in COLOURS:
        query = f"A picture containing {colour} color"  # names one trait of six items (five tagged)
        for mode, ranked in (("hybrid", rank_items(searcher, [query], "hybrid", 5)[0]),
                             ("joint", rank_items(searcher, [query], "joint", 5)[0])):
            precision[mode].append(np.mean([_colour_of(hybrid_ws, i) == colour for i in ranked]))
        hits = searcher.by_text(query, k=5)
        assert [h["id"] for h in hits] == rank_items(searcher, [query], "hybrid", 5)[0]
        assert all(h["matched"] == [f"color={colour}"] and h["via"][0] == "traits" for h in hits), hits
    assert np.mean(precision["hybrid"]) == 1.0
    assert np.mean(precision["joint"]) < 0.6, precision  # untrained: it did not learn the colours
    # The helper an evaluation calls: one callable over many queries.
    rank = ranker(searcher, "hybrid", k=3)
    assert [len(r) for r in rank(["red", "blue circle", "zzz"])] == [3, 3, 3]
    lexical = rank_items(searcher, ["green square"], "lexical", 3)[0]
    assert lexical[0].startswith("warm/green_square_")  # both traits named: the exact items first


@pytest.mark.slow
def test_untagged_items_found_through_the_tags_bundle(hybrid_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from curata.search.searcher import Searcher, build_index

    searcher = Searcher.open(hybrid_ws)
    lexical = searcher.lexical
    found = 0
    for item_id in UNTAGGED:
        position = lexical.position[item_id]
        assert not lexical.own[position]
        colour = _colour_of(hybrid_ws, item_id)
        if f"color={colour}" not in lexical.predicted[position]:
            continue
        hits = searcher.by_text(f"{colour} color", k=10)
        ids = [h["id"] for h in hits]
        mine = hits[ids.index(item_id)]  # in the trait tier, after the five tagged items
        assert mine["matched"] == mine["predicted"] == [f"color={colour}"]
        assert ids.index(item_id) >= 5 and PREDICTED_WEIGHT <= mine["score"] < 1
        found += 1
    assert found >= 6
    # The predictions are cached in the index by image hash: a rebuild does not run the tags model again.
    import curata.tasks.bundle

    def refuse(*args, **kwargs):
        raise AssertionError("the tags model ran again")

    monkeypatch.setattr(curata.tasks.bundle, "load_bundle", refuse)
    again = build_index(hybrid_ws)
    assert again["added"] == 0 and again["lexical"]["predicted"] == sum(bool(p) for p in lexical.predicted)
    assert Searcher.open(hybrid_ws).lexical.predicted == lexical.predicted


@pytest.mark.slow
def test_modes_in_the_cli_and_the_api(hybrid_ws: Workspace) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from curata.cli import app
    from curata.service.app import create_app
    from curata.service.settings import Settings

    runner = CliRunner()
    w = ["-w", str(hybrid_ws.root)]

    def cli(*args: str) -> dict:
        result = runner.invoke(app, ["search", *args, *w, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    default = cli("--text", "yellow color", "-k", "5")
    assert default["mode"] == "hybrid" and all(h["matched"] == ["color=yellow"] for h in default["hits"])
    joint = cli("--text", "yellow color", "-k", "5", "--mode", "joint")
    assert joint["mode"] == "joint" and "matched" not in joint["hits"][0]
    lexical = cli("--text", "yellow color", "-k", "5", "--mode", "lexical", "--filter", "collection=warm")
    assert lexical["mode"] == "lexical" and {h["collection"] for h in lexical["hits"]} == {"warm"}
    table = runner.invoke(app, ["search", "--text", "pink color", "-k", "3", *w])
    assert table.exit_code == 0 and "color=pink" in table.output and "hybrid" in table.output, table.output
    for args, message in ((["--text", "x", "--mode", "fuzzy"], "--mode must be"),
                          (["--item", "warm/red_circle_0", "--mode", "joint"], "--text searches only")):
        result = runner.invoke(app, ["search", *args, *w])
        assert result.exit_code == 2 and message in result.output, result.output

    client = TestClient(create_app(Settings(workspace=hybrid_ws.root, preload=False)))
    got = client.get("/v1/search/text", params={"q": "orange color", "k": 5})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["mode"] == "hybrid" and body["notes"] == []
    assert all(r["matched"] == ["color=orange"] and r["via"][0] == "traits" for r in body["results"])
    joint = client.get("/v1/search/text", params={"q": "orange color", "k": 5, "mode": "joint"}).json()
    assert joint["mode"] == "joint" and all(r["matched"] == [] for r in joint["results"])
    lexical = client.get("/v1/search/text", params={"q": "orange circle", "k": 2, "mode": "lexical"}).json()
    assert [r["id"].split("_")[1] for r in lexical["results"]] == ["circle", "circle"]
    bad = client.get("/v1/search/text", params={"q": "x", "mode": "fuzzy"})
    assert bad.status_code == 422


@pytest.mark.slow
def test_an_index_built_before_hybrid_search_still_searches(hybrid_ws: Workspace, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from curata.cli import app
    from curata.search.searcher import Searcher
    from curata.service.app import create_app
    from curata.service.settings import Settings

    ws = copy_workspace(hybrid_ws, tmp_path / "ws")
    (ws.root / "index/joint/lexical.json").unlink()
    searcher = Searcher.open(ws)
    assert searcher.lexical is None and searcher.default_mode == "joint"
    hits = searcher.by_text("red color", k=3)
    assert len(hits) == 3 and "matched" not in hits[0]
    assert "no lexical part" in searcher.notes[0] and "curata index build" in searcher.notes[0]
    assert len(searcher.by_text("red color", k=3, mode="hybrid")) == 3 and "no lexical part" in searcher.notes[0]
    with pytest.raises(ValueError, match="no lexical part"):
        searcher.by_text("red", mode="lexical")
    with pytest.raises(ValueError, match="unknown search mode"):
        searcher.by_text("red", mode="fuzzy")
    assert len(rank_items(searcher, ["red color"], "hybrid", 4)[0]) == 4  # evaluations fall back too
    result = CliRunner().invoke(app, ["search", "--text", "red", "--mode", "lexical", "-w", str(ws.root)])
    assert result.exit_code == 2 and "no lexical part" in result.output
    client = TestClient(create_app(Settings(workspace=ws.root, preload=False)))
    body = client.get("/v1/search/text", params={"q": "red color", "k": 3}).json()
    assert body["mode"] == "joint" and "no lexical part" in body["notes"][0] and len(body["results"]) == 3
    refused = client.get("/v1/search/text", params={"q": "red", "mode": "lexical"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_lexical_index"
    # A rebuild adds the lexical part.
    from curata.search.searcher import build_index

    build_index(ws)
    assert Searcher.open(ws).default_mode == "hybrid"
