"""`curata export`: curated and source values, excluded items, CSV injection, ERC-721 files, atomic writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curata import export, tables
from curata.cli import app
from curata.collection import SCHEMA, Item, items_to_frame, row_hashes
from curata.curation import Curation, changes_from
from curata.export import (
    DEFAULT_COLUMNS,
    EmptyWorkspace,
    ExportError,
    TargetExists,
    erc721_attributes,
    erc721_file_stem,
    export_collection,
    infer_format,
)
from curata.workspace import Workspace

HOSTILE = "../../etc/passwd"
ATTRS = [{"trait_type": "hair", "value": "short"}, {"trait_type": "hat", "value": "red"},
         {"trait_type": "level", "value": 5, "display_type": "number"}]


def item(id: str, **kw) -> Item:
    return Item(id=id, source="src", collection=kw.pop("collection", "punks"), image=f"/img/{id}.png",
                image_sha256=f"sha-{id}", **kw)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Six items: one to curate, one with hostile text and id, one to exclude, one duplicate, two that slug alike."""
    ws = Workspace(tmp_path / "ws")
    ws.add_items(items_to_frame([
        item("punks/1", label="cat", tags=["hair=short", "hat=red", "cool"], attributes=ATTRS,
             text="Punk 1. A punk", meta={"name": "Punk 1"}, split="train"),
        item(HOSTILE, label="+1", tags=["-x", "@SUM(A1)"], text="=cmd|' /C calc'!A0",
             collection="@evil"),
        item("punks/3", label="dog", tags=["plain"]),
        item("punks/4", label="dog", text="\tleading tab"),
        item("a/b", label="cow", text="\rleading return"),
        item("a_b", label="cow"),
    ]))
    curation = Curation(ws)
    curation.apply(["punks/1"], changes_from({"label": "lion", "tags": ["hair=long", "cool", "mood=calm"]}),
                   who="tester")
    curation.apply(["punks/3"], changes_from({"excluded": True}), who="tester")
    curation.apply(["punks/4"], changes_from({"duplicate_of": "punks/1"}), who="tester")
    return ws


def jsonl(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r for r in rows}


def leftovers(folder: Path) -> list[str]:
    """Hidden staging files or folders an export left beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_curated_values_by_default_source_values_on_request(ws: Workspace, tmp_path: Path) -> None:
    result = export_collection(ws, tmp_path / "curated.jsonl", "jsonl")
    assert result["items"] == 4 and result["left_out"] == 2 and result["curated_items"] == 1
    curated = jsonl(tmp_path / "curated.jsonl")
    row = curated["punks/1"]
    assert list(row) == list(DEFAULT_COLUMNS)
    assert row["label"] == "lion" and row["tags"] == ["hair=long", "cool", "mood=calm"]
    assert row["source_label"] == "cat" and row["source_tags"] == ["hair=short", "hat=red", "cool"]
    assert row["curated"] == ["label", "tags"] and row["excluded"] is False and row["split"] == "train"
    assert curated["a_b"]["curated"] == [] and curated["a_b"]["label"] == "cow"

    export_collection(ws, tmp_path / "source.jsonl", values="source")  # the format from the suffix
    source = jsonl(tmp_path / "source.jsonl")["punks/1"]
    assert source["label"] == "cat" and source["tags"] == ["hair=short", "hat=red", "cool"]
    assert source["curated"] == ["label", "tags"]  # still says a curator changed it


def test_excluded_and_duplicates_left_out_unless_asked(ws: Workspace, tmp_path: Path) -> None:
    export_collection(ws, tmp_path / "active.jsonl")
    assert set(jsonl(tmp_path / "active.jsonl")) == {"punks/1", HOSTILE, "a/b", "a_b"}
    result = export_collection(ws, tmp_path / "all.jsonl", include_excluded=True)
    rows = jsonl(tmp_path / "all.jsonl")
    assert result["items"] == 6 and result["left_out"] == 0
    assert rows["punks/3"]["excluded"] is True and rows["punks/3"]["curated"] == ["excluded"]
    assert rows["punks/4"]["duplicate_of"] == "punks/1" and rows["punks/4"]["excluded"] is False


def test_csv_cells_are_inert(ws: Workspace, tmp_path: Path) -> None:
    export_collection(ws, tmp_path / "out.csv", include_excluded=True)
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    assert header == list(DEFAULT_COLUMNS)
    by_id = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    hostile = by_id[HOSTILE]
    assert hostile["text"] == "'=cmd|' /C calc'!A0" and hostile["label"] == "'+1"
    assert hostile["collection"] == "'@evil" and hostile["tags"] == "'-x|@SUM(A1)"
    assert by_id["punks/4"]["text"] == "'\tleading tab" and by_id["a/b"]["text"] == "'\rleading return"
    lion = by_id["punks/1"]
    assert lion["tags"] == "hair=long|cool|mood=calm" and lion["curated"] == "label|tags"
    assert lion["excluded"] == "false" and lion["duplicate_of"] == "" and by_id["punks/3"]["excluded"] == "true"


def test_parquet_keeps_types(ws: Workspace, tmp_path: Path) -> None:
    export_collection(ws, tmp_path / "out.parquet", include_excluded=True, columns=["id", "label", "tags", "excluded",
                                                                                   "edit_version"])
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "label", "tags", "excluded", "edit_version"]
    assert table.schema.field("tags").type == pa.list_(pa.string())
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["punks/1"]["tags"] == ["hair=long", "cool", "mood=calm"] and rows["punks/1"]["edit_version"] == 1
    assert rows["punks/3"]["excluded"] is True and rows["a_b"]["excluded"] is False


def test_pages_stream_every_item_once(ws: Workspace, tmp_path: Path) -> None:
    seen: list[int] = []

    class Reporter:
        def task(self, description: str, total: int | None):
            seen.append(total or 0)
            return lambda n=1: seen.append(n)

    result = export_collection(ws, tmp_path / "paged.jsonl", include_excluded=True, page_rows=2, reporter=Reporter())
    lines = (tmp_path / "paged.jsonl").read_text().splitlines()
    assert result["items"] == 6 and len(lines) == 6 and len({json.loads(x)["id"] for x in lines}) == 6
    assert seen[0] == 6 and sum(seen[1:]) == 6 and len(seen) > 2  # several pages, each reported


def test_erc721_merges_curated_tags_into_attributes(ws: Workspace, tmp_path: Path) -> None:
    result = export_collection(ws, tmp_path / "tokens", "erc721")
    assert result["items"] == 4
    doc = json.loads((tmp_path / "tokens" / "punks_1.json").read_text())
    assert doc["name"] == "Punk 1" and doc["description"] == "Punk 1. A punk" and doc["image"] == "/img/punks/1.png"
    # hair replaced in place by the curated value; hat dropped (the curator removed its tag); level kept as stored
    assert doc["attributes"] == [{"trait_type": "hair", "value": "long"},
                                 {"trait_type": "level", "value": 5, "display_type": "number"},
                                 {"value": "cool"}, {"trait_type": "mood", "value": "calm"}]
    export_collection(ws, tmp_path / "source", "erc721", values="source")
    source = json.loads((tmp_path / "source" / "punks_1.json").read_text())
    assert source["attributes"] == [*ATTRS, {"value": "cool"}]  # tags the attributes already say: not repeated


def test_erc721_attributes_rules() -> None:
    stored = json.dumps([{"trait_type": "acc", "value": "ring"}, {"trait_type": "acc", "value": "hat"},
                         {"trait_type": "eyes", "value": "blue"}, {"trait_type": "", "value": "shiny"}])
    source = ["acc=ring", "acc=hat", "eyes=blue", "shiny"]
    # not curated: the tags only add what the attributes lack
    assert erc721_attributes(stored, [*source, "extra=1", "word"], source) == [
        *json.loads(stored), {"trait_type": "extra", "value": "1"}, {"value": "word"}]
    # curated: acc takes exactly the curated values; eyes untouched; plain `shiny` removed by the curator
    assert erc721_attributes(stored, ["acc=ring", "acc=cape", "eyes=blue", "=odd"], source, tags_curated=True) == [
        {"trait_type": "acc", "value": "ring"}, {"trait_type": "acc", "value": "cape"},
        {"trait_type": "eyes", "value": "blue"}, {"value": "=odd"}]
    assert erc721_attributes("not json", ["a=b=c"]) == [{"trait_type": "a", "value": "b=c"}]
    assert erc721_attributes(None, []) == []


def test_erc721_file_names_are_safe_and_distinct(tmp_path: Path) -> None:
    ids = [HOSTILE, "..", ".", "/abs/path", ".hidden", "a/b", "a_b", "a?b", "日本/1", "x" * 400, "\x00nul", "CON"]
    ws = Workspace(tmp_path / "ws")
    ws.add_items(items_to_frame([item(i) for i in ids]))
    (tmp_path / "out").mkdir()
    result = export_collection(ws, tmp_path / "out" / "tokens", "erc721")
    folder = tmp_path / "out" / "tokens"
    files = sorted(p.name for p in folder.iterdir())
    assert result["items"] == len(ids) and len(files) == len(ids)
    assert all(p.is_file() and p.parent == folder for p in folder.iterdir())
    assert not any(f.startswith(".") for f in files) and all(len(f.encode()) <= 255 for f in files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokens"]  # nothing escaped the folder
    assert not (tmp_path / "etc").exists()
    assert {"etc_passwd.json", "a_b.json", "a_b-2.json", "日本_1.json", "CON.json"} <= set(files)
    names = {json.loads((folder / f).read_text())["name"] for f in files}
    assert names == set(ids)  # every item has its own file
    assert erc721_file_stem("..") == "item" and erc721_file_stem("../../x") == "x"


def test_refuses_to_overwrite(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("keep me")
    with pytest.raises(TargetExists, match="exists"):
        export_collection(ws, target)
    assert target.read_text() == "keep me"
    export_collection(ws, target, overwrite=True)
    assert target.read_text().startswith("id,collection")
    folder = tmp_path / "tokens"
    export_collection(ws, folder, "erc721")
    (folder / "stray.json").write_text("{}")
    with pytest.raises(TargetExists):
        export_collection(ws, folder, "erc721")
    export_collection(ws, folder, "erc721", overwrite=True)
    assert not (folder / "stray.json").exists() and (folder / "punks_1.json").exists()
    with pytest.raises(ExportError, match="is a folder"):
        export_collection(ws, folder, "csv", overwrite=True)
    assert leftovers(tmp_path) == []


def test_one_line_errors(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown export format 'xml'"):
        export_collection(ws, tmp_path / "x.xml", "xml")
    with pytest.raises(ExportError, match="cannot tell the export format"):
        export_collection(ws, tmp_path / "noext")
    with pytest.raises(ExportError, match="does not exist"):
        export_collection(ws, tmp_path / "missing" / "out.csv")
    with pytest.raises(ExportError, match="values must be"):
        export_collection(ws, tmp_path / "out.csv", values="mine")
    with pytest.raises(ExportError, match="unknown column 'row_hash'"):
        export_collection(ws, tmp_path / "out.csv", columns=["id", "row_hash"])
    with pytest.raises(EmptyWorkspace, match="no items"):
        export_collection(Workspace(tmp_path / "empty"), tmp_path / "out.csv")
    assert issubclass(EmptyWorkspace, ValueError) and issubclass(TargetExists, ValueError)
    assert not (tmp_path / "out.csv").exists() and leftovers(tmp_path) == []
    assert (infer_format("a.CSV"), infer_format("a.ndjson"), infer_format("folder")) == ("csv", "jsonl", None)


@pytest.mark.parametrize("fmt,name", [("csv", "out.csv"), ("jsonl", "out.jsonl"), ("parquet", "out.parquet")])
def test_a_failure_mid_way_leaves_no_export(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fmt: str, name: str) -> None:
    real, calls = export._normalise, []

    def failing(row: dict, values: str) -> dict:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk gone")
        return real(row, values)

    monkeypatch.setattr(export, "_normalise", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        export_collection(ws, tmp_path / name, fmt, page_rows=1)
    assert not (tmp_path / name).exists() and leftovers(tmp_path) == []
    # with --overwrite, the previous export stays whole
    (tmp_path / name).write_text("previous")
    calls.clear()
    with pytest.raises(RuntimeError):
        export_collection(ws, tmp_path / name, fmt, overwrite=True, page_rows=1)
    assert (tmp_path / name).read_text() == "previous" and leftovers(tmp_path) == []


def test_erc721_failure_leaves_no_folder(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = export.erc721_document, []

    def failing(row: dict, values: str = "curated") -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(row, values)

    monkeypatch.setattr(export, "erc721_document", failing)
    with pytest.raises(RuntimeError):
        export_collection(ws, tmp_path / "tokens", "erc721")
    assert not (tmp_path / "tokens").exists() and leftovers(tmp_path) == []


def test_stale_staging_of_a_dead_export_is_cleaned(ws: Workspace, tmp_path: Path) -> None:
    dead = tmp_path / ".out.csv.99999999-deadbeef.tmp"
    dead.write_text("half")
    other = tmp_path / ".other.csv.99999999-deadbeef.tmp"  # another target's: not ours to delete
    other.write_text("half")
    mine = tmp_path / f".out.csv.{os.getpid()}-0123abcd.tmp"  # a live writer's
    mine.write_text("busy")
    export_collection(ws, tmp_path / "out.csv")
    assert not dead.exists() and other.exists() and mine.exists()


def test_table_written_before_curation(tmp_path: Path) -> None:
    """A collection without the curation columns exports its source values as both."""
    ws = Workspace(tmp_path / "ws")
    frame = items_to_frame([item("old/1", label="cat", tags=["t"])])
    table = pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)
    table = table.append_column("row_hash", pa.array(row_hashes(frame), pa.uint64()))
    ws.root.mkdir()
    tables.write(table, ws.collection_path, mode="create")
    export_collection(ws, tmp_path / "old.jsonl")
    row = jsonl(tmp_path / "old.jsonl")["old/1"]
    assert row["label"] == row["source_label"] == "cat" and row["tags"] == row["source_tags"] == ["t"]
    assert row["curated"] == [] and row["excluded"] is False and row["duplicate_of"] is None


def test_cli(ws: Workspace, tmp_path: Path) -> None:
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    out = tmp_path / "items.csv"
    result = runner.invoke(app, ["export", str(out), *w, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["format"] == "csv" and payload["items"] == 4 and payload["left_out"] == 2
    again = runner.invoke(app, ["export", str(out), *w])
    assert again.exit_code == 2 and "exists" in again.output and "--overwrite" in again.output

    result = runner.invoke(app, ["export", str(out), *w, "--overwrite", "--source-values", "--include-excluded",
                                 "--columns", "id,label", "-q"])
    assert result.exit_code == 0, result.output
    assert "exported 6 items" in result.stdout
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label"] and ["punks/1", "cat"] in rows and len(rows) == 7

    result = runner.invoke(app, ["export", str(tmp_path / "tokens"), "--format", "erc721", *w, "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tokens" / "punks_1.json").exists() and json.loads(result.stdout)["items"] == 4

    no_format = runner.invoke(app, ["export", str(tmp_path / "folder"), *w])
    assert no_format.exit_code == 2 and "--format" in no_format.output
    no_ws = runner.invoke(app, ["export", str(tmp_path / "x.csv"), "-w", str(tmp_path / "none")])
    assert no_ws.exit_code == 2 and "no collection" in no_ws.output
    bad_column = runner.invoke(app, ["export", str(tmp_path / "x.csv"), *w, "--columns", "id,nope"])
    assert bad_column.exit_code == 2 and "unknown column 'nope'" in bad_column.output
    assert not (tmp_path / "x.csv").exists()
    help_text = runner.invoke(app, ["export", "--help"]).output
    assert "--source-values" in help_text and "erc721" in help_text
