"""`predict_ray`: a trained bundle applied to many images inside Ray Data.

Inputs: a workspace (its items' images and texts), a folder of images, a Parquet file (or a folder of
Parquet shards) with an image-path column, a text file listing one image path or `file://` URI per
line, or a list of paths. The bundle is loaded and checked once on the driver; the model and its
extractors (with their fitted state) are shipped to each actor, which therefore needs no access to
the bundle folder and loads its model sessions once. Each image is loaded, featurised and predicted
exactly as `curata.tasks.runner.predict_images` does it, with the same per-item error strings; a batch
whose prediction fails is retried item by item, so one bad input never fails the others.

Predictions come back to the driver in input order. With `output` (and the rows not asked back) the
workers write them as Parquet parts (`part-*.parquet`: id, image, prediction, tags, scores as JSON,
error) through Ray Data's distributed write, so no prediction passes through the driver; the parts keep
each batch's input order, not the whole input's (the id and image columns say which row is which).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curata.atomic import atomic_write_bytes
from curata.features.base import Extractor
from curata.features.engine import PART_SIZE
from curata.imageio import load_image
from curata.ingest.folder import looks_like_image
from curata.progress import SILENT, Reporter
from curata.scale.runtime import (
    READ_CPUS,
    actor_pool,
    frame_dataset,
    limit_threads,
    quiet_data_context,
    ray_runtime,
)
from curata.storage import location
from curata.tasks.bundle import load_bundle
from curata.tasks.runner import bundle_extractors, extract_blocks, predict_blocks
from curata.workspace import Workspace

IMAGE_COLUMNS = ("image", "path", "file", "uri", "url")  # first one present names the images of a table
LIST_SUFFIXES = {".txt", ".lst", ".list", ".uris"}

PREDICTION_SCHEMA = pa.schema([
    ("id", pa.string()), ("image", pa.string()), ("prediction", pa.string()), ("tags", pa.list_(pa.string())),
    ("scores", pa.string()), ("error", pa.string()),
])


@dataclass
class PredictRun:
    items: int
    predicted: int
    errors: int
    seconds: float
    output: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # kept unless written to `output` only

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "predicted": self.predicted, "errors": self.errors,
                "seconds": round(self.seconds, 2), "items_per_second": round(self.per_second, 1),
                "output": self.output}


# Loading and predicting, shared by every actor -----------------------------------------------------


def _load(path: str) -> tuple[np.ndarray | None, str | None]:
    """As `predict_images`: the full image, or the loader's reason (same strings as the local path)."""
    try:
        return load_image(path), None
    except Exception as e:  # ImageError or OS errors: reported per item
        return None, getattr(e, "reason", str(e))


class PredictActor:
    """One replica of the bundle: model and extractors built once, then called on batches of paths."""

    def __init__(self, task: Any, card: Any, extractors: dict[str, Extractor], threads: int,
                 columns: dict[str, str | None], base_dir: str | None):
        limit_threads(threads)
        self.task, self.card, self.extractors = task, card, extractors
        self.columns, self.base_dir = columns, base_dir
        self.pool = ThreadPoolExecutor(max_workers=max(2, threads))

    def _path(self, value: str) -> str:
        value = value.strip()
        value = value.removeprefix("file://")
        if self.base_dir and not Path(value).is_absolute():
            return str(Path(self.base_dir) / value)
        return value

    def _predict(self, images: list[np.ndarray], texts: list[str]) -> list[dict[str, Any]]:
        return predict_blocks(self.task, self.card, extract_blocks(self.extractors, images, texts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = batch.column_names
        raw = [str(v or "") for v in batch[self.columns["image"]].to_pylist()]
        keep = [i for i, v in enumerate(raw) if v.strip()]  # blank lines of a URI list are no items
        paths = [self._path(raw[i]) for i in keep]
        text_col, id_col = self.columns.get("text"), self.columns.get("id")
        texts = [str(batch[text_col][i].as_py() or "") for i in keep] if text_col in column else [""] * len(keep)
        ids = [str(batch[id_col][i].as_py()) for i in keep] if id_col in column else [None] * len(keep)
        loaded = list(self.pool.map(_load, paths))
        results: list[dict[str, Any]] = [{"error": error} if error else {} for _, error in loaded]
        good = [i for i, (_, error) in enumerate(loaded) if error is None]
        if good:
            try:
                rows = self._predict([loaded[i][0] for i in good], [texts[i] for i in good])
            except Exception:  # isolate the culprit(s): retry item by item
                rows = []
                for i in good:
                    try:
                        rows.extend(self._predict([loaded[i][0]], [texts[i]]))
                    except Exception as e:
                        rows.append({"error": f"{type(e).__name__}: {e}"})
            for i, row in zip(good, rows, strict=True):
                results[i] = row
        return pa.Table.from_pylist([
            {"id": ids[k], "image": paths[k], "prediction": r.get("prediction"), "tags": r.get("tags"),
             "scores": json.dumps(r["scores"]) if "scores" in r else None, "error": r.get("error")}
            for k, r in enumerate(results)], schema=PREDICTION_SCHEMA)


def prediction_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows shaped like `predict_images`' (image, and id for workspace items; prediction or tags, scores;
    or error)."""
    rows = []
    for rec in table.to_pylist():
        row: dict[str, Any] = {"image": rec["image"]}
        if rec["id"] is not None:
            row["id"] = rec["id"]
        if rec["error"] is not None:
            row["error"] = rec["error"]
        else:
            if rec["prediction"] is not None:
                row["prediction"] = rec["prediction"]
            if rec["tags"] is not None:
                row["tags"] = rec["tags"]
            if rec["scores"] is not None:
                row["scores"] = json.loads(rec["scores"])
        rows.append(row)
    return rows


# Inputs ---------------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    dataset: Any  # ray.data.Dataset
    total: int
    columns: dict[str, str | None]
    base_dir: str | None = None


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and looks_like_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _parquet_inputs(path: Path) -> _Inputs:
    import ray

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no Parquet files under {path}")
    names = pq.read_schema(files[0]).names
    image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
    if image_col is None:
        raise ValueError(f"{files[0]} has no image column (one of {', '.join(IMAGE_COLUMNS)}); columns: "
                         f"{', '.join(names)}")
    columns = {"image": image_col, "text": "text" if "text" in names else None, "id": "id" if "id" in names else None}
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    dataset = ray.data.read_parquet([str(f) for f in files], num_cpus=READ_CPUS).select_columns(
        [c for c in columns.values() if c])
    return _Inputs(dataset, total, columns, str(path if path.is_dir() else path.parent))


def _list_inputs(path: Path) -> _Inputs:
    import ray

    with path.open(encoding="utf-8") as lines:
        total = sum(1 for line in lines if line.strip())
    dataset = ray.data.read_text(str(path), num_cpus=READ_CPUS)  # one row per line, column "text"
    return _Inputs(dataset, total, {"image": "text", "text": None, "id": None}, str(path.parent))


def _inputs(source: Workspace | Path | str | list[Path | str], texts: str | None, batch_size: int,
            actors: int) -> _Inputs:
    columns: dict[str, str | None] = {"image": "image", "text": "text", "id": None}
    if isinstance(source, Workspace):
        items = source.items()
        if items.empty:
            raise ValueError(f"workspace {source.root} has no items")
        frame = pd.DataFrame({"id": items["id"].astype(str), "image": items["image"],
                              "text": items["text"].fillna("") if texts is None else texts})
        return _Inputs(frame_dataset(frame, batch_size, actors), len(frame), {**columns, "id": "id"})
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            files = _image_files(path)
            if not files:
                if any(path.rglob("*.parquet")):
                    return _parquet_inputs(path)
                raise ValueError(f"no image or Parquet files under {path}")
            source = files
        elif path.suffix.lower() == ".parquet":
            return _parquet_inputs(path)
        elif path.suffix.lower() in LIST_SUFFIXES:
            return _list_inputs(path)
        else:
            source = [path]
    paths: list[str] = []
    for entry in source:
        entry_path = Path(entry)
        paths.extend(_image_files(entry_path) if entry_path.is_dir() else [str(entry)])
    if not paths:
        raise ValueError("no images to predict")
    frame = pd.DataFrame({"image": paths, "text": texts or ""})
    return _Inputs(frame_dataset(frame, batch_size, actors), len(frame), columns)


# Driver ---------------------------------------------------------------------------------------------


def _part_names() -> Any:
    """Ray Data's file names for the parts it writes: `part-<write>-<task>*.parquet`, like the driver's."""
    from ray.data.datasource.filename_provider import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{write_uuid}-{task_index:06d}.parquet"

    return PartNames()


def _collect(results: Any, run: PredictRun, keep_rows: bool, output: Path | None, advance: Any) -> None:
    """Predictions streamed back to the driver: counted, kept (`keep_rows`), written in parts (`output`)."""
    pending: list[pa.Table] = []
    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        run.items += len(table)
        run.errors += len(table) - table["error"].null_count
        if keep_rows:
            run.rows.extend(prediction_rows(table))
        if output is not None:
            pending.append(table)
            if sum(len(t) for t in pending) >= PART_SIZE:
                _write_part(output, pa.concat_tables(pending))
                pending.clear()
        advance(len(table))
    if output is not None and pending:
        _write_part(output, pa.concat_tables(pending))


def _write_part(output: Path, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(output / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet", buffer.getvalue())


def predict_ray(bundle_dir: Path, inputs: Workspace | Path | str | list[Path | str], *, texts: str | None = None,
                output: Path | None = None, keep_rows: bool | None = None, batch_size: int = 32,
                address: str | None = None, num_cpus: int | None = None, actors: int | None = None,
                reporter: Reporter = SILENT) -> PredictRun:
    """Predict with the bundle at `bundle_dir` for every input on Ray (see the module docstring for the
    kinds of input). `texts`: one text for every image (bundles with text features; workspace items use
    their own text unless given). `output`: a new folder to write Parquet parts to. `keep_rows`: return
    the rows (default: when there is no `output`; a huge job should write them instead)."""
    started = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    bundle_dir = location(bundle_dir)  # a folder, or a bundle published in a bucket workspace
    task, card = load_bundle(bundle_dir)
    extractors = bundle_extractors(card, bundle_dir)  # checks versions, loads fitted state: fails early
    keep_rows = output is None if keep_rows is None else keep_rows
    if output is not None:
        output = location(output)  # a folder, or a prefix on object storage: Ray Data writes either
        if output.exists() and any(output.glob("part-*.parquet")):
            raise ValueError(f"output folder {output} already holds prediction parts; give a new folder")
        output.mkdir(parents=True, exist_ok=True)
    run = PredictRun(0, 0, 0, 0.0, str(output) if output else None)
    with ray_runtime(address, num_cpus), quiet_data_context(preserve_order=keep_rows):
        import ray

        pool = actor_pool(actors)
        source = _inputs(inputs, texts, batch_size, pool.actors)
        advance = reporter.task(f"predict {bundle_dir.name} (ray)", source.total)
        results = source.dataset.map_batches(
            PredictActor,
            fn_constructor_kwargs={"task": task, "card": card, "extractors": extractors, "threads": pool.threads,
                                   "columns": source.columns, "base_dir": source.base_dir},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus,
            scheduling_strategy="SPREAD",  # replicas over every node, not packed on the first
        )
        if output is not None and not keep_rows:
            # Ray Data writes the parts from the workers (a distributed write): no prediction reaches the driver,
            # which then reads back only the error column to count.
            advance(0)
            results.write_parquet(str(output), min_rows_per_file=PART_SIZE,
                                  filename_provider=_part_names())
            errors = pq.read_table(str(output), columns=["error"])["error"]
            run.items, run.errors = len(errors), len(errors) - errors.null_count
            advance(run.items)
        else:
            _collect(results, run, keep_rows, output, advance)
    run.predicted = run.items - run.errors
    run.seconds = time.perf_counter() - started
    return run
