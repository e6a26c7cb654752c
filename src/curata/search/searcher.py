"""Search a workspace by text, by image or by item, through one query encoder and its vector index.

The index of an encoder lives in `<workspace>/index/<encoder name>/` (a `VectorIndex` from
`curata.search.index`) with a sidecar `search.json`: the encoder's card (what built the vectors)
and each indexed item's image hash. `build_index` is incremental: only items that are new (or whose
image changed) are encoded and added, items gone from the collection are removed, and an index
built by another model (another card) is rebuilt from scratch. Each vector carries the item's
collection, label and split as metadata, so queries can be filtered on them.

Beside the vectors, `build_index` writes the lexical index of `curata.search.hybrid` (`lexical.json`:
BM25 documents and tags, with the newest tags bundle's predictions for untagged items), which text
queries fuse with the joint space (`mode="hybrid"`, the default when it exists).

`Searcher` is what the CLI and the HTTP service call. After each query, `notes` says what the
caller should know about the answer (fewer hits than asked for, stale entries skipped).
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.atomic import folder_view
from curata.imageio import ImageError, load_image
from curata.progress import SILENT, Reporter
from curata.search.encoders import QueryEncoder, make_encoder
from curata.search.hybrid import FUSION_DEPTH, LEXICAL_FILE, MODES, LexicalIndex, build_lexical
from curata.workspace import Workspace

FILTER_FIELDS = ("collection", "label", "split")
# What a Searcher reads of the collection: a hit's fields, and what encoding an unindexed item needs.
ITEM_COLUMNS = ["id", "source", "collection", "image", "image_sha256", "text", "label", "split"]
SIDECAR = "search.json"
_ENCODE_CHUNK = 2048  # items encoded per add(): bounds memory on large collections


def _meta_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _index_dir(workspace: Workspace, encoder: QueryEncoder) -> Path:
    return workspace.root / "index" / encoder.index_name


def _same_model(built: dict[str, Any], current: dict[str, Any]) -> bool:
    keys = ("name", "kind", "version", "dim", "fingerprint")
    return all(built.get(k) == current.get(k) for k in keys)


def _read_sidecar(directory: Path) -> dict[str, Any] | None:
    path = folder_view(directory) / SIDECAR
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _warm(encoder: QueryEncoder) -> None:
    with contextlib.suppress(Exception):  # a model that cannot open says so at the first query, in its thread
        encoder.warm_text()


def encode_chunk_rows(encoder: QueryEncoder) -> int:
    """Items encoded per `add`: `_ENCODE_CHUNK`, fewer when that many would not fit the memory budget."""
    from curata.budget import rows_within_budget

    return min(_ENCODE_CHUNK, rows_within_budget(encoder.bytes_per_item))


def build_index(workspace: Workspace, model: str | None = None, *, reporter: Reporter = SILENT) -> dict[str, Any]:
    """Create or update the index of `model` (see `make_encoder`) over the workspace's items.

    Returns {"model", "index", "added", "updated", "removed", "failed", "total", "rebuilt", "notes"}.
    """
    from curata.search.index import IndexErrorBadInput, VectorIndex

    items = workspace.items()
    if items.empty:
        raise ValueError(f"the workspace {workspace.root} has no items; ingest a collection first")
    encoder = make_encoder(workspace, model)
    directory = _index_dir(workspace, encoder)
    sidecar = _read_sidecar(directory)
    notes: list[str] = []
    rebuilt = False
    index = None
    if sidecar is not None and (directory.exists()):
        if not _same_model(sidecar.get("encoder", {}), encoder.card):
            notes.append(f"the index was built with another version of {encoder.name}: rebuilt from scratch")
            rebuilt = True
        else:
            try:
                index = VectorIndex.load(directory)
            except IndexErrorBadInput as e:  # derived data: a rebuild repairs it
                notes.append(f"{e}: rebuilt from scratch")
                rebuilt = True
    elif (folder_view(directory) / SIDECAR).exists():
        notes.append(f"{directory / SIDECAR} is unreadable: the index is rebuilt from scratch")
        rebuilt = True
    if index is None:
        index = VectorIndex.create(encoder.dim, card={"encoder": encoder.card})
        sidecar = {"encoder": encoder.card, "hashes": {}}
    hashes: dict[str, str] = dict(sidecar.get("hashes", {}))

    current = dict(zip(items["id"], items["image_sha256"], strict=True))
    gone = [i for i in hashes if i not in current]
    removed = index.remove(gone) if gone else 0
    for i in gone:
        hashes.pop(i, None)
    todo = items[[hashes.get(i) != h for i, h in zip(items["id"], items["image_sha256"], strict=True)]]
    updated = int(sum(i in hashes for i in todo["id"]))
    added = failed = 0
    if len(todo):
        encoder.compute_features(workspace, reporter)  # once: planning reads every item's hash
    advance = reporter.task(f"indexing ({encoder.name})", len(todo))
    step = encode_chunk_rows(encoder)
    for start in range(0, len(todo), step):
        chunk = todo.iloc[start : start + step]
        vectors = encoder.encode_items(workspace, chunk, reporter=reporter if start == 0 else SILENT)
        ok = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)
        failed += len(chunk) - len(ok)
        # An item whose image changed and now fails must not keep its old vector.
        stale = [i for j, i in enumerate(chunk["id"]) if j not in set(ok) and i in hashes]
        if stale:
            index.remove(stale)
            for i in stale:
                hashes.pop(i, None)
        if len(ok):
            rows = chunk.iloc[ok]
            meta = {field: [_meta_value(v) for v in rows[field]] for field in FILTER_FIELDS}
            index.add(list(rows["id"]), vectors[ok], meta)
            hashes.update(zip(rows["id"], rows["image_sha256"], strict=True))
            added += len(ok)
        advance(len(chunk))
    if failed:
        notes.append(f"{failed} item(s) have no usable image features and are not searchable by image")
    # The lexical index is rebuilt whole (cheap: tokenising), reusing the previous tags predictions of
    # unchanged untagged items; the tags model only runs on new or changed ones.
    previous = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        previous = json.loads((folder_view(directory) / LEXICAL_FILE).read_text(encoding="utf-8")).get("predictions")
    lexical, lexical_summary = build_lexical(workspace, items, previous, reporter=reporter)
    notes.extend(lexical_summary.pop("notes"))
    # The sidecars are saved inside the index folder, so all are replaced together (or none, on a crash).
    index.save(directory, extra={SIDECAR: json.dumps({"encoder": encoder.card, "hashes": hashes}),
                                 LEXICAL_FILE: lexical})
    return {"model": encoder.name, "index": str(directory), "added": added - updated, "updated": updated,
            "removed": int(removed), "failed": failed, "total": len(index), "rebuilt": rebuilt,
            "lexical": lexical_summary, "notes": notes}


class Searcher:
    """Queries against one encoder's index; hits are dicts {id, score, label, collection, text, image}
    (text queries in hybrid or lexical mode add `matched`, `predicted` and `via`)."""

    def __init__(self, workspace: Workspace, encoder: QueryEncoder, index: Any, items: pd.DataFrame,
                 lexical: LexicalIndex | None = None, open_notes: list[str] | None = None):
        self.workspace = workspace
        self.encoder = encoder
        self.index = index
        self.lexical = lexical
        self.open_notes = list(open_notes or [])  # said with every text query (e.g. no lexical index)
        self._items = items.set_index("id", drop=False)
        # id -> row as a dict: a hit's fields without a pandas row lookup (~35 µs each) per hit; built from
        # column lists (to_dict("index") took 0.23 s on 10k items)
        fields = ("label", "collection", "text", "image")
        columns = [items[f].tolist() for f in ("id", *fields)]
        self._rows: dict[str, dict[str, Any]] = {row[0]: dict(zip(fields, row[1:], strict=True))
                                                 for row in zip(*columns, strict=True)}
        self.notes: list[str] = []

    @classmethod
    def open(cls, workspace: Workspace, model: str | None = None) -> Searcher:
        from curata.search.index import IndexErrorBadInput, VectorIndex

        encoder = make_encoder(workspace, model)
        # The text model's session (~0.15-0.25 s, native code) opens beside the index, lexical part and items;
        # joined before returning or raising (a native thread still running at exit aborts the process).
        warming = threading.Thread(target=_warm, args=(encoder,), name="curata-warm-text", daemon=True)
        warming.start()
        try:
            directory = _index_dir(workspace, encoder)
            sidecar = _read_sidecar(directory)
            if sidecar is None:
                raise ValueError(f"no search index for model {encoder.name!r} in {workspace.root / 'index'}; "
                                 "build it with `curata index build`")
            built = sidecar.get("encoder", {})
            if not _same_model(built, encoder.card):
                raise ValueError(f"the index in {directory} was built with {built.get('name')!r} "
                                 f"(version {built.get('version')!r}), not with the query encoder "
                                 f"{encoder.name!r} (version {encoder.card.get('version')!r}); rebuild it with "
                                 "`curata index build`")
            try:
                index = VectorIndex.load(directory)
            except IndexErrorBadInput as e:
                raise IndexErrorBadInput(f"{e}; rebuild it with `curata index build`") from e
            lexical, notes = _open_lexical(workspace, directory)
            items = workspace.items(ITEM_COLUMNS)
        finally:
            warming.join()
        return cls(workspace, encoder, index, items, lexical, notes)

    @property
    def card(self) -> dict[str, Any]:
        return {"model": self.encoder.card, "items": len(self.index), "filters": list(FILTER_FIELDS),
                "modes": list(MODES) if self.lexical is not None else ["joint"], "default_mode": self.default_mode}

    @property
    def default_mode(self) -> str:
        # Hybrid whenever the index has its lexical part: the trait matcher and BM25 answer attribute
        # queries the joint space may not have learnt (partial or rare attributes, an unseen collection),
        # and on full-sentence queries the fusion keeps the joint ranking's order among equally matching
        # items. An index built before hybrid search has no lexical part: joint, with a note.
        return "hybrid" if self.lexical is not None else "joint"

    def _mode(self, mode: str | None) -> tuple[str, list[str]]:
        if mode is None:
            mode = self.default_mode
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; modes: {', '.join(MODES)}")
        if mode != "joint" and self.lexical is None:
            if mode == "lexical":
                raise ValueError("this index has no lexical part (built before hybrid search); "
                                 "rebuild it with `curata index build`")
            return "joint", list(self.open_notes)
        return mode, list(self.open_notes)

    # ------------------------------------------------------------------------------------------ queries
    def by_text(self, text: str, k: int = 10, filters: dict[str, str] | None = None, mode: str | None = None
                ) -> list[dict[str, Any]]:
        """Items matching `text`. `mode`: hybrid (traits + BM25 + joint space, fused; the default when
        the index has a lexical part), joint (the joint space only) or lexical (traits + BM25 only)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text query: give some words to search for")
        mode, notes = self._mode(mode)
        text = text.strip()
        if mode == "joint":
            hits = self._search(self.encoder.encode_texts([text])[0], k, filters)
        else:
            self._check(k, filters)
            vector = self.encoder.encode_texts([text])[0] if mode == "hybrid" else None
            hits = self._fused(text, vector, k, filters)
        self.notes = notes + self.notes
        return hits

    def rank_texts(self, texts: list[str], *, mode: str | None = None, k: int = 10,
                   filters: dict[str, str] | None = None) -> list[list[str]]:
        """Ranked item ids per query (see `curata.search.hybrid.rank_items`); texts encoded in one batch."""
        mode, _ = self._mode(mode)
        self._check(k, filters)
        texts = [str(t).strip() for t in texts]
        if not texts:
            return []
        vectors = None if mode == "lexical" else np.asarray(self.encoder.encode_texts(texts), np.float32)
        if vectors is not None:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1)
        depth = k if mode == "joint" else max(k, FUSION_DEPTH)
        found = self.index.search(vectors, depth, filters=dict(filters) if filters else None) \
            if vectors is not None else [None] * len(texts)
        if mode == "joint":
            return [[item_id for item_id, _ in row] for row in found]
        assert self.lexical is not None
        return [[h["id"] for h in self.lexical.rank(text, joint, k, filters)] for text, joint in zip(texts, found,
                                                                                                     strict=True)]

    def by_image(self, image: np.ndarray | bytes | str | Path, k: int = 10, filters: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
        """An RGB uint8 array, or encoded image bytes / a file path (decoded by curata.imageio)."""
        if not isinstance(image, np.ndarray):
            if isinstance(image, bytes) and not image:
                raise ValueError("empty image query: no bytes were given")
            try:
                image = load_image(image, max_side=512)
            except ImageError as e:
                raise ImageError(e.code, f"query image cannot be decoded: {e.reason}") from e
        elif image.ndim == 2 and image.dtype == np.uint8:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return self._search(self.encoder.encode_images([image])[0], k, filters)

    def by_item(self, item_id: str, k: int = 10, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Items like `item_id` (the item itself left out)."""
        if not isinstance(item_id, str) or not item_id.strip():
            raise ValueError("empty item id")
        if item_id in self.index:
            vector = self.index.get([item_id])[0]
        elif item_id in self._items.index:
            self.encoder.compute_features(self.workspace)  # rare: an item the index does not hold yet
            vector = self.encoder.encode_items(self.workspace, self._items.loc[[item_id]])[0]
        else:
            raise ValueError(f"unknown item {item_id!r}: not in the collection of {self.workspace.root}")
        hits = self._search(vector, k + 1, filters, asked=k, exclude=item_id)
        return hits[:k]

    # ------------------------------------------------------------------------------------------ internals
    def _fused(self, text: str, vector: np.ndarray | None, k: int, filters: dict[str, str] | None
               ) -> list[dict[str, Any]]:
        assert self.lexical is not None
        self.notes = []
        joint = None
        if vector is not None:
            if not np.any(vector):
                raise ValueError("the query encodes to an empty vector (nothing the model can read)")
            vector = np.asarray(vector, np.float32) / np.linalg.norm(vector)
            joint = self.index.search(vector[None, :], max(k, FUSION_DEPTH),
                                      filters=dict(filters) if filters else None)[0]
        hits, stale = [], 0
        for hit in self.lexical.rank(text, joint, k, filters):
            row = self._rows.get(hit["id"])
            if row is None:
                stale += 1
                continue
            hits.append({"id": hit["id"], "score": hit["score"], "label": _meta_value(row["label"]) or None,
                         "collection": _meta_value(row["collection"]) or None, "text": row["text"] or "",
                         "image": row["image"], "matched": hit["matched"], "predicted": hit["predicted"],
                         "via": hit["via"]})
        if stale:
            self.notes.append(f"{stale} indexed item(s) are no longer in the collection; run `curata index build`")
        if len(hits) < k:
            if vector is None:
                self.notes.append(f"asked for {k} hits; only {len(hits)} item(s) match the query's words or traits")
            else:
                scope = " matching the filters" if filters else ""
                self.notes.append(f"asked for {k} hits; the index has only {len(hits)} item(s){scope}")
        return hits

    def _check(self, k: int, filters: dict[str, str] | None) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        for field, value in (filters or {}).items():
            if field not in FILTER_FIELDS:
                raise ValueError(f"cannot filter on {field!r}; filter fields: {', '.join(FILTER_FIELDS)}")
            if not isinstance(value, str | list | tuple) or not value:
                raise ValueError(f"filter {field!r}: expected a value, got {value!r}")

    def _search(self, vector: np.ndarray, k: int, filters: dict[str, str] | None, *, asked: int | None = None,
                exclude: str | None = None) -> list[dict[str, Any]]:
        asked = k if asked is None else asked
        self._check(asked, filters)
        self.notes = []
        if not np.any(vector):
            raise ValueError("the query encodes to an empty vector (nothing the model can read)")
        vector = np.asarray(vector, np.float32)
        vector = vector / np.linalg.norm(vector)
        found = self.index.search(vector[None, :], k, filters=dict(filters) if filters else None)[0]
        hits, stale = [], 0
        for item_id, score in found:
            if item_id == exclude:
                continue
            row = self._rows.get(item_id)
            if row is None:
                stale += 1
                continue
            hits.append({"id": item_id, "score": round(float(score), 4), "label": _meta_value(row["label"]) or None,
                         "collection": _meta_value(row["collection"]) or None, "text": row["text"] or "",
                         "image": row["image"]})
        if stale:
            self.notes.append(f"{stale} indexed item(s) are no longer in the collection; run `curata index build`")
        if len(hits) < asked:
            scope = " matching the filters" if filters else ""
            self.notes.append(f"asked for {asked} hits; the index has only {len(hits)} item(s){scope}")
        return hits[:asked]


def _open_lexical(workspace: Workspace, directory: Path) -> tuple[LexicalIndex | None, list[str]]:
    """The lexical index beside the vectors, or None with a note (an index built before hybrid search)."""
    path = folder_view(directory) / LEXICAL_FILE
    if not path.is_file():
        return None, ["this index has no lexical part (built before hybrid search): searched the joint space "
                      "only; run `curata index build` for hybrid search"]
    try:
        lexical = LexicalIndex.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, [f"the lexical index is unreadable ({type(e).__name__}): searched the joint space only; "
                      "run `curata index build`"]
    notes = []
    built = lexical.tags_bundle.get("name")
    try:
        newest = _newest_bundle_card(workspace, "tags")
        if newest is not None and newest != (built, lexical.tags_bundle.get("created")) and any(
                not tags for tags in lexical.own):
            notes.append(f"untagged items use the predictions of tags bundle {built!r}, not the newest "
                         f"{newest[0]!r}; run `curata index build` to apply it")
    except (ValueError, OSError):
        pass
    return lexical, notes


def _newest_bundle_card(workspace: Workspace, task: str) -> tuple[str, str] | None:
    """(name, created) of the bundle `curata.describe.describer.find_bundle` picks for `task` (the newest by
    its card), without importing the describe package (torch and scikit-learn: ~3 s a searcher must not pay)."""
    from curata.tasks.bundle import newest_card

    newest = newest_card(workspace.root / "models", lambda card: card.get("task") == task)
    return None if newest is None else (newest[0].name, str(newest[1].get("created", "")))


def demo_search(workspace: Workspace, queries: list[str], *, k: int = 5, epochs: int = 15, name: str = "demo-joint",
                reporter: Reporter = SILENT) -> dict[str, Any]:
    """The demo's search stage: train a joint space quickly on the workspace's collection, index it,
    run the text queries. Returns {"model", "train", "val", "val_untrained", "index", "queries"}."""
    from curata.search.joint import JointOptions, train_joint

    options = JointOptions(epochs=epochs, name=name, patience=max(3, epochs // 3))
    summary = train_joint(workspace, options, reporter=reporter)
    index = build_index(workspace, name, reporter=reporter)
    searcher = Searcher.open(workspace, name)
    results = []
    for query in queries:
        results.append({"query": query, "hits": searcher.by_text(query, k), "notes": list(searcher.notes)})
    return {"model": name, "train": summary["metrics"]["train"], "val": summary["metrics"]["val"],
            "val_untrained": summary["metrics"]["val_untrained"], "temperature": summary["temperature"],
            "epochs_run": summary["training"]["epochs_run"], "index": index, "queries": results}
