"""Curation as data: curated values beside the source's, kept over re-ingest, an append-only log with undo,
optimistic versions, the edit journal, and a kill at any point of a write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lance
import pandas as pd
import pyarrow as pa
import pytest

from curata.collection import COLUMNS, SCHEMA, Collection, Item, items_to_frame
from curata.curation import PENDING, Change, Curation, EditConflict, EditError, EditJob, changes_from
from curata.edit_journal import APPLYING, JOURNAL, EditJournal
from curata.workspace import Workspace


def frame(n: int, label_of=lambda i: "cat" if i % 2 else "dog", text: str = "") -> pd.DataFrame:
    return items_to_frame([Item(id=f"s/{i}", source="s", collection="c", image=f"/img/{i}.png",
                                image_sha256=f"h{i}", label=label_of(i), tags=["size=big"], text=text)
                           for i in range(n)])


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.add_items(frame(8))
    return ws


def row(ws: Workspace, item: str) -> dict:
    got = ws.collection.by_ids([item], ["id", "label", "tags", "source_label", "source_tags", "curated",
                                        "excluded", "duplicate_of", "edit_version"])
    record = got.iloc[0].to_dict()
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in record.items()}


def test_an_edit_sets_curated_values_beside_the_sources_and_stages_read_them(ws):
    result = Curation(ws).apply(["s/1", "s/2"], changes_from({"label": "fox", "add_tags": ["hat=red"]}), who="ana",
                                why="test")
    assert result.batch and len(result.edits) == 4 and result.versions == {"s/1": 1, "s/2": 1}
    one = row(ws, "s/1")
    assert one["label"] == "fox" and one["source_label"] == "cat"
    assert one["tags"] == ["size=big", "hat=red"] and one["source_tags"] == ["size=big"]
    assert one["curated"] == ["label", "tags"] and one["edit_version"] == 1
    items = ws.items(["id", "label"]).set_index("id")["label"]
    assert items["s/1"] == items["s/2"] == "fox" and items["s/3"] == "cat"  # what train/cluster/search read
    assert ws.collection.count("label = 'fox'") == 2  # filters (and the label index) see the curated value
    log = Curation(ws).log(item="s/1")
    assert {e["field"] for e in log} == {"label", "tags"} and all(e["who"] == "ana" for e in log)
    assert next(e for e in log if e["field"] == "label")["before"] == "cat"


def test_setting_the_same_value_again_is_no_edit(ws):
    Curation(ws).apply(["s/1"], changes_from({"label": "fox"}), who="ana")
    again = Curation(ws).apply(["s/1"], changes_from({"label": "fox"}), who="ana")
    assert again.batch is None and again.unchanged == ["s/1"] and again.versions == {"s/1": 1}
    assert Curation(ws).count() == 1


def test_excluded_and_duplicate_items_leave_the_stages_but_not_the_collection(ws):
    Curation(ws).apply(["s/3"], changes_from({"excluded": True}), who="ana")
    Curation(ws).apply(["s/4"], changes_from({"duplicate_of": "s/5"}), who="ana")
    assert set(ws.items(["id"])["id"]) == {f"s/{i}" for i in range(8)} - {"s/3", "s/4"}
    assert len(ws.items(["id"], include_excluded=True)) == 8
    assert len(ws.items(["id"], where="label = 'cat'")) == 3  # s/1, s/5, s/7: a filter keeps the exclusion
    Curation(ws).apply(["s/4"], [Change("duplicate_of", "set", None)], who="ana")  # "keep"
    assert "s/4" in set(ws.items(["id"])["id"])


def test_a_reingest_keeps_the_curators_values_and_counts_them(ws):
    Curation(ws).apply(["s/1"], changes_from({"label": "fox", "tags": ["hat=red"]}), who="ana")
    changed = frame(8, label_of=lambda i: "lynx" if i == 1 else ("cat" if i % 2 else "dog"), text="new text")
    result = ws.upsert_items(changed)
    assert (result.updated, result.kept_edits) == (8, 1)
    one = row(ws, "s/1")
    assert one["label"] == "fox" and one["source_label"] == "lynx"  # the source's news is kept, beside
    assert one["tags"] == ["hat=red"] and one["edit_version"] == 1
    assert row(ws, "s/2")["label"] == "dog"
    assert ws.upsert_items(changed).kept_edits == 0  # unchanged rows: nothing written, nothing to keep
    history = ws.collection.history(3)
    assert history[0]["action"] == "upsert"
    # Reverting follows the source again, including what it changed meanwhile.
    Curation(ws).apply(["s/1"], changes_from({"revert": ["label"]}), who="ana")
    assert row(ws, "s/1")["label"] == "lynx" and row(ws, "s/1")["curated"] == ["tags"]


def test_replacing_the_collection_keeps_the_edits_of_the_ids_that_stay(ws):
    Curation(ws).apply(["s/2"], changes_from({"label": "wolf"}), who="ana")
    ws.replace_items(frame(4))
    assert row(ws, "s/2")["label"] == "wolf" and row(ws, "s/2")["source_label"] == "dog"


def test_a_stale_version_is_a_conflict_and_writes_nothing(ws):
    first = Curation(ws).apply(["s/1"], changes_from({"label": "fox"}), who="ana", expected={"s/1": 0})
    with pytest.raises(EditConflict) as info:
        Curation(ws).apply(["s/1", "s/2"], changes_from({"label": "owl"}), who="bo", expected={"s/1": 0, "s/2": 0})
    assert (info.value.item, info.value.current) == ("s/1", 1)
    assert row(ws, "s/1")["label"] == "fox" and row(ws, "s/2")["label"] == "dog"  # s/2 not written either
    assert Curation(ws).count() == len(first.edits)


def test_undo_puts_back_a_batch_and_is_itself_logged(ws):
    cur = Curation(ws)
    batch = cur.apply(["s/1", "s/2"], changes_from({"label": "fox", "remove_tags": ["size=big"]}), who="ana").batch
    cur.apply(["s/2"], changes_from({"label": "owl"}), who="bo")
    undone = cur.undo("ana", batch=batch)
    assert undone.batch and {e["item"] for e in undone.edits} == {"s/1", "s/2"}
    assert row(ws, "s/1")["label"] == "cat" and row(ws, "s/1")["tags"] == ["size=big"]
    assert row(ws, "s/1")["curated"] is None  # back to following the source
    assert row(ws, "s/2")["label"] == "dog"  # the batch's before, over bo's later edit (undo is explicit)
    assert cur.log(limit=1)[0]["undoes"] == batch
    one = cur.log(item="s/2", limit=None)
    assert [e["after"] for e in one if e["field"] == "label"] == ["dog", "owl", "fox"]  # newest first
    with pytest.raises(EditError, match="no edit"):
        cur.undo("ana", batch="b-nope")


@pytest.mark.parametrize("body, message", [
    ({"label": ""}, "label"), ({"tags": "a,b"}, "list"), ({"add_tags": [""]}, "non-empty"),
    ({"excluded": "yes"}, "true or false"), ({"colour": "red"}, "unknown edit field"), ({}, "changes nothing"),
    ({"revert": ["excluded"]}, "reverted"),
])
def test_bad_edits_are_refused_with_the_reason(body, message):
    with pytest.raises(EditError, match=message):
        changes_from(body)


def test_unknown_items_and_bad_duplicates_write_nothing(ws):
    cur = Curation(ws)
    with pytest.raises(EditError, match="no item s/99"):
        cur.apply(["s/1", "s/99"], changes_from({"label": "fox"}), who="ana")
    with pytest.raises(EditError, match="names no item"):
        cur.apply(["s/1"], changes_from({"duplicate_of": "s/99"}), who="ana")
    with pytest.raises(EditError, match="itself"):
        cur.apply(["s/1"], changes_from({"duplicate_of": "s/1"}), who="ana")
    assert cur.count() == 0 and row(ws, "s/1")["label"] == "cat"


def _killed(ws: Workspace, at: str) -> None:
    """Apply an edit in another process that dies (os._exit, no clean-up) when it reaches `at`: "log" (the
    journal line is written, the log append not made), "collection" (the log append made, the collection
    commit not) or "journal" (a deferred write: journaled, nothing applied)."""
    script = textwrap.dedent(f"""
        import os
        from curata import curation
        from curata.workspace import Workspace
        at = {at!r}
        if at == "log":
            curation.Curation._append_log = lambda *a, **k: os._exit(9)
        if at == "collection":
            curation.Collection.apply_curation = lambda *a, **k: os._exit(9)
        cur = curation.Curation(Workspace({str(ws.root)!r}))
        jobs = [curation.EditJob(["s/6"], curation.changes_from({{"label": "ox"}}), "ana")]
        cur.apply_many(jobs, defer=at == "journal")
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr.decode()[-2000:]


def _stored(ws: Workspace, item: str) -> dict:
    """The row as the table holds it, without applying the journal (what `row` would do first)."""
    return Collection(ws.root).by_ids([item], ["id", "label", "edit_version"]).iloc[0].to_dict()


@pytest.mark.parametrize("at", ["log", "collection", "journal"])
def test_a_kill_anywhere_in_a_write_leaves_the_edit_whole_for_the_next_reader(ws, at):
    _killed(ws, at)
    assert _stored(ws, "s/6")["label"] == "dog"  # journaled, not in the table yet
    assert (ws.root / (JOURNAL if at == "journal" else APPLYING)).exists()
    assert Curation(ws).count() == 1 and Curation(ws).log(item="s/6")[0]["after"] == "ox"
    assert row(ws, "s/6")["label"] == "ox" and row(ws, "s/6")["edit_version"] == 1  # a reader applies it
    assert not (ws.root / APPLYING).exists() and not EditJournal(ws.root).pending()
    assert Curation(ws).count() == 1  # the log append is not made twice
    Curation(ws).apply(["s/6"], changes_from({"label": "elk"}), who="bo", expected={"s/6": 1})
    assert row(ws, "s/6")["label"] == "elk" and Curation(ws).count() == 2


def test_a_deferred_edit_is_seen_by_writers_and_readers_before_it_reaches_the_table(ws):
    cur = Curation(ws)
    first = cur.apply_many([EditJob(["s/1"], changes_from({"label": "fox"}), "ana")], defer=True)[0]
    assert first.versions == {"s/1": 1} and _stored(ws, "s/1")["label"] == "cat"
    assert [e["after"] for e in cur.log(item="s/1")] == ["fox"] and cur.count() == 1
    stale = cur.apply_many([EditJob(["s/1"], changes_from({"label": "owl"}), "bo", expected={"s/1": 0})],
                           defer=True)[0]
    assert isinstance(stale, EditConflict) and stale.current == 1  # the journal's version, not the table's
    again = cur.apply_many([EditJob(["s/1"], changes_from({"add_tags": ["hat=red"]}), "bo", expected={"s/1": 1})],
                           defer=True)[0]
    assert again.versions == {"s/1": 2} and _stored(ws, "s/1")["label"] == "cat"
    one = row(ws, "s/1")  # a reader: the journal is applied first
    assert (one["label"], one["tags"], one["curated"], one["edit_version"]) == (
        "fox", ["size=big", "hat=red"], ["label", "tags"], 2)
    assert _stored(ws, "s/1")["edit_version"] == 2 and not EditJournal(ws.root).pending()
    assert cur.count() == 2 and len(cur.log(item="s/1")) == 2
    cur.undo("ana", batch=again.batch)
    assert row(ws, "s/1")["tags"] == ["size=big"] and row(ws, "s/1")["edit_version"] == 3


def test_a_reingest_applies_the_journal_first_and_keeps_its_edits(ws):
    Curation(ws).apply_many([EditJob(["s/2"], changes_from({"label": "fox"}), "ana")], defer=True)
    ws.add_items(frame(8, label_of=lambda i: "emu"))
    assert not EditJournal(ws.root).pending()
    two, three = row(ws, "s/2"), row(ws, "s/3")
    assert (two["label"], two["source_label"], two["edit_version"]) == ("fox", "emu", 1)
    assert three["label"] == "emu"


def test_a_torn_journal_line_is_skipped_and_cut_off_before_the_next(ws):
    journal = EditJournal(ws.root)
    Curation(ws).apply_many([EditJob(["s/1"], changes_from({"label": "fox"}), "ana")], defer=True)
    with open(journal.path, "ab") as fh:  # a power cut in the middle of the next append
        fh.write(b'{"batches": ["b-torn"], "log": [{"item": "s/2"')
    assert Curation(ws).count() == 1
    Curation(ws).apply_many([EditJob(["s/3"], changes_from({"label": "owl"}), "bo")], defer=True)
    lines = journal.path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b"" and all(json.loads(line) for line in lines[:2])
    assert (row(ws, "s/1")["label"], row(ws, "s/2")["label"], row(ws, "s/3")["label"]) == ("fox", "dog", "owl")
    assert Curation(ws).count() == 2


def test_a_pending_file_without_its_log_commit_is_dropped(ws):
    (ws.root / PENDING).write_text(json.dumps({"batch": "b-never", "rows": [
        {"id": "s/1", "label": "ghost", "tags": [], "curated": ["label"], "excluded": None, "duplicate_of": None,
         "edit_version": 1}]}))
    Curation(ws).apply(["s/2"], changes_from({"label": "elk"}), who="bo")
    assert row(ws, "s/1")["label"] == "cat" and not (ws.root / PENDING).exists()
    (ws.root / PENDING).write_text('{"batch": "b-torn", "ro')  # torn by a power cut mid-write
    Curation(ws).apply(["s/3"], changes_from({"label": "elk"}), who="bo")
    assert not (ws.root / PENDING).exists()


def test_a_table_written_before_curation_reads_and_upgrades(tmp_path):
    ws = Workspace(tmp_path / "old")
    source = frame(4)
    table = pa.Table.from_pandas(source[COLUMNS], schema=SCHEMA, preserve_index=False)
    table = table.append_column("row_hash", pa.array([1, 2, 3, 4], pa.uint64()))
    lance.write_dataset(table, str(ws.collection_path))
    got = ws.collection.read(["id", "label", "source_label", "curated", "edit_version"])
    assert got["source_label"].tolist() == got["label"].tolist() and got["curated"].isna().all()
    assert len(ws.items()) == 4
    Curation(ws).apply(["s/1"], changes_from({"label": "fox"}), who="ana")
    assert row(ws, "s/1")["label"] == "fox" and row(ws, "s/1")["source_label"] == "cat"
    assert row(ws, "s/2")["source_label"] == "dog"  # copied into the new column for every row


def test_the_command_line_edits_lists_and_undoes(ws, monkeypatch):
    from typer.testing import CliRunner

    from curata.cli import app

    monkeypatch.setenv("CURATA_EDITOR", "cli-ana")
    run = CliRunner().invoke
    w = ["-w", str(ws.root)]
    done = run(app, ["edit", "s/1", "s/3", "--label", "fox", "--add-tag", "hat=red", "--why", "check", *w, "--json"])
    assert done.exit_code == 0, done.output
    batch = json.loads(done.output)["batch"]
    assert row(ws, "s/3")["label"] == "fox"
    bulk = run(app, ["edit", "--where", "label = 'dog'", "--exclude", *w])
    assert bulk.exit_code == 0 and "4 item(s) changed" in bulk.output
    listed = run(app, ["edits", "--item", "s/1", *w, "--json"])
    assert {e["who"] for e in json.loads(listed.output)["edits"]} == {"cli-ana"}
    assert run(app, ["undo", batch, *w]).exit_code == 0
    assert row(ws, "s/3")["label"] == "cat"
    for bad in (["edit", "s/1", *w], ["edit", "s/404", "--label", "x", *w], ["undo", *w],
                ["edit", "s/1", "--label", "x", "--no-label", *w], ["undo", "b-none", *w]):
        got = run(app, bad)
        assert got.exit_code == 2 and "error" in got.output, (bad, got.output)


def test_adding_and_removing_tags_in_one_edit_both_apply(ws):
    Curation(ws).apply(["s/1"], changes_from({"add_tags": ["hat=red", "eyes=blue"], "remove_tags": ["size=big"]}),
                       who="ana")
    assert row(ws, "s/1")["tags"] == ["hat=red", "eyes=blue"]


def test_a_group_of_edits_is_written_together_and_each_is_judged_alone(ws):
    from curata.curation import EditJob

    cur = Curation(ws)
    results = cur.apply_many([
        EditJob(["s/1"], changes_from({"label": "fox"}), "ana", expected={"s/1": 0}),
        EditJob(["s/1"], changes_from({"label": "owl"}), "bo", expected={"s/1": 0}),  # read before ana's edit
        EditJob(["s/1", "s/2"], changes_from({"add_tags": ["hat=red"]}), "cy", expected={"s/1": 1}),
        EditJob(["s/404"], changes_from({"label": "x"}), "dee"),
    ])
    assert [type(r).__name__ for r in results] == ["EditResult", "EditConflict", "EditResult", "EditError"]
    assert results[0].batch != results[2].batch and results[2].versions == {"s/1": 2, "s/2": 1}
    one = row(ws, "s/1")
    assert one["label"] == "fox" and one["tags"] == ["size=big", "hat=red"] and one["edit_version"] == 2
    assert {e["batch"] for e in cur.log(limit=None)} == {results[0].batch, results[2].batch}
    assert ws.collection.history(1)[0]["action"] == "edit"
    undone = cur.undo("ana", batch=results[0].batch)  # each batch of the group undoes alone
    assert row(ws, "s/1")["label"] == "cat" and "hat=red" in row(ws, "s/1")["tags"] and undone.batch


def test_compaction_after_many_edits_keeps_every_value_and_log_row(ws):
    from typer.testing import CliRunner

    from curata import tables
    from curata.cli import app

    cur = Curation(ws)
    for n in range(40):  # one small fragment per edit, in the collection and in the log; small ones merged past 32
        cur.apply([f"s/{n % 8}"], changes_from({"add_tags": [f"n={n}"]}), who="ana")
    assert len(ws.collection.dataset().get_fragments()) <= 33
    assert sorted(row(ws, "s/3")["tags"]) == sorted(["size=big", *(f"n={n}" for n in range(3, 40, 8))])
    done = CliRunner().invoke(app, ["compact", "-w", str(ws.root), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["edits.lance"]["fragments_after"] == 1 and report["collection"]["fragments_after"] == 1
    assert cur.count() == 40 and len(cur.log(item="s/3", limit=None)) == 5
    assert row(ws, "s/3")["edit_version"] == 5 and len(ws.items()) == 8
    assert tables.exists(ws.root / "edits.lance")


def test_one_bad_job_in_a_group_fails_alone(ws):
    from curata.curation import EditJob

    results = Curation(ws).apply_many([EditJob([], changes_from({"label": "x"}), "a"),
                                       EditJob(["s/2"], changes_from({"label": "elk"}), "b")])
    assert isinstance(results[0], EditError) and results[1].batch and row(ws, "s/2")["label"] == "elk"
