"""Review queues on a small workspace of real images: a real quality run (suspicious labels, outliers,
near-duplicates), a real tags bundle and a real label bundle, then accept / reject / skip / undo."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curata import review
from curata.collection import Item, items_to_frame
from curata.curation import Curation, changes_from
from curata.features.engine import compute, make_extractor
from curata.quality import quality_workspace
from curata.review import ReviewError, build_queue, decide, queue_counts, undo_last
from curata.tasks.runner import TrainOptions, run
from curata.workspace import Workspace

COLOURS = {"red": (210, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}
PER = 12
UNTAGGED = ["s/red00", "s/green00"]  # lack their hue tag: the tags bundle should propose it
MISLABELLED = "s/oops"  # a red image labelled green
BIG, SMALL = "s/blue03_big", "s/blue03"  # the same picture at two sizes: the big one is kept


def _image(path: Path, rgb: tuple[int, int, int], seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb) + rng.integers(-25, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _item(item_id: str, path: Path, label: str | None, tags: list[str], size: int = 40) -> Item:
    return Item(id=item_id, source="s", collection="c", image=str(path), image_sha256=f"sha-{item_id}",
                width=size, height=size, label=label, tags=tags)


def _items(root: Path) -> list[Item]:
    items = []
    for k, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(PER):
            item_id = f"s/{name}{i:02d}"
            path = _image(root / "img" / f"{name}{i:02d}.png", rgb, seed=100 * k + i)
            items.append(_item(item_id, path, name, [] if item_id in UNTAGGED else [f"hue={name}"]))
    items.append(_item(MISLABELLED, _image(root / "img" / "oops.png", COLOURS["red"], seed=999), "green",
                       ["hue=green"]))
    big = root / "img" / "blue03_big.png"
    Image.open(root / "img" / "blue03.png").resize((80, 80), Image.Resampling.NEAREST).save(big)
    items.append(_item(BIG, big, "blue", ["hue=blue"], size=80))
    # Unlabelled, between two colours: "label these next".
    items.append(_item("s/purple", _image(root / "img" / "purple.png", (120, 35, 120), seed=7), None, []))
    return items


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The workspace with its quality run and bundles, built once; each test works on a copy."""
    root = tmp_path_factory.mktemp("review")
    ws = Workspace(root / "ws").create()
    ws.add_items(items_to_frame(_items(root)))
    compute(make_extractor("color_stats"), ws)
    quality_workspace(ws, ["color_stats"])
    run(ws, TrainOptions(task="tags", target="tags", features=["color_stats"], folds=2, min_tag_count=3,
                         name="hues"))
    run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], model="logreg", folds=2,
                         name="labels"))
    return ws.root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    copy = tmp_path / "ws"
    shutil.copytree(template, copy)
    return Workspace(copy)


def _label(ws: Workspace, item: str) -> str | None:
    return ws.collection.by_ids([item], ["id", "label"])["label"].iloc[0]


def _scores_sorted(queue: review.Queue) -> bool:
    scores = [p.score for p in queue.proposals]
    return scores == sorted(scores, reverse=True)


def test_missing_sources_give_empty_queues_with_notes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "bare").create()
    for name in review.QUEUES:
        q = build_queue(ws, name)
        assert q.proposals == [] and q.left == 0 and q.notes and q.source == ""
    ws.add_items(items_to_frame(_items(tmp_path)))
    labels = build_queue(ws, "labels")
    assert labels.proposals == [] and "curata quality" in labels.notes[0]
    assert "curata train tags" in build_queue(ws, "tags").notes[0]
    counts = queue_counts(ws)
    assert set(counts) == set(review.QUEUES) and all(c["left"] == 0 and c["done"] == 0 for c in counts.values())
    with pytest.raises(ReviewError, match="unknown review queue"):
        build_queue(ws, "nope")


def test_labels_accept_writes_one_edit_and_undo_restores(ws: Workspace) -> None:
    q = build_queue(ws, "labels")
    assert q.proposals and _scores_sorted(q) and "quality run" in q.source
    top = q.proposals[0]
    assert (top.item, top.field, top.value, top.current) == (MISLABELLED, "label", "red", "green")
    assert 0 < top.score <= 1 and top.detail["label"] == "green"
    assert json.loads(json.dumps(top.to_dict()))["id"] == top.id

    out = decide(ws, top.id, "accept", "ana", "labels")
    assert out["decision"] == "accept" and out["batch"] and out["done"] == 1 and out["left"] == q.left - 1
    log = Curation(ws).log()
    assert len(log) == 1 and log[0]["why"] == "review:labels" and log[0]["batch"] == out["batch"]
    assert (log[0]["item"], log[0]["before"], log[0]["after"]) == (MISLABELLED, "green", "red")
    assert _label(ws, MISLABELLED) == "red"
    after = build_queue(ws, "labels")
    assert top.id not in {p.id for p in after.proposals} and after.done == 1 and after.left == q.left - 1
    with pytest.raises(ReviewError, match="no open proposal"):
        decide(ws, top.id, "accept", "ana", "labels")

    assert undo_last(ws, "bob", "labels") is None  # only one's own decisions
    undone = undo_last(ws, "ana", "labels")
    assert undone is not None and undone["undone"]["decision"] == "accept" and undone["batch"]
    assert _label(ws, MISLABELLED) == "green"
    assert Curation(ws).log()[0]["undoes"] == out["batch"]
    back = build_queue(ws, "labels")
    assert back.proposals[0].id == top.id and back.done == 0
    assert undo_last(ws, "ana", "labels") is None


def test_rejected_never_again_even_after_refresh(ws: Workspace) -> None:
    q = build_queue(ws, "labels")
    top = q.proposals[0]
    out = decide(ws, top.id, "reject", "ana", "labels")
    assert out["batch"] is None and Curation(ws).log() == [] and _label(ws, top.item) == "green"
    assert top.id not in {p.id for p in build_queue(ws, "labels").proposals}
    rebuilt = build_queue(ws, "labels", refresh=True)
    assert not rebuilt.cached and top.id not in {p.id for p in rebuilt.proposals} and rebuilt.done == 1
    # The same (item, label) is not offered by the uncertain queue either.
    assert not any((p.item, p.value) == (top.item, top.value) for p in build_queue(ws, "uncertain").proposals)
    assert undo_last(ws, "ana", "labels")["undone"]["decision"] == "reject"  # forgotten: offered again
    assert build_queue(ws, "labels").proposals[0].id == top.id


def test_tags_accepted_tag_not_proposed_again(ws: Workspace) -> None:
    q = build_queue(ws, "tags")
    assert q.proposals and _scores_sorted(q) and "hues" in q.source
    by_item = {(p.item, p.value): p for p in q.proposals}
    assert ("s/red00", "hue=red") in by_item and ("s/green00", "hue=green") in by_item
    assert all(p.value not in p.current and p.score >= review.MIN_TAG_SCORE for p in q.proposals)
    proposal = by_item[("s/red00", "hue=red")]
    out = decide(ws, proposal.id, "accept", "ana", "tags")
    assert Curation(ws).log()[0]["why"] == "review:tags"
    tags = ws.collection.by_ids(["s/red00"], ["id", "tags"])["tags"].iloc[0]
    assert list(tags) == ["hue=red"]
    for refresh in (False, True):
        again = build_queue(ws, "tags", refresh=refresh)
        assert ("s/red00", "hue=red") not in {(p.item, p.value) for p in again.proposals}
    # Undone, the item lacks the tag again: offered again.
    undo_last(ws, "ana", "tags")
    assert proposal.id in {p.id for p in build_queue(ws, "tags").proposals} and out["batch"]


def test_duplicates_keep_the_largest_image(ws: Workspace) -> None:
    q = build_queue(ws, "duplicates")
    pair = [p for p in q.proposals if p.item == SMALL]
    assert len(pair) == 1 and pair[0].value == BIG and pair[0].field == "duplicate_of" and pair[0].current is None
    assert not any(p.item == BIG for p in q.proposals)
    decide(ws, pair[0].id, "accept", "ana", "duplicates")
    assert SMALL not in set(ws.items(["id"])["id"])  # left out of the stages, not deleted
    assert not any(p.item == SMALL for p in build_queue(ws, "duplicates").proposals)


def test_duplicates_follow_a_kept_item_excluded_since(ws: Workspace) -> None:
    Curation(ws).apply([BIG], changes_from({"excluded": True}), "ana", "gone")
    q = build_queue(ws, "duplicates")
    assert not any(p.item == SMALL for p in q.proposals)  # the small one is its group's kept item now


def test_outliers_and_uncertain(ws: Workspace) -> None:
    outliers = build_queue(ws, "outliers")
    assert _scores_sorted(outliers) and all(p.value is True and p.field == "excluded" for p in outliers.proposals)
    uncertain = build_queue(ws, "uncertain")
    assert uncertain.proposals and _scores_sorted(uncertain) and "labels" in uncertain.source
    purple = next(p for p in uncertain.proposals if p.item == "s/purple")
    assert purple.current is None and 0 <= purple.score <= 1 and purple.detail["top"]
    decide(ws, purple.id, "accept", "ana", "uncertain")
    assert _label(ws, "s/purple") == purple.value
    assert Curation(ws).log()[0]["why"] == "review:uncertain"
    assert not any(p.item == "s/purple" for p in build_queue(ws, "uncertain").proposals)
    first = outliers.proposals[0]
    assert first.item == MISLABELLED and first.detail["label"] == "green"  # a red image among the greens
    decide(ws, first.id, "accept", "ana", "outliers")
    assert first.item not in set(ws.items(["id"])["id"])
    assert Curation(ws).log()[0]["why"] == "review:outliers"
    # Excluded, it leaves the other queues too.
    assert not any(p.item == MISLABELLED for q in ("labels", "tags") for p in build_queue(ws, q).proposals)


def test_skip_moves_to_the_end_and_records_nothing(ws: Workspace) -> None:
    q = build_queue(ws, "tags")
    assert len(q.proposals) >= 2
    first = q.proposals[0]
    out = decide(ws, first.id, "skip", "ana", "tags")
    assert out["batch"] is None and out["left"] == q.left and not (ws.root / review.TABLE).exists()
    again = build_queue(ws, "tags")
    assert again.proposals[-1].id == first.id and again.left == q.left
    with pytest.raises(ReviewError, match="unknown decision"):
        decide(ws, first.id, "maybe", "ana", "tags")


def test_cache_survives_edits_not_a_new_source(ws: Workspace, tmp_path: Path) -> None:
    build_queue(ws, "labels")
    started = time.perf_counter()
    first = build_queue(ws, "uncertain", refresh=True)
    cold = time.perf_counter() - started
    assert not first.cached and (ws.root / "cache" / "review" / "uncertain.json").is_file()
    started = time.perf_counter()
    second = build_queue(ws, "uncertain")
    warm = time.perf_counter() - started
    assert second.cached and [p.id for p in second.proposals] == [p.id for p in first.proposals]
    print(f"uncertain queue: built in {cold:.2f} s, from cache in {warm:.3f} s")
    # A curation edit does not make the predictions stale (only what is filtered)...
    decide(ws, first.proposals[0].id, "accept", "ana", "uncertain")
    assert build_queue(ws, "uncertain").cached
    # ...an ingest does (new items need predictions), and so does a new quality run for its queues.
    ws.add_items(items_to_frame([_item("s/new", _image(tmp_path / "new.png", (200, 200, 30), seed=3), None, [])]))
    assert not build_queue(ws, "uncertain").cached
    assert build_queue(ws, "labels").cached
    report = ws.root / "reports" / "quality-latest.json"
    st = report.stat()
    os.utime(report, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not build_queue(ws, "labels").cached


def test_the_review_command_lists_and_decides(ws: Workspace, monkeypatch) -> None:
    from typer.testing import CliRunner

    from curata.cli import app

    monkeypatch.setenv("CURATA_EDITOR", "cli-rev")
    run = CliRunner().invoke
    counts = run(app, ["review", "-w", str(ws.root), "--json"])
    assert counts.exit_code == 0, counts.output
    assert json.loads(counts.output)["labels"]["left"] >= 1
    listed = json.loads(run(app, ["review", "labels", "-w", str(ws.root), "--json"]).output)
    first = listed["proposals"][0]
    done = run(app, ["review", "labels", "--accept", first["id"], "-w", str(ws.root)])
    assert done.exit_code == 0 and "accepted" in done.output, done.output
    assert _label(ws, first["item"]) == first["value"]
    again = run(app, ["review", "labels", "--accept", first["id"], "-w", str(ws.root)])
    assert again.exit_code == 2 and "no open proposal" in again.output
    assert run(app, ["review", "nope", "-w", str(ws.root)]).exit_code == 2
