from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_image
from curata.ingest.download import DownloadPolicy
from curata.ingest.pipeline import IngestOptions, detect_format, ingest
from curata.ingest.records import SourceError
from curata.ingest.table import ColumnMap
from curata.workspace import Workspace


def by_ref(report) -> dict:
    return {e.ref: e for e in report.entries}


def test_broken_folder_reports_one_precise_reason_per_bad_file(tmp_path, broken_folder):
    root = Path(broken_folder.pop("root"))
    ws = Workspace(tmp_path / "ws")
    report = ingest(root, ws)
    entries = by_ref(report)
    assert set(entries) == set(broken_folder)  # every file is accounted for
    for name, code in broken_folder.items():
        if name == "corrupt.jpg":  # rejected either when opened or when decoded
            assert entries[name].code in {"corrupt", "not_an_image"}, entries[name]
        else:
            assert entries[name].code == code, (name, entries[name])
        assert (entries[name].status == "ok") == (code == "ok")
        if code != "ok":
            assert entries[name].reason
    assert "CMYK" in " ".join(entries["cmyk.jpg"].notes)
    assert "animated" in " ".join(entries["animated.gif"].notes)
    assert "transparency" in " ".join(entries["palette.png"].notes)
    assert "high bit depth" in " ".join(entries["sixteen.png"].notes)
    items = ws.items()
    assert sorted(items["id"]) == sorted(f"broken/{n}" for n, c in broken_folder.items() if c == "ok")
    assert items["image_sha256"].str.len().eq(64).all()
    saved = json.loads((ws.root / "reports" / "ingest-latest.json").read_text())
    assert saved["summary"]["errors"] == sum(c != "ok" for c in broken_folder.values())


def test_pixel_cap_is_configurable(tmp_path):
    write_image(tmp_path / "src" / "big.png", size=(1200, 1000))
    report = ingest(tmp_path / "src", Workspace(tmp_path / "ws"), IngestOptions(max_pixels=1_000_000))
    assert report.entries[0].code == "too_many_pixels"
    assert "1.2 megapixels" in report.entries[0].reason


def test_class_subfolders_give_labels_and_reingest_is_idempotent(tmp_path):
    src = tmp_path / "shapes"
    for label in ("cats", "dogs"):
        for i in range(3):
            write_image(src / label / f"{i}.png", color=(i * 40, 100, 50))
    ws = Workspace(tmp_path / "ws")
    first = ingest(src, ws)
    assert (first.added, first.updated, first.unchanged) == (6, 0, 0)
    items = ws.items()
    assert sorted(items["label"]) == ["cats"] * 3 + ["dogs"] * 3
    assert set(items["id"]) == {f"shapes/{lab}/{i}.png" for lab in ("cats", "dogs") for i in range(3)}
    again = ingest(src, ws)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 6)
    assert len(ws.items()) == 6
    # A new source appends; a changed file updates its item in place.
    write_image(tmp_path / "more" / "x.png")
    write_image(src / "cats" / "0.png", color=(0, 0, 255))
    assert ingest(tmp_path / "more", ws).added == 1
    changed = ingest(src, ws)
    assert (changed.added, changed.updated, changed.unchanged) == (0, 1, 5)
    assert len(ws.items()) == 7


def test_csv_with_column_mapping_tags_duplicates_and_missing_files(tmp_path):
    src = tmp_path / "catalogue"
    write_image(src / "img" / "a.jpg", fmt="JPEG")
    write_image(src / "img" / "b.png")
    write_image(src / "img" / "c.png")
    frame = pd.DataFrame({
        "sku": ["A1", "B2", "A1", "D4", "E5"],
        "picture": ["img/a.jpg", "img/b.png", "img/c.png", "img/missing.png", "img/c.png"],
        "desc": ["Red shirt", "", "Dup", "Gone", "Blue hat"],
        "category": ["shirts", "hats", "shirts", "hats", "hats"],
        "kw": ["red; cotton", "nan", "x", "y", "blue;wool;blue"],
        "brand": ["Acme", "Acme", "Acme", "Zed", "Zed"],
    })
    frame.to_csv(src / "products.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    cols = ColumnMap(image="picture", text="desc", label="category", tags="kw", id="sku")
    report = ingest(src / "products.csv", ws, IngestOptions(columns=cols))
    entries = by_ref(report)
    assert entries["products.csv:2"].status == "ok"
    assert entries["products.csv:3"].notes == ["empty text"]
    assert entries["products.csv:4"].code == "duplicate_id"
    assert "products.csv:2" in entries["products.csv:4"].reason
    assert entries["products.csv:5"].code == "missing_file"
    items = ws.items().set_index("id")
    assert list(items.index) == ["catalogue/A1", "catalogue/B2", "catalogue/E5"]
    assert list(items.loc["catalogue/E5", "tags"]) == ["blue", "wool"]
    assert list(items.loc["catalogue/B2", "tags"]) == []  # a literal "nan" cell means no tags
    assert items.loc["catalogue/A1", "label"] == "shirts"
    assert json.loads(items.loc["catalogue/A1", "meta"]) == {"brand": "Acme"}
    assert items.loc["catalogue/A1", "image"] == str((src / "img" / "a.jpg").resolve())


def test_missing_column_is_a_clear_source_error(tmp_path):
    write_image(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"], "text": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SourceError, match=r"column 'category' .* missing; the table has: path, text"):
        ingest(tmp_path / "t.csv", Workspace(tmp_path / "ws"),
               IngestOptions(columns=ColumnMap(label="category")))


def test_jsonl_with_a_malformed_line_and_non_utf8_csv(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    lines = ['{"image": "a.png", "text": "first"}', '{"image": "b.png", "text": ', '["not", "an object"]',
             '{"image": "b.png", "text": "third"}']
    (tmp_path / "items.jsonl").write_text("\n".join(lines))
    report = ingest(tmp_path / "items.jsonl", Workspace(tmp_path / "ws"))
    codes = [e.code for e in report.entries]
    assert codes == ["ok", "malformed_json", "malformed_json", "ok"]
    assert "line 2" in report.entries[1].reason
    (tmp_path / "latin.csv").write_bytes("path,text\na.png,Café crème\n".encode("cp1252"))
    report = ingest(tmp_path / "latin.csv", Workspace(tmp_path / "ws2"))
    assert report.entries[0].status == "ok"
    assert "not valid UTF-8" in report.entries[0].notes[0]
    assert Workspace(tmp_path / "ws2").items()["text"][0] == "Café crème"


def _token(name: str, image: str, attrs) -> dict:
    return {"name": name, "description": "A test token.", "image": image, "attributes": attrs}


def test_nft_metadata_folder(tmp_path):
    root = tmp_path / "peasants"
    for i in range(3):  # no 3.png: token 3 has only a remote image
        write_image(root / "images" / f"{i}.png", size=(24, 24))
    meta = root / "metadata"
    meta.mkdir()
    attrs = [{"trait_type": "hair", "value": "short_black"}, {"trait_type": "cape", "value": "none"}]
    (meta / "0.json").write_text(json.dumps(_token("Peasant #0", "ipfs://Qm/0.png", attrs)))
    (meta / "1.json").write_text(json.dumps({"name": "Peasant #1", "image": "ipfs://Qm/1.png",
                                             "traits": [{"trait_type": "hat", "value": "crown"}]}))
    (meta / "2.json").write_text('{"name": "Peasant #2", "attributes": [')  # malformed
    (meta / "3.json").write_text(json.dumps(_token("Peasant #3", "ipfs://Qm/404.png", [])))
    listed = [_token("Peasant #0", "ipfs://Qm/0.png", attrs),
              _token("Peasant #9", "ipfs://Qm/9.png", [{"trait_type": "hat", "value": "cap"}])]
    write_image(root / "images" / "9.png", size=(24, 24))
    (meta / "_metadata.json").write_text(json.dumps(listed))
    assert detect_format(root) == "nft"
    ws = Workspace(tmp_path / "ws")
    dead_gateway = DownloadPolicy(ipfs_gateways=("http://127.0.0.1:9/ipfs/",), retries=0, timeout=2)
    report = ingest(root, ws, IngestOptions(label_trait="hair", download=dead_gateway))
    entries = by_ref(report)
    assert entries["0.json"].status == "ok"
    assert entries["1.json"].status == "ok"
    assert entries["2.json"].code == "malformed_json"
    # 3.json points at an ipfs image with no local copy; the download through a dead gateway fails.
    assert entries["3.json"].code == "download_failed"
    assert entries["3.json"].status == "error"
    assert entries["_metadata.json[1]"].status == "ok"
    assert len(report.entries) == 5  # token 0 from the list is not read twice
    items = ws.items().set_index("id")
    zero = items.loc["peasants/0"]
    assert list(zero["tags"]) == ["hair=short_black", "cape=none"]
    assert zero["captions"][0] == "A picture of Peasant #0, containing short black hair"
    assert zero["label"] == "short_black"
    assert zero["collection"] == "Peasant"
    assert zero["text"] == "Peasant #0. A test token."
    assert list(items.loc["peasants/1", "tags"]) == ["hat=crown"]
    assert items.loc["peasants/9", "image"].endswith("9.png")


def test_a_table_of_several_collections_with_traits_and_no_label(tmp_path):
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.png")
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "collection": ["punks", "punks", "apes"],
                  "traits": ["hat=red;eyes=blue", "hat=cap", ""], "rarity": ["1", "2", "3"]}
                 ).to_csv(tmp_path / "t.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    report = ingest(tmp_path / "t.csv", ws)
    items = ws.items().set_index("id")
    assert report.collections == {"punks": 2, "apes": 1}
    assert list(items["collection"]) == ["punks", "punks", "apes"]
    assert list(items.iloc[0]["tags"]) == ["hat=red", "eyes=blue"]
    notes = report.entries[0].notes
    assert any("no label column found; kept in meta: rarity (name one with --label-col)" in n for n in notes), notes
    # Named columns win over the guesses; --collection names the collection of every row.
    ws2 = Workspace(tmp_path / "ws2")
    ingest(tmp_path / "t.csv", ws2, IngestOptions(collection="all", columns=ColumnMap(label="rarity")))
    assert set(ws2.items()["collection"]) == {"all"} and set(ws2.items()["label"]) == {"1", "2", "3"}
