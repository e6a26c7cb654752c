"""What the service holds in memory: the items table (re-read when the collection file changes), the
loaded bundles, the search and describe engines, and a thumbnail cache.

Bundles load once at start-up. A reload builds the new bundle completely aside, then swaps one
reference: a request picks its bundle object once and uses it to the end, so requests running while
a bundle reloads get either the old or the new model, never a half-loaded one or an error.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from curata import objectstore
from curata.atomic import CURRENT, folder_view
from curata.objectstore import is_object_uri
from curata.service.catalog import ColourCache, ItemsView
from curata.service.errors import ApiError, hide_paths
from curata.service.settings import Settings
from curata.service.writer import EditWriter
from curata.storage import is_remote, readable
from curata.workspace import Workspace

T = TypeVar("T")

log = logging.getLogger("curata.service")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,119}$")
_NOT_RUNS = ("duplicates-", "themes-")  # other files in clusters/ that are not cluster runs


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str, what: str) -> str:
    """Bundle and run names come from URLs: only plain file names, never paths."""
    if not _NAME.match(name):
        raise ApiError(404, f"unknown_{what}", f"no {what} named {name!r}", what)
    return name


# Bundles ------------------------------------------------------------------------------------------------


@dataclass
class LoadedBundle:
    """A bundle ready to predict: the fitted model, its card, and its extractors (their models loaded)."""

    name: str
    directory: Path
    task: Any
    card: Any
    extractors: dict[str, Any]
    loaded_at: str

    @classmethod
    def load(cls, name: str, directory: Path) -> LoadedBundle:
        from curata.tasks.bundle import load_bundle
        from curata.tasks.runner import bundle_extractors

        task, card = load_bundle(directory)
        bundle = cls(name, directory, task, card, bundle_extractors(card, directory), _now())
        # Warm up: one prediction loads every lazily loaded model (ONNX sessions, text encoders) now,
        # not in the first client's request, and proves the bundle works before it is swapped in.
        bundle.predict([np.full((32, 32, 3), 128, np.uint8)], [""])
        return bundle

    def featurise(self, images: list[np.ndarray], texts: list[str]) -> dict[str, np.ndarray]:
        """The bundle's features, with its extractors kept loaded between requests."""
        from curata.tasks.runner import extract_blocks

        return extract_blocks(self.extractors, images, texts)

    def predict(self, images: list[np.ndarray], texts: list[str], top: int = 3) -> list[dict[str, Any]]:
        from curata.tasks.runner import predict_blocks

        return predict_blocks(self.task, self.card, self.featurise(images, texts), top=top)


# Items: see service/catalog.py (ItemsView, one version of the collection queried per request).


def _quietly(work: Callable[[], Any]) -> None:
    try:
        work()
    except Exception:  # background warm-up: the request that needs it reports the error
        log.exception("background warm-up failed")


_CARD_FIELDS: dict[str, type] = {"task": str, "target": str, "model": str, "labels": list, "features": dict,
                                  "metrics": dict, "training": dict, "versions": dict, "created": str}


def _card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """The card fields every bundle kind can show, each only when it has the expected type."""
    out = {k: card[k] for k, kind in _CARD_FIELDS.items() if isinstance(card.get(k), kind)}
    if "labels" in out:
        out["labels"] = [str(v) for v in out["labels"]]
    if "features" in out:
        out["features"] = {str(k): str(v) for k, v in out["features"].items()}
    if "versions" in out:
        out["versions"] = {str(k): str(v) for k, v in out["versions"].items()}
    return out


# The state ----------------------------------------------------------------------------------------------


@dataclass
class ServiceState:
    settings: Settings
    workspace: Workspace = field(init=False)
    bundles: dict[str, LoadedBundle] = field(default_factory=dict)
    bundle_errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workspace = Workspace(self.settings.workspace)
        self._items = ItemsView.empty()
        self._items_lock = threading.Lock()
        self._colours = ColourCache()  # dominant colour per image hash, kept across collection versions
        self._reload_lock = threading.Lock()  # one (re)load at a time; readers never take it
        self._search_lock = threading.Lock()
        self._describe_lock = threading.Lock()  # opening the describer can take long: search must not wait
        self._searchers: dict[str | None, tuple[Any, tuple[Any, ...]]] = {}  # model -> (searcher, files stamp)
        self._describer: Any = None
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._runs_cache: dict[str, tuple[float, pd.DataFrame]] = {}
        self.engine_errors: dict[str, str] = {}
        self.loaded = False  # start() has finished (successfully or not)
        self.load_error: str | None = None
        self.items_error: str | None = None  # why the collection file on disk is not the one being served
        self._items_failed_stamp: Any = None
        self.keys = self.settings.keyring()  # None: no authentication
        self.edits = EditWriter(self.workspace)  # group commit of the write API's edits
        self._compute_limiter: Any = None  # made on first use: it belongs to the event loop
        self._fetch_limiter: Any = None

    def fetch_limiter(self) -> Any:
        """At most `settings.url_fetch_slots` URL fetches at once in this worker (made on first use: it
        belongs to the event loop)."""
        import anyio

        if self._fetch_limiter is None:
            self._fetch_limiter = anyio.CapacityLimiter(self.settings.url_fetch_slots)
        return self._fetch_limiter

    async def compute(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound request work in a thread, at most `settings.compute_slots` at a time."""
        import anyio.to_thread

        if self._compute_limiter is None:
            self._compute_limiter = anyio.CapacityLimiter(self.settings.compute_slots)
        return await anyio.to_thread.run_sync(partial(work, *args, **kwargs), limiter=self._compute_limiter)

    # start-up --------------------------------------------------------------------------------------
    def start_in_background(self) -> threading.Thread:
        """Load in a thread, so the server answers /v1/health at once and /v1/ready says when loading is
        done; requests that need a model meanwhile wait for it (they take the same locks)."""
        if not self.settings.workspace.is_dir():
            raise ValueError(f"workspace {self.settings.workspace} does not exist")
        thread = threading.Thread(target=self._start_logged, name="curata-load", daemon=True)
        thread.start()
        return thread

    def _start_logged(self) -> None:
        try:
            self.start()
        except Exception as e:  # reported by /v1/ready; the routes still answer (with what they can)
            log.exception("loading the workspace failed")
            self.load_error = hide_paths(f"{type(e).__name__}: {e}", self.workspace.root)
        finally:
            self.loaded = True

    def start(self) -> None:
        """Read the collection, then (unless `preload` is off) load every classifier bundle and the search
        index; each failure is recorded (shown by /v1/ready and /v1/models), never fatal. The describer
        opens on first use: opening it may compute the neighbour embedding of the whole collection."""
        if not self.settings.workspace.is_dir():
            raise ValueError(f"workspace {self.settings.workspace} does not exist")
        view = self.items()
        if view.palette_ready:  # the colour filter and facet need every item's colour: named in the background
            # scikit-learn was imported before this thread started (`create_app`'s lifespan; here too for callers
            # of `start` without the app): two threads importing it first at once can break it.
            import curata.tasks.colour  # noqa: F401

            threading.Thread(target=_quietly, args=(view.colour_index,), name="colour-index", daemon=True).start()
        if not self.settings.preload:
            return
        for name in self.bundle_names():
            if not self.is_classifier(name):
                continue
            try:
                self.reload(name)
            except ApiError as e:
                log.warning("bundle %s not loaded: %s", name, e.message)
        try:
            # One query loads the text encoder now rather than in the first client's request.
            self.searcher().by_text("warm up", k=1)
        except ApiError as e:
            log.info("search: %s", e.message)
        except Exception:  # a broken index is reported by the search routes; the service still starts
            log.exception("search warm-up failed")

    # items -----------------------------------------------------------------------------------------
    def items(self) -> ItemsView:
        """The current view; reopened when the collection has a new version (another ingest ran). A version
        that cannot be read keeps the last good one in service (/v1/ready says why it is stale) and is tried
        again when the table changes; with no good view at all, the request gets a 503."""
        try:
            stamp = self.workspace.collection.stamp()
        except Exception as e:  # a Parquet workspace that cannot be converted: tried again on the next request
            stamp = ("unconvertible", str(e))
        view = self._items
        if stamp != view.stamp and stamp != self._items_failed_stamp:
            with self._items_lock:
                if stamp != self._items.stamp and stamp != self._items_failed_stamp:
                    try:
                        self._items = ItemsView.open(self.workspace, self._colours)
                        self.items_error = None
                        self._items_failed_stamp = None
                    except Exception as e:  # a damaged or foreign table: serve what was last good
                        log.warning("the collection cannot be read: %s", e)
                        self.items_error = hide_paths(f"the collection cannot be read ({e})",
                                                      self.workspace.root)
                        self._items_failed_stamp = stamp
                view = self._items
        if self.items_error is not None and not self.has_snapshot():
            raise ApiError(503, "collection_unreadable", self.items_error)
        return view

    def has_snapshot(self) -> bool:
        """Whether a collection read from disk is being served (the empty view stands in before any)."""
        return self._items.stamp is not None  # ItemsView.empty()'s

    def item_record(self, item_id: str) -> tuple[ItemsView, dict[str, Any]]:
        """The current view and one item's row; 404 for an unknown id."""
        view = self.items()
        record = view.record(item_id)
        if record is None:
            raise ApiError(404, "unknown_item", f"no item with id {item_id!r} in the collection", "item_id")
        return view, record

    def item_image(self, item_id: str) -> tuple[Path | str, str]:
        """The item's image (a local path, or an object URI as stored: curata.objectstore) and its text."""
        _, record = self.item_record(item_id)
        image = str(record["image"])
        return (image if is_object_uri(image) else Path(image)), str(record["text"] or "")

    # bundles ---------------------------------------------------------------------------------------
    def bundle_names(self) -> list[str]:
        models = self.workspace.root / "models"
        if not models.is_dir():
            return []
        from curata.tasks.bundle import bundle_cards

        return sorted(folder.name for folder, _ in bundle_cards(models) if _NAME.match(folder.name))

    def bundle_dir(self, name: str) -> Path:
        check_name(name, "bundle")
        directory = self.workspace.root / "models" / name
        if not (folder_view(directory) / "card.json").is_file():
            known = ", ".join(self.bundle_names()) or "none"
            raise ApiError(404, "unknown_bundle", f"no model bundle named {name!r} (bundles: {known})", "bundle")
        return directory

    def raw_card(self, name: str) -> dict[str, Any] | None:
        """The bundle's card.json as written (classifier bundles and others, e.g. a joint search space)."""
        try:
            card = json.loads((folder_view(self.workspace.root / "models" / name) / "card.json").read_text(
                encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return card if isinstance(card, dict) else None

    def is_classifier(self, name: str) -> bool:
        """Whether a bundle is one of the runner's tasks (others, e.g. a search model, are not predicted with)."""
        from curata.tasks.runner import TASKS

        card = self.raw_card(name)
        return card is None or card.get("task") in TASKS  # an unreadable card: loading says what is wrong

    def bundle(self, name: str) -> LoadedBundle:
        """The loaded bundle; one that appeared after start-up (or preload off) is loaded on first use."""
        loaded = self.bundles.get(name)
        if loaded is not None:
            return loaded
        self.bundle_dir(name)
        if not self.is_classifier(name):
            raise ApiError(409, "not_a_classifier", f"bundle {name!r} is not a classifier (see GET /v1/models/"
                           f"{name}); it cannot predict", "bundle")
        if name in self.bundle_errors:
            raise ApiError(409, "bundle_error", f"bundle {name!r} cannot be used: {self.bundle_errors[name]}; fix "
                           f"it and POST /v1/models/{name}/reload", "bundle")
        with self._reload_lock:  # loaded meanwhile (by start-up, or by a concurrent first request)?
            loaded = self.bundles.get(name)
        return loaded if loaded is not None else self.reload(name)

    def is_search_model(self, name: str) -> bool:
        """Whether a bundle is a joint search space (reloaded by reopening the searchers)."""
        return (self.raw_card(name) or {}).get("kind") == "joint_space"

    def reload(self, name: str) -> LoadedBundle:
        """(Re)load a bundle from disk and swap it in; on failure the old one (if any) stays in service."""
        directory = self.bundle_dir(name)
        if not self.is_classifier(name):
            raise ApiError(409, "not_a_classifier", f"bundle {name!r} is not a classifier; nothing to load", "bundle")
        with self._reload_lock:
            try:
                bundle = LoadedBundle.load(name, directory)
            except Exception as e:  # a broken bundle is reported, it never takes the service down
                reason = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
                reason = hide_paths(reason, self.workspace.root)
                self.bundle_errors = {**self.bundle_errors, name: reason}
                raise ApiError(409, "bundle_error", f"bundle {name!r} cannot be loaded: {reason}", "bundle") from None
            # Copy-on-write: readers holding the old dict (or the old bundle) are unaffected.
            self.bundles = {**self.bundles, name: bundle}
            self.bundle_errors = {k: v for k, v in self.bundle_errors.items() if k != name}
            return bundle

    def model_info(self, name: str) -> dict[str, Any]:
        self.bundle_dir(name)
        loaded = self.bundles.get(name)
        info: dict[str, Any] = {"name": name, "status": "not loaded", "error": self.bundle_errors.get(name),
                                "loaded_at": loaded.loaded_at if loaded else None}
        card = loaded.card.to_dict() if loaded is not None else self.raw_card(name)
        if loaded is not None:
            info["status"] = "loaded"
        elif info["error"]:
            info["status"] = "error"
        elif card is None:
            info.update(status="error", error="card.json is not readable JSON")
        elif self.is_search_model(name):
            info["status"] = "search model"  # reloaded through the searchers, not predicted with
        elif not self.is_classifier(name):
            info["status"] = "not a classifier"
        info.update(_card_fields(card or {}))
        return info

    # search and describe ---------------------------------------------------------------------------
    def searcher(self, model: str | None = None) -> Any:
        """The searcher of `model`, reopened (aside, then swapped) when its index or the search models on
        disk changed since it was opened: `curata index build` and `joint train` are picked up."""
        if model is not None:
            check_name(model, "search_model")
        found = self._searchers.get(model)
        stamp = self._search_stamp(found[0] if found else None)
        if found is not None and found[1] == stamp:
            return found[0]
        with self._search_lock:
            found = self._searchers.get(model)
            if found is not None and found[1] == stamp:
                return found[0]
            try:
                from curata.search.searcher import Searcher
            except ImportError:
                self.engine_errors["search"] = "search is not available in this installation"
                raise ApiError(409, "search_unavailable", self.engine_errors["search"]) from None
            try:
                searcher = Searcher.open(self.workspace, model=model)
            except ImportError as e:
                self.engine_errors["search"] = f"search is not available in this installation ({e})"
                raise ApiError(409, "search_unavailable", self.engine_errors["search"]) from None
            except (ValueError, FileNotFoundError, OSError) as e:
                if found is not None:  # a rebuild in progress or a broken one: keep serving the old index
                    log.warning("search index not reopened: %s", e)
                    return found[0]
                reason = hide_paths(str(e), self.workspace.root)
                self.engine_errors["search"] = f"no usable search index ({reason}); run `curata index build`"
                raise ApiError(409, "no_search_index", self.engine_errors["search"]) from None
            self.engine_errors.pop("search", None)
            self._searchers = {**self._searchers, model: (searcher, self._search_stamp(searcher))}
            return searcher

    def reload_search(self) -> None:
        """POST /v1/models/{joint space}/reload: drop every open searcher, then open the default one again."""
        with self._search_lock:
            self._searchers = {}
        self.searcher(None)

    def _search_stamp(self, searcher: Any) -> tuple[Any, ...]:
        """What a searcher depends on, as cheap stats: its index folder (saved by renaming a new folder into
        place, so a rebuild changes the inode) and the models folder (a retrained space is renamed in)."""
        paths = [self.workspace.root / "models", self.workspace.root / "index"]
        if searcher is not None:
            index_dir = self.workspace.root / "index" / searcher.encoder.index_name
            paths += [index_dir, index_dir / "search.json"]
        if is_remote(self.workspace.root):  # no folder times on object storage: the published generations'
            paths = sorted((self.workspace.root / "models").glob(f"*/{CURRENT}"))
            if searcher is not None:
                paths.append(self.workspace.root / "index" / searcher.encoder.index_name / CURRENT)
        out = []
        for path in paths:
            try:
                st = path.stat()
                out.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def describer(self) -> Any:
        if self._describer is not None:
            return self._describer
        with self._describe_lock:
            if self._describer is None:
                try:
                    from curata.describe import Describer
                except ImportError:
                    self.engine_errors["describe"] = "describe is not available in this installation"
                    raise ApiError(409, "describe_unavailable", self.engine_errors["describe"]) from None
                try:
                    self._describer = Describer.open(self.workspace)
                except ImportError as e:
                    self.engine_errors["describe"] = f"describe is not available in this installation ({e})"
                    raise ApiError(409, "describe_unavailable", self.engine_errors["describe"]) from None
                except (ValueError, FileNotFoundError) as e:
                    reason = hide_paths(str(e), self.workspace.root)
                    self.engine_errors["describe"] = f"cannot describe with this workspace: {reason}"
                    raise ApiError(409, "no_describer", self.engine_errors["describe"]) from None
                self.engine_errors.pop("describe", None)
            return self._describer

    def engine_status(self, which: str) -> str:
        """'ready', the reason it is not, or 'not loaded' (cheap: /v1/ready must not load anything)."""
        loaded = bool(self._searchers) if which == "search" else self._describer is not None
        if loaded:
            return "ready"
        return self.engine_errors.get(which, "not loaded yet (loads on first use)")

    # clusters --------------------------------------------------------------------------------------
    def cluster_runs(self) -> list[dict[str, Any]]:
        """Summaries of the cluster runs in <workspace>/clusters/, newest first."""
        folder = self.workspace.root / "clusters"
        runs = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.name.startswith(_NOT_RUNS) or not path.with_suffix(".parquet").is_file():
                continue
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(summary, dict) or "run" not in summary:
                continue
            summary["created"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
            summary["_mtime"] = path.stat().st_mtime
            runs.append(summary)
        return sorted(runs, key=lambda s: -s["_mtime"])

    def cluster_run(self, run: str) -> dict[str, Any]:
        check_name(run, "cluster_run")
        for summary in self.cluster_runs():
            if summary["run"] == run:
                return summary
        raise ApiError(404, "unknown_cluster_run", f"no cluster run named {run!r}; see GET /v1/clusters", "run")

    def latest_run(self) -> str | None:
        runs = self.cluster_runs()
        return runs[0]["run"] if runs else None

    def assignments(self, run: str) -> pd.DataFrame:
        """id -> cluster (and x, y) of a run, cached until its file changes."""
        self.cluster_run(run)
        path = self.workspace.root / "clusters" / f"{run}.parquet"
        mtime = path.stat().st_mtime
        cached = self._runs_cache.get(run)
        if cached is None or cached[0] != mtime:
            frame = pd.read_parquet(readable(path))
            self._runs_cache = {**self._runs_cache, run: (mtime, frame)}
            return frame
        return cached[1]

    # thumbnails ------------------------------------------------------------------------------------
    def cached_thumbnail(self, item_id: str, size: int) -> tuple[bytes, str] | None:
        """The thumbnail when it is cached (404 for an unknown item): no compute slot needed."""
        self.item_image(item_id)
        with self._thumbs_lock:
            cached = self._thumbs.get((item_id, size))
            if cached is not None:
                self._thumbs.move_to_end((item_id, size))
        return None if cached is None else (cached[1:], "image/png" if cached[:1] == b"P" else "image/jpeg")

    def thumbnail(self, item_id: str, size: int) -> tuple[bytes, str]:
        """The thumbnail, made if not cached. Making one decodes the image: run it in a compute slot (`compute`),
        like all image work (4 at once of a 40 MP item took 3 GB outside them)."""
        from PIL import Image

        from curata.service.images import _load

        path, _ = self.item_image(item_id)
        key = (item_id, size)
        with self._thumbs_lock:
            cached = self._thumbs.get(key)
            if cached is not None:
                self._thumbs.move_to_end(key)
        if cached is None:
            if not objectstore.exists(path):
                raise ApiError(404, "image_missing", f"the image of {item_id!r} is no longer there", "item_id")
            # Decoded reduced, to no less than size + 1 on the long side: `small` below still means the original is.
            image = Image.fromarray(_load(path, self.settings, "item_id", size + 1))
            small = max(image.size) <= size
            # Never upscale (the page scales with CSS, pixel art stays crisp); small images stay lossless.
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            image.save(buf, "PNG" if small else "JPEG", **({} if small else {"quality": 85}))
            cached = (b"P" if small else b"J") + buf.getvalue()
            with self._thumbs_lock:
                self._thumbs[key] = cached
                while len(self._thumbs) > self.settings.thumbnail_cache:
                    self._thumbs.popitem(last=False)
        return cached[1:], "image/png" if cached[:1] == b"P" else "image/jpeg"
