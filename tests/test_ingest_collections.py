"""ERC-721 metadata: each token's collection comes from its metadata, never from the folder the user named."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_image
from curata.commands.ingest import print_ingest_report
from curata.ingest.nft import token_collection
from curata.ingest.pipeline import IngestOptions, detect_format, ingest
from curata.workspace import Workspace

CONTRACT = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"


def _collection(folder: Path, tokens: dict[str, dict], *, metadata: bool = True) -> None:
    """`folder/metadata/<stem>.json` (or `folder/<stem>.json`) + `folder/images/<stem>.png` per token."""
    meta = folder / "metadata" if metadata else folder
    meta.mkdir(parents=True, exist_ok=True)
    for i, (stem, token) in enumerate(tokens.items()):
        write_image(folder / "images" / f"{stem}.png", size=(8, 8), color=(20 * i % 255, 90, 160))
        (meta / f"{stem}.json").write_text(json.dumps({"image": f"ipfs://Qm{folder.name}/{stem}.png", **token}))


def _items(ws: Workspace):
    return ws.items().set_index("id")


def test_token_collection_rules_in_order():
    assert token_collection({"collection": "Apes", "contract": CONTRACT}, "Punk #1") == "Apes"
    assert token_collection({"collection": {"name": "Apes", "slug": "apes"}}, "Punk #1") == "Apes"
    assert token_collection({"collection": {"slug": "bayc"}}, "") == "bayc"
    assert token_collection({"collection": "", "contract": CONTRACT}, "Punk #1") == "Punk"
    assert token_collection({}, "Punk#12") == "Punk"
    assert token_collection({"contract": CONTRACT}, "#12") == CONTRACT.lower()  # no name before the number
    assert token_collection({"contract_address": CONTRACT}, "Genesis") == CONTRACT.lower()
    assert token_collection({"contract": {"address": CONTRACT}}, "") == CONTRACT.lower()
    assert token_collection({"address": CONTRACT}, "") == CONTRACT.lower()
    assert token_collection({"address": "12 Main Street"}, "") is None  # not a contract address
    assert token_collection({"collection": ["odd"]}, "Punk #1") == "Punk"  # an odd type is passed over
    assert token_collection({}, "Genesis") is None


def test_subfolders_ingest_as_their_collections_with_unique_ids(tmp_path):
    root = tmp_path / "mixed"
    _collection(root / "punks", {"1": {"name": "CryptoPunk #1"}, "2": {"name": "CryptoPunk #2"}})
    _collection(root / "apes", {"1": {"name": "Ape 1"}, "2": {"name": "Ape 2"}, "3": {"name": "Ape 3"}})
    _collection(root / "kitties", {"1": {"name": "Kitty", "contract": CONTRACT}}, metadata=False)
    (root / "notes").mkdir()  # not a collection: listed as skipped, never silently dropped
    (root / "notes" / "readme.txt").write_text("hello")
    assert detect_format(root) == "nft"
    ws = Workspace(tmp_path / "ws")
    report = ingest(root, ws)
    assert len(report.ok) == 6 and not report.errors
    assert [(e.ref, e.code) for e in report.skipped] == [("notes/", "not_a_collection")]
    items = _items(ws)
    # The name pattern beats the sub-folder, the contract beats it too; the sub-folder is the last word.
    assert items.loc["mixed/punks/1", "collection"] == "CryptoPunk"
    assert items.loc["mixed/apes/1", "collection"] == "apes"
    assert items.loc["mixed/kitties/1", "collection"] == CONTRACT.lower()
    assert items.loc["mixed/apes/1", "image"].endswith("apes/images/1.png")
    assert items.loc["mixed/punks/1", "image"].endswith("punks/images/1.png")
    assert set(items["source"]) == {"mixed"}
    assert report.collections == {"apes": 3, "CryptoPunk": 2, CONTRACT.lower(): 1}
    assert report.summary()["collections"] == report.collections
    assert {e.ref for e in report.ok} >= {"punks/1.json", "apes/1.json"}
    again = ingest(root, ws)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 6)


def test_flat_folder_of_two_name_patterns(tmp_path, capsys):
    root = tmp_path / "drop"
    meta = root / "metadata"
    meta.mkdir(parents=True)
    listed = []
    for prefix, coll in (("a", "Bored Ape"), ("p", "Pudgy Penguin")):
        for n in (1, 2):
            write_image(root / "images" / prefix / f"{prefix}{n}.png", size=(8, 8))
            listed.append({"name": f"{coll} #{n}", "edition": n, "image": f"ipfs://Qm/{prefix}{n}.png"})
    (meta / "_metadata.json").write_text(json.dumps(listed))
    (meta / "solo.json").write_text(json.dumps({"name": "Untitled", "image": "ipfs://Qm/a1.png"}))
    (meta / "a1.json").write_text(json.dumps(listed[0]))  # its own file wins; the list's copy is not read twice
    ws = Workspace(tmp_path / "ws")
    report = ingest(root, ws)
    assert len(report.ok) == 5 and not report.errors
    assert "a1.json" in {e.ref for e in report.ok}
    items = _items(ws)
    # Two collections in one flat folder: each token's local id carries its collection.
    assert items.loc["drop/bored-ape/a1", "collection"] == "Bored Ape"
    assert items.loc["drop/pudgy-penguin/p2", "collection"] == "Pudgy Penguin"
    assert items.loc["drop/solo", "collection"] == "drop"  # no collection in its metadata: the source name
    assert report.collections == {"Bored Ape": 2, "Pudgy Penguin": 2, "drop": 1}
    print_ingest_report(report)
    assert "collections: Bored Ape (2), Pudgy Penguin (2), drop (1)" in capsys.readouterr().out


def test_explicit_collection_fields_and_list_ids_that_collide(tmp_path):
    root = tmp_path / "tokens"
    root.mkdir()
    write_image(root / "images" / "1.png", size=(8, 8))
    write_image(root / "images" / "2.png", size=(8, 8), color=(10, 200, 10))
    listed = [  # both collections number their tokens from 1, in one list file
        {"name": "One", "collection": "Alpha", "image": "ipfs://QmA/1.png"},
        {"name": "Two", "collection": {"name": "Alpha", "slug": "alpha"}, "image": "ipfs://QmA/2.png"},
        {"name": "One", "collection": {"slug": "beta"}, "image": "ipfs://QmB/1.png"},
    ]
    (root / "_metadata.json").write_text(json.dumps(listed))
    ws = Workspace(tmp_path / "ws")
    report = ingest(root / "_metadata.json", ws)
    assert not report.errors
    assert sorted(e.id for e in report.ok) == ["tokens/alpha/1", "tokens/alpha/2", "tokens/beta/1"]
    assert report.collections == {"Alpha": 2, "beta": 1}


def test_user_collection_wins_for_every_token(tmp_path):
    root = tmp_path / "mixed"
    _collection(root / "punks", {"1": {"name": "CryptoPunk #1"}})
    _collection(root / "apes", {"1": {"name": "Ape #1", "collection": "Apes"}})
    ws = Workspace(tmp_path / "ws")
    report = ingest(root, ws, IngestOptions(collection="mine"))
    items = _items(ws)
    assert set(items["collection"]) == {"mine"}
    assert set(items.index) == {"mixed/punks/1", "mixed/apes/1"}  # ids do not depend on --collection
    assert report.collections == {"mine": 2}


def test_single_collection_folder_keeps_its_ids_and_reingests_idempotently(tmp_path):
    root = tmp_path / "peasants"
    _collection(root, {str(n): {"name": f"Filthy Peasant #{n}", "contract": CONTRACT} for n in (1, 2, 3)})
    (root / "metadata" / "4.json").write_text(json.dumps({"name": "The King", "image": "ipfs://Qm/1.png"}))
    assert detect_format(root) == "nft"
    ws = Workspace(tmp_path / "ws")
    report = ingest(root, ws)
    items = _items(ws)
    assert set(items.index) == {"peasants/1", "peasants/2", "peasants/3", "peasants/4"}
    assert items.loc["peasants/2", "collection"] == "Filthy Peasant"
    assert items.loc["peasants/4", "collection"] == "peasants"  # as before: no collection of its own
    assert report.collections == {"Filthy Peasant": 3, "peasants": 1}
    again = ingest(root, ws)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 4)


def test_image_folder_with_class_subfolders_is_still_an_image_folder(tmp_path):
    root = tmp_path / "pets"
    write_image(root / "cats" / "a.png", size=(8, 8))
    write_image(root / "dogs" / "b.png", size=(8, 8))
    (root / "dogs" / "info.json").write_text("{}")  # a stray JSON beside images is not token metadata
    assert detect_format(root) == "folder"
    (root / "annotations").mkdir()  # nor is a folder of JSON beside class folders of images
    (root / "annotations" / "instances.json").write_text("{}")
    assert detect_format(root) == "folder"
