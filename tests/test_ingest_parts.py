"""Ingest of a large source in parts: tables read a chunk at a time, one commit per part, a report that lists
only so much, and a kill midway that keeps what was committed. The parts are made tiny here (monkeypatched
sizes), so a few records exercise what a source of millions does."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import curata.ingest.pipeline as pipeline
import curata.ingest.report as report_module
import curata.ingest.table as table_module
from conftest import write_image
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.records import SourceError
from curata.ingest.table import ColumnMap, read_table
from curata.workspace import Workspace


@pytest.fixture
def tiny_parts(monkeypatch):
    monkeypatch.setattr(pipeline, "INGEST_WINDOW", 4)
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 3)


def _images(folder, n):
    return [write_image(folder / f"{i:02d}.png", size=(8 + i, 8), color=(10 * i, 100, 200 - 5 * i)) for i in range(n)]


def test_a_source_of_several_parts_equals_one_commit(tmp_path, monkeypatch):
    """Ids, hashes and report of an ingest in parts of 4 (tables read 3 rows at a time) equal one whole
    commit's; a duplicate id in a later part is still rejected, naming it."""
    paths = _images(tmp_path / "img", 10)
    rows = [{"id": f"t{i}", "image": str(p), "text": f"token {i}", "label": "ab"[i % 2]} for i, p in enumerate(paths)]
    rows.insert(7, {"id": "t1", "image": str(paths[2]), "text": "again", "label": "a"})  # t1 again, 2 parts later
    pd.DataFrame(rows).to_csv(tmp_path / "items.csv", index=False)
    whole = ingest(tmp_path / "items.csv", Workspace(tmp_path / "whole"))
    assert whole.commits == 1

    monkeypatch.setattr(pipeline, "INGEST_WINDOW", 4)
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 3)
    ws = Workspace(tmp_path / "parts")
    parts = ingest(tmp_path / "items.csv", ws)
    assert parts.commits == 3 and parts.summary()["ok"] == 10 and parts.summary()["records"] == 11
    (dup,) = parts.errors
    assert (dup.ref, dup.code) == ("items.csv:9", "duplicate_id") and "'t1'" in dup.reason
    columns = ["id", "image_sha256", "width", "label", "text"]
    pd.testing.assert_frame_equal(ws.items(columns).sort_values("id", ignore_index=True),
                                  Workspace(tmp_path / "whole").items(columns).sort_values("id", ignore_index=True))
    assert [(e.ref, e.status, e.code) for e in parts.entries] == [(e.ref, e.status, e.code) for e in whole.entries]
    again = ingest(tmp_path / "items.csv", ws)  # idempotent: every part unchanged, nothing committed
    assert (again.added, again.updated, again.unchanged, again.commits) == (0, 0, 10, 0)


def test_a_run_killed_midway_keeps_the_parts_it_committed(tmp_path, tiny_parts, monkeypatch):
    paths = _images(tmp_path / "img", 10)
    pd.DataFrame({"id": [f"t{i}" for i in range(10)], "image": [str(p) for p in paths]}).to_csv(
        tmp_path / "items.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    real = Workspace.upsert_items
    calls = []

    def dies_on_the_second_part(self, frame, what="ingest", **kwargs):
        calls.append(len(frame))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C (or a kill) during the second part
        return real(self, frame, what, **kwargs)

    monkeypatch.setattr(Workspace, "upsert_items", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "items.csv", ws)
    assert sorted(i.rsplit("/", 1)[1] for i in ws.items()["id"]) == ["t0", "t1", "t2", "t3"]  # the first part
    monkeypatch.setattr(Workspace, "upsert_items", real)
    rerun = ingest(tmp_path / "items.csv", ws)
    assert (rerun.added, rerun.unchanged) == (6, 4) and len(ws.items()) == 10


def test_the_report_lists_so_many_accepted_records_and_counts_the_rest(tmp_path, tiny_parts, monkeypatch):
    """Past LISTED_OK accepted records are counted, notes included; rejected ones are always listed. An
    image-only source (its first part has no text) gets no "empty text" note in any part."""
    monkeypatch.setattr(report_module, "LISTED_OK", 5)
    paths = _images(tmp_path / "img", 9)
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    pd.DataFrame({"image": [str(p) for p in paths] + [str(tmp_path / "img" / "bad.png")]}).to_csv(
        tmp_path / "items.csv", index=False)
    report = ingest(tmp_path / "items.csv", Workspace(tmp_path / "ws"))
    summary = report.summary()
    assert (summary["records"], summary["ok"], summary["errors"], summary["unlisted_ok"]) == (10, 9, 1, 4)
    assert len(report.ok) == 5 and report.errors[0].ref == "items.csv:11"
    assert summary["with_notes"] == 0 and not report.note_counts  # image-only: no "empty text" anywhere
    assert summary["items_per_second"] is not None


def test_empty_text_is_noted_where_the_source_has_text(tmp_path, tiny_parts, monkeypatch):
    monkeypatch.setattr(report_module, "LISTED_OK", 2)
    paths = _images(tmp_path / "img", 8)
    texts = ["a cat", "", "a dog", "", "", "x", "", "y"]
    pd.DataFrame({"image": [str(p) for p in paths], "text": texts}).to_csv(tmp_path / "items.csv", index=False)
    report = ingest(tmp_path / "items.csv", Workspace(tmp_path / "ws"))
    assert report.note_counts["empty text"] == 4 and report.summary()["with_notes"] == 4


def _records(path, columns=None):
    return [(r.ref, r.local_id, r.image and r.image.rsplit("/", 1)[-1], r.text, r.label, r.error, r.notes, r.meta)
            for r in read_table(path, columns or ColumnMap())]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tables_read_in_chunks_give_the_records_of_a_whole_read(tmp_path, monkeypatch, suffix):
    rows = [{"id": f"r{i}", "image": f"{i}.png", "text": f"t{i}"} for i in range(8)]
    rows[6]["label"] = "late"  # a key seen only in a late row is still a column (JSONL)
    frame = pd.DataFrame(rows)
    path = tmp_path / f"items{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        lines = [json.dumps({k: v for k, v in row.items()}) for row in rows]
        lines.insert(3, "{not json")
        lines.insert(5, "")
        path.write_text("\n".join(lines) + "\n")
    whole = _records(path)
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 3)
    chunked = _records(path)
    assert chunked == whole
    assert [r[4] for r in chunked if r[5] is None][6] == "late"
    if suffix == ".jsonl":  # line numbers, not row numbers, past the chunk boundaries
        assert [(r[0], r[5] and r[5][0]) for r in chunked][3:6] == [("items.jsonl:4", "malformed_json"),
                                                                   ("items.jsonl:5", None), ("items.jsonl:7", None)]
    else:
        assert [r[0] for r in chunked][-1] == f"items{suffix}:{8 + (2 if suffix == '.csv' else 1) - 1}"


def test_a_table_that_is_not_valid_utf8_is_read_as_cp1252_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 2)
    path = tmp_path / "items.csv"
    body = "image,text\n" + "".join(f"{i}.png,row {i}\n" for i in range(5))
    path.write_bytes(body.encode() + "5.png,caf\xe9\n".encode("cp1252"))
    records = list(read_table(path, ColumnMap()))
    assert records[-1].text == "café" and len(records) == 6
    assert f"byte {len(body.encode()) + 9}" in records[0].notes[0] and "cp1252" in records[0].notes[0]


def test_a_pretty_printed_json_array_is_not_json_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 2)
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps([{"image": f"{i}.png"} for i in range(5)], indent=2))
    with pytest.raises(SourceError, match="not JSON Lines"):
        read_table(path, ColumnMap())


def test_ray_ingest_in_parts_uses_one_runtime(tmp_path, tiny_parts, monkeypatch):
    """With the Ray engine, each part's images are checked in Ray tasks, and the runtime started by the first
    part serves the others (one start, one shutdown)."""
    import ray

    import curata.scale.runtime as runtime

    starts = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: starts.append(1) or real_init(*a, **k))
    paths = _images(tmp_path / "img", 9)
    pd.DataFrame({"image": [str(p) for p in paths]}).to_csv(tmp_path / "items.csv", index=False)
    report = ingest(tmp_path / "items.csv", Workspace(tmp_path / "ws"), IngestOptions(engine="ray", ray_cpus=2))
    assert (report.commits, report.nodes, report.summary()["ok"]) == (3, 1, 9)
    assert len(starts) == 1 and not ray.is_initialized() and runtime._held == 0


def test_a_new_source_in_parts_is_not_probed_unless_another_commit_lands_between(tmp_path, tiny_parts, monkeypatch):
    """A source new to the collection: its later parts skip the id probe (only this run committed since).
    When another writer commits between two parts (here: an item with an id of the third part), the probe is
    made again, so that item is updated, not stored twice."""
    from curata.collection import Collection
    from curata.ingest.pipeline import ingest_records
    from curata.ingest.records import RawRecord

    paths = _images(tmp_path / "img", 10)
    pd.DataFrame({"id": [f"t{i}" for i in range(10)], "image": [str(p) for p in paths],
                  "text": [f"token {i}" for i in range(10)]}).to_csv(tmp_path / "items.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    first = ingest(tmp_path / "items.csv", ws, IngestOptions(source_name="other"))  # another source: not ours
    probes = []
    real_probe = Collection._stored_hashes
    monkeypatch.setattr(Collection, "_stored_hashes", lambda self, d, ids: probes.append(len(ids)) or
                        real_probe(self, d, ids))
    report = ingest(tmp_path / "items.csv", ws, IngestOptions(source_name="mine"))
    assert first.commits == 3 and report.commits == 3 and probes == []  # parts 2 and 3 of a new source: no probe
    assert report.added == 10 and len(ws.items()) == 20

    real_upsert = Workspace.upsert_items

    def meanwhile(self, frame, what="ingest", **kwargs):
        out = real_upsert(self, frame, what, **kwargs)
        if frame["id"].iloc[0] == "late/t0":  # after the first part: another writer stores an id of part 3
            intruder = RawRecord(ref="other:1", local_id="t9", image=str(paths[9]), text="written meanwhile")
            ingest_records([intruder], ws, IngestOptions(source_name="late"), source="other", fmt="table")
        return out

    monkeypatch.setattr(Workspace, "upsert_items", meanwhile)
    late = ingest(tmp_path / "items.csv", ws, IngestOptions(source_name="late"))
    assert probes  # the version moved under the run: its later parts were probed
    items = ws.items()
    assert (items["id"] == "late/t9").sum() == 1 and late.added == 9 and late.updated == 1
    assert items.set_index("id").loc["late/t9", "text"] == "token 9"


def test_a_table_unreadable_midway_stops_with_one_line_and_keeps_the_parts_before(tmp_path, tiny_parts):
    """An unterminated quote near the end of a large CSV is only met when that chunk is read: the run stops with
    the one-line SourceError naming the table, and the parts committed before it stay (a rerun of the mended
    table adds the rest)."""
    paths = _images(tmp_path / "img", 10)
    body = "id,image\n" + "".join(f"t{i},{p}\n" for i, p in enumerate(paths))
    (tmp_path / "items.csv").write_text(body + 't10,"unterminated\n')
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(SourceError, match=r"cannot read table items\.csv"):
        ingest(tmp_path / "items.csv", ws)
    assert len(ws.items()) in (4, 8)  # whole parts only
    (tmp_path / "items.csv").write_text(body)
    assert ingest(tmp_path / "items.csv", ws).summary()["ok"] == 10 and len(ws.items()) == 10


def test_a_part_with_no_accepted_record_does_not_stop_the_next(tmp_path, tiny_parts):
    """A first part of missing files only: the ids seen so far are none, and the later parts (with a duplicate
    id across them) are checked as usual."""
    paths = _images(tmp_path / "img", 5)
    rows = [{"id": f"gone{i}", "image": str(tmp_path / f"missing{i}.png")} for i in range(4)]
    rows += [{"id": f"t{i}", "image": str(p)} for i, p in enumerate(paths)] + [{"id": "t0", "image": str(paths[1])}]
    pd.DataFrame(rows).to_csv(tmp_path / "items.csv", index=False)
    report = ingest(tmp_path / "items.csv", Workspace(tmp_path / "ws"))
    codes = [e.code for e in report.errors]
    assert codes == ["missing_file"] * 4 + ["duplicate_id"] and report.summary()["ok"] == 5
