"""Selection of the joint space's settings by validation, partial-attribute queries, in-collection batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.test_search import FAST, ingest_synthetic

from curata.search.captions import ItemCaptions, partial_queries
from curata.search.evaluate import embedding_ranker, partial_recall
from curata.search.joint import JointOptions, collection_batches, train_joint
from curata.workspace import Workspace

QUICK = {**FAST, "epochs": 4, "select_epochs": 2, "patience": 2}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("selection")
    ws = Workspace(root / "ws")
    ingest_synthetic(ws, root / "src")
    return ws


def test_card_records_candidates_and_choice(workspace: Workspace) -> None:
    seen: list[dict] = []
    summary = train_joint(workspace, JointOptions(name="sel", select=("head", "masking", "batching"), **QUICK),
                          on_candidate=seen.append)
    selection = summary["selection"]
    card = json.loads((Path(summary["path"]) / "card.json").read_text())
    assert card["selection"]["chosen"] == selection["chosen"]
    tried = [c for c in selection["candidates"] if "score" in c]
    assert len(seen) == len(selection["candidates"]) and len(tried) >= 3
    first = tried[0]["config"]
    assert first["hidden"] == 0 and first["mask_p"] == 0 and first["batching"] == "random"  # the linear head
    assert {c["config"]["hidden"] for c in tried} == {0, 64}
    assert any(c["config"]["batching"] == "collection" for c in tried)  # two collections: warm and cool
    for c in tried:
        assert {"t2i_r1", "t2i_r10"} <= set(c["val"]) and {"any_r1", "this_r1"} <= set(c["val_partial"])
        assert c["seconds"] >= 0
    chosen = [c for c in selection["candidates"] if c.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["score"] == max(c["score"] for c in tried)
    params = card["params"]
    assert {k: params[k] for k in selection["chosen"]} == selection["chosen"]
    assert "val_partial" in card["metrics"] and selection["fixed"] == {"image_features": "effnet_lite0"}
    report = json.loads(Path(summary["report"]).read_text())
    assert report["selection"]["candidates"] == selection["candidates"]


def test_explicit_option_skips_its_search(workspace: Workspace) -> None:
    summary = train_joint(workspace, JointOptions(select=("masking",), **QUICK), save=False)
    tried = summary["selection"]["candidates"]
    assert {c["config"]["hidden"] for c in tried} == {FAST["hidden"]}  # hidden given: not searched
    assert {c["config"]["mask_p"] for c in tried} == {0.0, FAST["mask_p"]}
    assert summary["selection"]["searched"] == ["masking"]
    assert summary["params"]["hidden"] == FAST["hidden"]
    assert train_joint(workspace, JointOptions(**QUICK), save=False)["selection"] is None


def test_budget_keeps_the_first_candidate(workspace: Workspace) -> None:
    summary = train_joint(workspace, JointOptions(select=("head", "masking"), budget_s=1e-6, **QUICK), save=False)
    tried = summary["selection"]["candidates"]
    assert "score" in tried[0] and all("budget" in c["skipped"] for c in tried[1:])
    assert summary["selection"]["chosen"]["hidden"] == 0


def _caps() -> list[ItemCaptions]:
    def item(i: int, **attrs: str) -> ItemCaptions:
        return ItemCaptions(f"t/{i}", ["x"], f"Peasant #{i}", [{"trait_type": k, "value": v} for k, v in attrs.items()])

    return [item(0, hair="red", hat="cap", top="shirt", shoes="boots"),
            item(1, hair="red", hat="cap", top="coat", shoes="boots"),
            item(2, hair="blue", hat="cap", top="shirt", shoes="sandals"),
            item(3, hair="red", hat="none_x", top="shirt", shoes="boots"),
            ItemCaptions("free/0", ["a dog"], "coco")]


def test_partial_queries_are_deterministic_with_correct_relevance() -> None:
    caps = _caps()
    a, b = partial_queries(caps, seed=3), partial_queries(caps, seed=3)
    assert [(q.text, q.owner, q.relevant.tolist()) for q in a] == [(q.text, q.owner, q.relevant.tolist()) for q in b]
    assert {q.size for q in a} == {1, 2, 3} and all(q.owner != 4 for q in a)  # free text: no queries
    for q in a:
        assert q.text.startswith("A picture of Peasant, containing") and "#" not in q.text
        named = [p for p in q.text.split("containing ")[1].split(", ")]
        assert len(named) == q.size
        expected = [i for i, c in enumerate(caps[:4])
                    if all(any(f"{a['value'].replace('_', ' ')} {a['trait_type']}" == n for a in c.attributes)
                           for n in named)]
        assert q.relevant.tolist() == expected and q.owner in expected
    assert any(q.text != r.text for q, r in zip(a, partial_queries(caps, seed=4), strict=False))


def test_partial_recall_any_and_this() -> None:
    caps = _caps()[:4]
    queries = partial_queries(caps, sizes=(1,), seed=0)
    # A ranker that always returns item 0 first: "this" hits only the queries built from item 0.
    out = partial_recall(queries, lambda texts: np.tile(np.arange(4), (len(texts), 1)), ks=(1, 4))
    this = np.mean([q.owner == 0 for q in queries])
    anyhit = np.mean([0 in q.relevant for q in queries])
    assert out["1"]["this_r1"] == pytest.approx(this, abs=1e-4)
    assert out["1"]["any_r1"] == pytest.approx(anyhit, abs=1e-4)
    assert out["all"]["this_r4"] == 1.0 and out["1"]["queries"] == len(queries)
    # Identical images (one group) count as the token itself.
    assert partial_recall(queries, lambda t: np.zeros((len(t), 1), np.int64), groups=np.zeros(4, np.int64),
                          ks=(1,))["all"]["this_r1"] == 1.0
    emb = np.eye(4, dtype=np.float32)
    rank = embedding_ranker(lambda texts: np.tile(emb[2], (len(texts), 1)), emb, k=3)
    assert rank(["a", "b"])[:, 0].tolist() == [2, 2]


def test_in_collection_batches_hold_one_collection() -> None:
    collections = np.array(["a"] * 37 + ["b"] * 20 + ["c"] * 5)
    rows = np.arange(3, 62)
    batches = collection_batches(collections, rows, 8, np.random.default_rng(0))
    assert all(len(set(collections[b])) == 1 and len(b) <= 8 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == rows.tolist()
    assert len({frozenset(collections[b]) for b in batches}) == 3


def test_demo_drawings_join_training_only(workspace: Workspace) -> None:
    plain = train_joint(workspace, JointOptions(**{**QUICK, "epochs": 1}), save=False)["training"]
    with_demo = train_joint(workspace, JointOptions(pretrain_demo=10, **{**QUICK, "epochs": 1}), save=False)
    t = with_demo["training"]
    assert t["train"] == plain["train"] + 10 and t["val"] == plain["val"]
    assert t["collections"].get("curata demo drawings") == 10


def test_partial_recall_takes_item_ids() -> None:
    caps = _caps()[:4]
    queries = partial_queries(caps, sizes=(2,), seed=1)
    ids = [c.id for c in caps]
    by_index = partial_recall(queries, lambda t: np.tile(np.arange(4), (len(t), 1)), ks=(1, 2))
    by_id = partial_recall(queries, lambda t: [ids for _ in t], ks=(1, 2), ids=ids)
    assert by_index == by_id
