"""Compute features for every item of a workspace that does not have them yet.

For each extractor: find the items whose content hash is not in its store, fit the extractor first
if it needs the collection (once; its state is saved and reused, so adding items never refits
silently), then stream batches: the next batch's images are decoded by worker threads while the
current one runs through the model. Results are appended to the store in parts, so memory is
bounded by the part size and an interrupted run loses at most one part.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curata.atomic import folder_view, replace_folder
from curata.features.base import REGISTRY, Extractor, ItemError
from curata.features.shared_cache import give_shared, shared_store, take_shared
from curata.features.store import FeatureStore, store_dirname
from curata.imageio import ImageError, load_image
from curata.paths import default_threads
from curata.progress import SILENT, Reporter
from curata.storage import rmtree
from curata.workspace import Workspace

PART_SIZE = 2048  # items per written part: bounds memory, and the work lost if a run is killed
FIT_SAMPLE = 2000  # images used to fit collection-dependent image extractors (visual words)


def available_extractors() -> list[str]:
    """The extractors `curata features` can compute (not `image`, the images themselves, which is never stored)."""
    _import_builtin()
    return sorted(name for name, cls in REGISTRY.items() if cls.stored)


def _import_builtin() -> None:
    """Importing the modules registers their extractors (plug-ins too: they load nothing until used)."""
    from curata.features import (  # noqa: F401
        color,
        efficientnet,
        local,
        object_palette,
        palette,
        pixels,
        plugins,
        raw_image,
        text,
    )


# Which module registers each built-in extractor: making one imports that module only (a search query must
# not pay for OpenCV + scikit-learn, which the visual-words module imports, ~1.5 s).
_BUILTIN_MODULES = {
    "color_stats": "color", "color_hist": "color", "palette": "palette",
    "object_palette": "object_palette", "orb_bovw": "local", "sift_bovw": "local",
    "pixels": "pixels", "pixels_onehot": "pixels", "tfidf": "text", "minilm": "text", "word2vec": "text",
    **{n: "efficientnet" for n in ("effnet_lite", "effnet_lite0", "effnet_lite0_int8", "effnet_lite2",
                                   "effnet_lite0_logits", "effnet_lite0_tta", "effnet_lite2_tta",
                                   "effnet_lite0_views")},
    **{n: "plugins" for n in ("hf_clip_image", "hf_clip_text", "hf_vision", "open_clip", "timm")},
    "image": "raw_image",
}


def make_extractor(name: str, **params: Any) -> Extractor:
    """The extractor registered as `name`; a spec of names joined by `+` (`effnet_lite0+pixels_onehot`) builds
    their concatenation (`curata.features.concat.ConcatExtractor`: each block cached under its own key)."""
    from curata.features.concat import SEPARATOR, ConcatExtractor, is_concat

    if is_concat(name):
        if params:
            raise ValueError(f"parameters cannot be given to a concatenation ({name})")
        return ConcatExtractor([make_extractor(part.strip()) for part in name.split(SEPARATOR)])
    if name not in REGISTRY and name in _BUILTIN_MODULES:
        import importlib

        importlib.import_module(f"curata.features.{_BUILTIN_MODULES[name]}")
    if name not in REGISTRY:
        _import_builtin()
    if name not in REGISTRY:
        raise ValueError(f"unknown extractor '{name}'; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**params)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_keys(items: pd.DataFrame, extractor: Extractor) -> list[str]:
    """The content hash each item is cached under for this extractor's modality."""
    if extractor.modality == "text":
        return [text_hash(t or "") for t in items["text"]]
    return items["image_sha256"].tolist()  # not list(): iterating a pandas string column is 5x slower


@dataclass
class FeatureRun:
    extractor: str
    items: int
    cached: int
    computed: int
    errors: int
    seconds: float
    fitted: bool = False
    notes: list[str] = field(default_factory=list)  # repairs made on the way (unreadable parts dropped)
    shared: int = 0  # items whose vector came from the machine's shared cache (`curata.features.shared_cache`)
    nodes: int = 0  # the Ray engine: how many cluster nodes' actors computed vectors (0: the local engine)

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items_per_second": round(self.per_second, 1)}


def _load_input(extractor: Extractor, path_or_text: str) -> Any:
    if extractor.modality == "text":
        return path_or_text
    return extractor.prepare(load_image(path_or_text, max_side=extractor.max_side))


def _load_batch(extractor: Extractor, sources: list[str], pool: ThreadPoolExecutor
                ) -> list[tuple[Any, str | None]]:
    """Load a batch in parallel; each entry is (input, None) or (None, reason)."""

    def one(source: str) -> tuple[Any, str | None]:
        try:
            return _load_input(extractor, source), None
        except ImageError as e:
            return None, e.reason
        except OSError as e:
            return None, f"cannot read: {e}"
        except Exception as e:  # one unexpected failure must not end the run
            return None, f"{type(e).__name__}: {e}"

    return list(pool.map(one, sources))


load_batch = _load_batch  # public name: the Ray engine loads through the very same code


def _transform_isolated(extractor: Extractor, inputs: list[Any]) -> tuple[np.ndarray, list[str | None]]:
    """Transform a batch; if the batch fails, retry item by item so one bad input fails alone."""
    out = np.zeros((len(inputs), extractor.dim), np.float32)
    errors: list[str | None] = [None] * len(inputs)
    if not inputs:
        return out, errors
    try:
        out[:] = extractor.transform(inputs)
        return out, errors
    except Exception:  # isolate the culprit(s) below
        pass
    for i, x in enumerate(inputs):
        try:
            out[i] = extractor.transform([x])[0]
        except ItemError as e:
            errors[i] = str(e)
        except Exception as e:
            errors[i] = f"{type(e).__name__}: {e}"
    return out, errors


def transform_loaded(extractor: Extractor, loaded: list[tuple[Any, str | None]]
                     ) -> tuple[np.ndarray, list[str | None]]:
    """Vectors and per-item errors for a batch from `load_batch`: items that failed to load keep their
    reason, the rest go through the model with failures isolated (zeros where an item failed)."""
    ok = [j for j, (_, error) in enumerate(loaded) if error is None]
    vectors = np.zeros((len(loaded), extractor.dim), np.float32)
    errors: list[str | None] = [error for _, error in loaded]
    out, out_errors = _transform_isolated(extractor, [loaded[j][0] for j in ok])
    for row, j in enumerate(ok):
        vectors[j] = out[row]
        errors[j] = out_errors[row]
    return vectors, errors


def _batches(seq: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class _StreamedImages(Sequence):
    """The fitting sample, loaded a chunk at a time as the extractor iterates, so fitting visual words on
    2000 images never holds 2000 decoded images in memory. Unreadable images are skipped."""

    def __init__(self, extractor: Extractor, paths: list[str], advance: Callable[[int], None]):
        self.extractor, self.paths, self.advance = extractor, paths, advance

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        return _load_input(self.extractor, self.paths[index])

    def __iter__(self) -> Iterator[Any]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for chunk in _batches(self.paths, 16):
                yield from (x for x, error in _load_batch(self.extractor, chunk, pool) if error is None)
                self.advance(len(chunk))


def ensure_fitted(extractor: Extractor, workspace: Workspace, items: pd.DataFrame, *, refit: bool = False,
                  reporter: Reporter = SILENT) -> str:
    """Load or fit collection-dependent state; returns the fit id that becomes part of the cache key."""
    if not extractor.needs_fit:
        return ""
    state_dir = workspace.dir("models") / "extractors" / store_dirname(extractor.key)
    if refit:
        rmtree(state_dir)
    fit_file = folder_view(state_dir) / "fit.json"
    if fit_file.exists():
        extractor.load(folder_view(state_dir))
        return json.loads(fit_file.read_text())["fit_id"]
    rmtree(state_dir)  # state without fit.json: an older run died while saving it
    if items.empty:
        raise ValueError(f"{extractor.name} must be fitted on the collection, and the collection is empty")
    if extractor.modality == "text":
        inputs: list[Any] = [t or "" for t in items["text"]]
        fit_keys = sorted(set(item_keys(items, extractor)))
    else:
        sample = items.drop_duplicates("image_sha256")
        sample = sample.sample(min(len(sample), FIT_SAMPLE), random_state=0)
        inputs = _StreamedImages(extractor, list(sample["image"]),
                                 reporter.task(f"fitting {extractor.name}", len(sample)))
        fit_keys = sorted(sample["image_sha256"])
    extractor.fit(inputs)
    fit_id = hashlib.sha1("\n".join(fit_keys).encode()).hexdigest()[:10]
    with replace_folder(state_dir) as staged:  # state and fit.json appear together, or not at all
        extractor.save(staged)
        (staged / "fit.json").write_text(json.dumps({"fit_id": fit_id, "key": extractor.key,
                                                     "n_inputs": len(inputs)}))
    return fit_id


def feature_lock(extractor: Extractor, workspace: Workspace, reporter: Reporter = SILENT
                 ) -> AbstractContextManager[None]:
    """One run at a time per extractor and workspace (fit, plan, compute, append): a second concurrent
    `curata features` waits, then finds the items computed instead of computing and storing them twice."""
    return workspace.lock(f"features-{store_dirname(extractor.key)}",
                          on_wait=lambda: reporter.task(f"waiting for another run computing {extractor.name}", None))


@dataclass
class ComputePlan:
    """What a run has to do: the store to append to, the sources still missing (content hash -> image path
    or text, identical content once) and the run record to fill in. Shared by the local and Ray engines.

    A plan made with a `window` lists nothing up front: `windows()` plans that many items at a time, as the
    run goes (the Ray engine's driver, whose memory then does not grow with the collection)."""

    store: FeatureStore
    todo: dict[str, str]
    run: FeatureRun
    started: float
    through: list[int] = field(default_factory=list)  # the collection's fragments when planned
    window: int = 0  # with a window: items planned at a time by windows()
    collection: Any = None
    version: int = 0  # the collection's version when planned: every window reads that one
    columns: list[str] = field(default_factory=list)
    extractor: Extractor | None = None
    checked: int = 0  # windows(): items read so far (computed, stored, or the same content as another)

    def windows(self) -> Iterator[dict[str, str]]:
        """The sources still missing, `window` items of the collection at a time. A window is planned once the
        caller is done with the one before (its vectors committed), so content met again later is found stored,
        not computed twice. Fills in the run's `cached` and `computed` counts."""
        mark = self.store.plan_mark()
        unmarked = self.through if mark is None else [f for f in self.through if f not in mark]
        missing_items = 0
        pages = self.collection.iter_read(self.columns, batch_rows=self.window, fragments=unmarked,
                                          version=self.version)
        while (items := next(pages, None)) is not None:
            keys = item_keys(items, self.extractor)
            # No scan of the whole store (which grows window after window): the driver's memory stays flat.
            missing = self.store.missing(keys, scan=False)  # repairs a damaged table: its dropped items are missing
            if mark is not None and self.store.plan_mark() is None:  # so check every item, from the start
                mark, missing_items, self.run.computed, self.checked = None, 0, 0, 0
                pages = self.collection.iter_read(self.columns, batch_rows=self.window, fragments=self.through,
                                                  version=self.version)
                continue
            missing_items += int(missing.sum())
            todo = _todo(keys, items, missing, self.extractor)
            self.checked += len(items)
            del items, keys, missing  # not held while the caller works on this window and the next is read
            self.run.computed += len(todo)
            self.run.cached = self.run.items - missing_items
            if todo:
                yield todo
        self.run.cached = self.run.items - missing_items

    def finish(self) -> None:
        """After the run's appends: index them, and when nothing failed, remember that the store holds every
        item of the fragments `through`, so the next plan reads only other fragments."""
        self.store.finish()
        if self.run.errors == 0:
            self.store.set_plan_mark(self.through)


def plan_compute(extractor: Extractor, workspace: Workspace, *, refit: bool = False,
                 reporter: Reporter = SILENT, window: int = 0) -> ComputePlan:
    """Fit the extractor if it needs the collection (once), then list the items its store lacks (with a
    `window`: leave that to `ComputePlan.windows`, `window` items at a time)."""
    started = time.perf_counter()
    # Only the columns the plan needs: the text of a million items is not read to plan an image extractor.
    columns = ["text"] if extractor.modality == "text" else ["image", "image_sha256"]
    collection = workspace.collection
    through = collection.fragment_ids()  # before reading: items added meanwhile are checked next time
    version = collection.version
    total = collection.count()
    fit_id = ""
    if extractor.needs_fit:  # fitting (once) reads the whole collection; a fitted state is loaded
        fit_id = ensure_fitted(extractor, workspace, collection.read(columns), refit=refit, reporter=reporter)
    store = FeatureStore.for_extractor(workspace.dir("features"), extractor, fit_id)
    if window:
        run = FeatureRun(extractor.key, total, 0, 0, 0, 0.0, fitted=bool(fit_id), notes=list(store.notes))
        return ComputePlan(store, {}, run, started, through, window, collection, version, columns, extractor)
    items, keys, missing = _unstored(store, collection, columns, extractor)
    todo = _todo(keys, items, missing, extractor)
    run = FeatureRun(extractor.key, total, int(total - missing.sum()), len(todo), 0, 0.0,
                     fitted=bool(fit_id), notes=list(store.notes))
    return ComputePlan(store, todo, run, started, through)


def _todo(keys: list[str], items: pd.DataFrame, missing: np.ndarray, extractor: Extractor) -> dict[str, str]:
    """Content hash -> source of the missing items; identical content once."""
    sources = items["text"].fillna("") if extractor.modality == "text" else items["image"]
    todo: dict[str, str] = {}
    for key, source in zip(np.asarray(keys, dtype=object)[missing], sources.to_numpy()[missing], strict=True):
        todo.setdefault(key, source)
    return todo


def _unstored(store: FeatureStore, collection: Any, columns: list[str], extractor: Extractor
              ) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """The items to check, their keys, and which keys the store lacks. A store known complete for some
    fragments of the collection (its plan mark) is checked against the items of the other fragments only
    (written since, or brought back by a rollback), so planning 1,000 new items costs the same in a
    collection of a million as in an empty one; without a mark, or when the check had to repair the store
    (rows dropped), every item is checked."""
    mark = store.plan_mark()
    items = collection.read(columns, fragments=None if mark is None else
                            [f for f in collection.fragment_ids() if f not in mark])
    keys = item_keys(items, extractor)
    missing = store.missing(keys)  # repairs a damaged table: its dropped items are computed again
    if mark is not None and store.plan_mark() is None:
        return _unstored(store, collection, columns, extractor)
    return items, keys, missing


def compute(extractor: Extractor, workspace: Workspace, *, batch_size: int = 32, refit: bool = False,
            workers: int | None = None, reporter: Reporter = SILENT) -> FeatureRun:
    """Compute `extractor` for every item of the workspace that lacks it (a concatenation: each block, in its own
    store; the run's counts are those of its blocks added up)."""
    from curata.features.concat import ConcatExtractor

    if isinstance(extractor, ConcatExtractor):
        started = time.perf_counter()
        runs = [compute(b, workspace, batch_size=batch_size, refit=refit, workers=workers, reporter=reporter)
                for b in extractor.blocks]
        return FeatureRun(extractor.key, runs[0].items, min(r.cached for r in runs), max(r.computed for r in runs),
                          max(r.errors for r in runs), time.perf_counter() - started, any(r.fitted for r in runs),
                          [n for r in runs for n in r.notes])
    if not extractor.stored:
        raise ValueError(f"'{extractor.name}' is not computed or stored: it is the image itself, which a model "
                         "that reads it (classify's finetune) loads when it trains or predicts")
    with feature_lock(extractor, workspace, reporter):
        plan = plan_compute(extractor, workspace, refit=refit, reporter=reporter)
        shared = shared_store(extractor) if plan.todo else None
        computed: list[str] = []
        if shared is not None:  # what another workspace on this machine computed is copied, not recomputed
            found, vectors = take_shared(shared, list(plan.todo))
            if found:
                plan.store.append(found, vectors, [None] * len(found))
                plan.run.shared, plan.run.computed = len(found), plan.run.computed - len(found)
                for key in found:
                    del plan.todo[key]
            computed = list(plan.todo)
        if plan.todo:
            try:
                _compute_todo(extractor, plan.store, plan.todo, batch_size, workers, reporter, plan.run)
            except BaseException:  # interrupted: what was appended is indexed, and the plan mark stays where it was
                plan.store.finish()
                raise
        plan.finish()
        if shared is not None and computed:
            give_shared(shared, computed, *plan.store.lookup(computed))
    plan.run.seconds = time.perf_counter() - plan.started
    return plan.run


def _compute_todo(extractor: Extractor, store: FeatureStore, todo: dict[str, str], batch_size: int,
                  workers: int | None, reporter: Reporter, run: FeatureRun) -> None:
    advance = reporter.task(f"{extractor.name}", len(todo))
    pending_keys: list[str] = []
    pending_vecs: list[np.ndarray] = []
    pending_errs: list[str | None] = []

    def flush() -> None:
        if pending_keys:
            store.append(pending_keys, np.concatenate(pending_vecs), pending_errs)
            pending_keys.clear(), pending_vecs.clear(), pending_errs.clear()

    batches = list(_batches(list(todo.items()), batch_size))
    n_workers = workers or min(4, (os.cpu_count() or 2))
    # One batch per core through a thread-safe model (see Extractor.parallel_batches), else one at a time.
    n_models = default_threads() if extractor.parallel_batches and len(batches) > 1 else 1
    model = extractor.single_threaded() if n_models > 1 else extractor

    def collect(batch: list[tuple[str, str]], result: Future) -> None:
        vectors, errors = result.result()
        pending_keys.extend(k for k, _ in batch)
        pending_vecs.append(vectors)
        pending_errs.extend(errors)
        run.errors += sum(e is not None for e in errors)
        if len(pending_keys) >= PART_SIZE:
            flush()
        advance(len(batch))

    with (ThreadPoolExecutor(max_workers=n_workers) as loaders, ThreadPoolExecutor(max_workers=1) as prefetch,
          ThreadPoolExecutor(max_workers=n_models) as models):
        # Prefetch one batch ahead: decoding of batch i+1 overlaps the model on the batches before it.
        future: Future | None = prefetch.submit(_load_batch, extractor, [s for _, s in batches[0]], loaders)
        running: deque[tuple[list[tuple[str, str]], Future]] = deque()
        for i, batch in enumerate(batches):
            loaded = future.result() if future else []
            future = (prefetch.submit(_load_batch, extractor, [s for _, s in batches[i + 1]], loaders)
                      if i + 1 < len(batches) else None)
            running.append((batch, models.submit(transform_loaded, model, loaded)))
            if len(running) >= n_models:  # results are stored in batch order
                collect(*running.popleft())
        while running:
            collect(*running.popleft())
    flush()


def _feature_store(workspace: Workspace, extractor: Extractor) -> FeatureStore:
    """The store an extractor's vectors were cached in (a fitted extractor: under its fit id)."""
    fit_id = ""
    if extractor.needs_fit:
        state_dir = workspace.root / "models" / "extractors" / store_dirname(extractor.key)
        fit_file = folder_view(state_dir) / "fit.json"
        if not fit_file.exists():
            raise ValueError(f"{extractor.name} has not been fitted in {workspace.root}; run `curata features`")
        fit_id = json.loads(fit_file.read_text())["fit_id"]
    return FeatureStore.for_extractor(workspace.root / "features", extractor, fit_id)


def stored_count(workspace: Workspace, name: str) -> int:
    """How many vectors the workspace holds for extractor `name` (0 when never computed or fitted): a cheap
    count of its store, for choosing default features among those computed."""
    try:
        extractor = make_extractor(name)
        return _feature_store(workspace, extractor).count() if extractor.stored else 0
    except ValueError:  # a fitted extractor never fitted here, or a plug-in that cannot open
        return 0


def _join_rows(loaded: list[tuple[np.ndarray, list[str | None]]]) -> tuple[np.ndarray, list[str | None]]:
    """A concatenation's rows from its blocks' rows: joined per block, zero where any block failed."""
    from curata.features.concat import join_blocks

    errors = [next((e for e in row if e is not None), None) for row in zip(*(e for _, e in loaded), strict=True)]
    matrix = join_blocks([m for m, _ in loaded])
    matrix[[e is not None for e in errors]] = 0.0
    return matrix, errors


def _item_columns(extractor: Extractor) -> list[str]:
    return ["text"] if extractor.modality == "text" else ["image_sha256"] if extractor.stored else ["image"]


def load_matrix(workspace: Workspace, extractor: Extractor, items: pd.DataFrame | None = None
                ) -> tuple[np.ndarray, list[str | None]]:
    """The feature matrix of `items` (default: the whole collection) in row order, plus per-row errors.

    A concatenation (`curata.features.concat`) is read from its blocks' own stores, each block L2-normalised
    per row and joined: the same vectors its `transform` gives; a row fails if any block failed on it.
    A matrix larger than the memory budget (`curata.budget`) raises `MemoryBudgetError`: stages that may
    meet one read through `iter_matrix` instead."""
    from curata.budget import check_matrix_fits
    from curata.features.concat import ConcatExtractor

    items = workspace.items(_item_columns(extractor)) if items is None else items
    check_matrix_fits(len(items), extractor.dim, f"the {extractor.name} features of {len(items)} items")
    if isinstance(extractor, ConcatExtractor):
        return _join_rows([load_matrix(workspace, b, items) for b in extractor.blocks])
    if not extractor.stored:
        from curata.features.raw_image import image_block

        return image_block(items)
    return _feature_store(workspace, extractor).lookup(item_keys(items, extractor))


def iter_matrix(workspace: Workspace, extractor: Extractor, items: pd.DataFrame | None = None,
                batch_rows: int | None = None) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
    """`load_matrix` in consecutive chunks: (start row, matrix, errors) in item order, each chunk `batch_rows`
    rows (default: as many as fit in the memory budget), so only one chunk is in memory at a time.

    Chunk for chunk the same rows `load_matrix` gives (a concatenation's blocks joined per chunk)."""
    from curata.budget import matrix_bytes, rows_within_budget
    from curata.features.concat import ConcatExtractor

    items = workspace.items(_item_columns(extractor)) if items is None else items
    batch = int(batch_rows) if batch_rows else rows_within_budget(matrix_bytes(1, extractor.dim))
    if batch < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if not extractor.stored:
        from curata.features.raw_image import image_block

        for start in range(0, len(items), batch):
            yield start, *image_block(items.iloc[start:start + batch])
        return
    blocks = extractor.blocks if isinstance(extractor, ConcatExtractor) else [extractor]
    # Stores are resolved once (a fitted extractor reads its fit id), then read chunk by chunk.
    readers = [_feature_store(workspace, b).iter_lookup(item_keys(items, b), batch) for b in blocks]
    start = 0
    for loaded in zip(*readers, strict=True):
        matrix, errors = loaded[0] if len(blocks) == 1 else _join_rows(list(loaded))
        yield start, matrix, errors
        start += len(errors)
