"""ERC-721 / OpenSea-style metadata: a folder of token JSON files or a `_metadata.json` list.

Attributes become tags `trait_type=value`, and a caption is built in the NFT1000 form:
`A picture of {name}, containing {value} {trait_type}, {value} {trait_type}, ...`.
Images are matched to local files by the basename of the token's `image` URI (the usual layout is
`images/N.png` beside `metadata/N.json`, with `image: ipfs://CID/N.png`), then by token id; a
token with no local image keeps its remote URI and is downloaded by the pipeline.

A token's collection comes from its own metadata, never from the folder the user named: its
`collection` field (a string, or an object with `name`/`slug`), else its name pattern (`Punk #12`
-> `Punk`), else its contract address, else the sub-folder of the source it lies in
(`source/apes/metadata/1.json` -> `apes`); the pipeline falls back to the source name. A folder of
several collections ingests as its real collections: a source whose sub-folders each hold one
collection is read one sub-folder at a time (local ids `apes/1`), and in a flat folder holding several
collections each token's local id is prefixed by its collection (`bored-ape/1`), so two collections'
token 1 never share an id. A single-collection folder keeps its plain ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curata.ingest.folder import looks_like_image
from curata.ingest.records import RawRecord, SourceError, clean_text

LIST_FILE = "_metadata.json"
# Values that mean "this trait is absent": kept as tags, left out of the caption.
ABSENT = {"", "none", "null", "n/a", "nothing", "no"}


def find_metadata_dir(root: Path) -> Path | None:
    """The folder holding token JSON: `root/metadata`, or `root` itself."""
    for candidate in (root / "metadata", root):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def normalise_attributes(token: dict[str, Any]) -> list[dict[str, Any]]:
    """`attributes` or `traits`, as a list of {trait_type, value}; also accepts a {trait: value} dict."""
    raw = token.get("attributes", token.get("traits"))
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [{"trait_type": k, "value": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise ValueError(f"'attributes' must be a list, got {type(raw).__name__}")
    out = []
    for entry in raw:
        if isinstance(entry, dict) and "value" in entry:
            trait = clean_text(entry.get("trait_type", entry.get("type", "")))
            out.append({"trait_type": trait, "value": entry["value"]})
        elif isinstance(entry, str):
            out.append({"trait_type": "", "value": entry})
        else:
            raise ValueError(f"attribute entry without a value: {entry!r}")
    return out


def trait_value(value: object) -> str:
    """A trait value as text. Not `clean_text`: "none" is a real trait value here (`cape: none`)."""
    return "" if value is None else " ".join(str(value).split())


def attribute_tags(attributes: list[dict[str, Any]]) -> list[str]:
    tags = []
    for attr in attributes:
        value = trait_value(attr["value"])
        tags.append(f"{attr['trait_type']}={value}" if attr["trait_type"] else value)
    return list(dict.fromkeys(tags))


def _humanise(text: str) -> str:
    return re.sub(r"[_\s]+", " ", text).strip()


def nft1000_caption(name: str, attributes: list[dict[str, Any]]) -> str:
    """`A picture of {name}, containing {value} {trait_type}, ...` (underscores read as spaces;
    absent traits such as `cape: none` are left out so the caption only names what is drawn)."""
    parts = []
    for attr in attributes:
        value = _humanise(trait_value(attr["value"]))
        if value.lower() in ABSENT:
            continue
        parts.append(f"{value} {_humanise(attr['trait_type'])}".strip())
    caption = f"A picture of {name or 'an untitled token'}"
    return caption + (", containing " + ", ".join(parts) if parts else "")


def _load_json(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 at byte {e.start}") from e
    return json.loads(text)


def _image_index(root: Path) -> dict[str, Path]:
    """Local images by lower-case basename and by stem, for matching token image URIs."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and looks_like_image(path):
            index.setdefault(path.name.lower(), path)
            index.setdefault(path.stem.lower(), path)
    return index


def _collection_name(name: str) -> str | None:
    """The collection in a token name: the text before a final `#<digits>` (`Punk #12` -> `Punk`)."""
    match = re.match(r"^(.*?)\s*#\s*\d+\s*$", name)
    return (match.group(1).strip() or None) if match else None


CONTRACT_FIELDS = ("contract", "contract_address", "address")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _named(value: Any, keys: tuple[str, ...]) -> str:
    """A string field, or the first of `keys` in an object field."""
    if isinstance(value, dict):
        value = next((value[k] for k in keys if clean_text(value.get(k))), None)
    return clean_text(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def token_collection(token: dict[str, Any], name: str) -> str | None:
    """A token's collection from its metadata: the `collection` field (string, or object with
    name/slug), else the name pattern, else a contract address; None when none says (the reader then
    uses the sub-folder, the pipeline the source name)."""
    explicit = _named(token.get("collection"), ("name", "slug"))
    if explicit:
        return explicit
    from_name = _collection_name(name)
    if from_name:
        return from_name
    for key in CONTRACT_FIELDS:
        contract = _named(token.get(key), ("address", "name"))
        if key == "address" and not _HEX_ADDRESS.fullmatch(contract):
            continue  # a bare `address` counts only as a contract address, never as any other text
        if contract:
            # Checksummed and lower-case spellings of one address are one collection.
            return contract.lower() if _HEX_ADDRESS.fullmatch(contract) else contract
    return None


def _token_record(token: Any, ref: str, local_id: str, images: dict[str, Path],
                  label_trait: str | None) -> RawRecord:
    record = RawRecord(ref=ref, local_id=local_id)
    if not isinstance(token, dict):
        record.error = ("malformed_json", f"token metadata must be a JSON object, got {type(token).__name__}")
        return record
    name = clean_text(token.get("name"))
    description = clean_text(token.get("description"))
    try:
        attributes = normalise_attributes(token)
    except ValueError as e:
        record.error = ("malformed_json", str(e))
        return record
    uri = clean_text(token.get("image") or token.get("image_url") or token.get("file_url"))
    basename = uri.rstrip("/").rsplit("/", 1)[-1].lower() if uri else ""
    local = images.get(basename) or images.get(local_id.lower())
    if local is not None:
        record.image = str(local)
    elif uri.startswith(("http://", "https://", "ipfs://")):
        record.image = uri
    else:
        # Cut the URI: on-chain tokens inline the whole image as a data: URI of many kilobytes.
        shown = uri if len(uri) <= 200 else uri[:200] + "..."
        record.error = ("missing_image", f"no local image for '{shown or local_id}' and no downloadable URI")
    record.attributes = [{"trait_type": a["trait_type"], "value": a["value"]} for a in attributes]
    record.tags = attribute_tags(attributes)
    record.captions = [nft1000_caption(name, attributes)]
    record.text = ". ".join(p for p in (name, description) if p)
    record.collection = token_collection(token, name)
    if label_trait:
        values = [trait_value(a["value"]) for a in attributes if a["trait_type"] == label_trait]
        record.label = values[0] if values and values[0] else None
    extras = {k: v for k, v in token.items() if k not in {"name", "description", "image", "attributes", "traits"}}
    record.meta = {"name": name, "image_uri": uri, **extras}
    return record


def _is_token_folder(folder: Path) -> bool:
    """`folder/metadata/*.json`, or JSON files with no image beside them: one collection's metadata."""
    if find_metadata_dir(folder) is None:
        return False
    if (folder / "metadata").is_dir() and any((folder / "metadata").glob("*.json")):
        return True
    return not any(p.is_file() and looks_like_image(p) for p in folder.iterdir())


def collection_folders(source: Path) -> list[Path]:
    """The sub-folders of `source` holding one collection each (`source/apes/metadata/*.json`), when
    `source` itself holds no token JSON and no other sub-folder holds images (then it is an image folder
    labelled by sub-folder, e.g. with an `annotations/` folder of JSON); empty otherwise."""
    if not source.is_dir() or find_metadata_dir(source) is not None:
        return []
    subfolders = sorted((p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    found = [p for p in subfolders if p.name != "metadata" and _is_token_folder(p)]
    if any(p not in found and any(looks_like_image(f) and f.is_file() for f in p.iterdir()) for p in subfolders):
        return []
    return found


def _slug(collection: str) -> str:
    return re.sub(r"[^\w]+", "-", collection.lower()).strip("-_") or "collection"


def read_nft_metadata(source: Path, *, label_trait: str | None = None) -> Iterator[RawRecord]:
    """Yield a record per token. `source` is a collection folder, a metadata folder, a
    `_metadata.json` list file, or a folder whose sub-folders are collection folders (local ids and
    refs then start with the sub-folder, which is also the collection of a token whose metadata
    names none). Per-token files win over the list where both exist."""
    folders = collection_folders(source)
    for folder in folders:
        for record in _read_collection(folder, label_trait):
            record.local_id = f"{folder.name}/{record.local_id}"
            record.ref = f"{folder.name}/{record.ref}"
            record.collection = record.collection or folder.name
            yield record
    if not folders:
        yield from _read_collection(source, label_trait)
        return
    read = {f.name for f in folders}
    for other in sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if other not in read:  # never dropped without a line in the report
            yield RawRecord(ref=f"{other}/", local_id=other,
                            skip=("not_a_collection", "sub-folder holds no token metadata; not read"))


def _read_collection(source: Path, label_trait: str | None) -> list[RawRecord]:
    """The tokens of one folder or list file; when they name several collections, each token's local id
    is prefixed by its collection's slug (a single collection keeps the plain ids it always had)."""
    records = list(_read_tokens(source, label_trait))
    if len({r.collection for r in records if r.collection}) > 1:
        for record in records:
            if record.collection:
                record.local_id = f"{_slug(record.collection)}/{record.local_id}"
    return records


def _read_tokens(source: Path, label_trait: str | None) -> Iterator[RawRecord]:
    if source.is_file():
        meta_dir, list_file = source.parent, source
        token_files: list[Path] = []
    else:
        found = find_metadata_dir(source)
        if found is None:
            raise SourceError(f"no metadata JSON files under {source}")
        meta_dir = found
        list_file = meta_dir / LIST_FILE
        token_files = sorted((p for p in meta_dir.glob("*.json") if p.name != LIST_FILE), key=_natural)
    root = meta_dir.parent if meta_dir.name == "metadata" else meta_dir
    images = _image_index(root)
    seen: dict[str, str | None] = {}  # token files read: local id -> collection
    for path in token_files:
        local_id = path.stem
        seen[local_id] = None
        try:
            token = _load_json(path)
        except ValueError as e:
            yield RawRecord(ref=path.name, local_id=local_id, error=("malformed_json", f"{path.name}: {e}"))
            continue
        record = _token_record(token, path.name, local_id, images, label_trait)
        seen[local_id] = record.collection
        yield record
    if list_file.is_file():
        try:
            tokens = _load_json(list_file)
        except ValueError as e:
            yield RawRecord(ref=list_file.name, local_id=LIST_FILE, error=("malformed_json", str(e)))
            return
        if not isinstance(tokens, list):
            yield RawRecord(ref=list_file.name, local_id=LIST_FILE,
                            error=("malformed_json", f"{LIST_FILE} must hold a JSON list of tokens"))
            return
        for i, token in enumerate(tokens):
            local_id = _list_token_id(token, i)
            record = _token_record(token, f"{list_file.name}[{i}]", local_id, images, label_trait)
            # Skip a token already read from its own file; a repeat inside the list, or another
            # collection's token of the same number, is kept (the pipeline reports a true duplicate).
            if local_id in seen and seen[local_id] in (None, record.collection):
                continue
            yield record
    elif not token_files:
        raise SourceError(f"no token metadata found in {meta_dir}")


def _list_token_id(token: Any, index: int) -> str:
    """A token's id inside a list file: its image file stem, its edition, or its position."""
    if isinstance(token, dict):
        uri = clean_text(token.get("image") or token.get("file_url"))
        if uri:
            return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        edition = (token.get("custom_fields") or {}).get("edition", token.get("edition"))
        if edition is not None:
            return str(edition)
    return str(index)


def _natural(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 60, path.stem)
