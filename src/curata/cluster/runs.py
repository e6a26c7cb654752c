"""Workspace-level runs, what the CLI calls: cluster a workspace's features (or topic-model its texts),
name and map the clusters, find near-duplicates, find tag themes. Every run writes under
`<workspace>/clusters/` and returns a JSON-ready summary:

    <run>.parquet    id, cluster, x, y (one row per clustered item)
    <run>.json       parameters, scores, cluster names and sizes, the k curve, skipped items
    <run>.png        the 2-D map coloured by cluster;  <run>-k.png the curve used to choose k
    <run>.html       the self-contained interactive map
    duplicates-<method>.json, themes-<embedder>.json / .parquet
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.atomic import atomic_write_parquet
from curata.cluster.core import DEFAULT_K_RANGE, ClusterInputError, cluster, plot_k_curve
from curata.cluster.duplicates import (
    DEFAULT_COSINE,
    DEFAULT_HAMMING,
    DuplicateGroups,
    embedding_duplicates,
    phash_files,
    phash_groups,
)
from curata.cluster.maps import (
    DEFAULT_MAX_THUMBNAILS,
    MAP_METHODS,
    embed_2d,
    interactive_map,
    plot_map,
    write_assignments,
)
from curata.cluster.naming import name_clusters
from curata.cluster.themes import TagThemes, tag_themes
from curata.cluster.topics import TOPIC_METHODS, topics
from curata.progress import SILENT, Reporter
from curata.storage import readable
from curata.workspace import Workspace

STREAM_ABOVE_ROWS = 50_000  # k-means over more items streams (see cluster_workspace, cluster/stream.py)
NAME_SAMPLE = 50_000  # items a streamed run names its clusters from
MAP_SAMPLE = 5_000  # points of a streamed run's map (t-SNE on more takes minutes)


def run_name(features: Sequence[str], method: str, k: int | None, reduction: str) -> str:
    parts = ["+".join(features) if method not in TOPIC_METHODS else "text", method]
    if reduction != "none":
        parts.append(reduction)
    if k is not None:
        parts.append(f"k{k}")
    return safe_name("-".join(parts))


def safe_name(name: str) -> str:
    """A run name usable as a file name on every system."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")
    if not cleaned:
        raise ClusterInputError(f"run name {name!r} has no usable characters")
    return cleaned[:120]


# What a cluster run reads of each item (captions, attributes and meta can be most of a row's bytes).
CLUSTER_COLUMNS = ["id", "source", "collection", "image", "image_sha256", "text", "label", "tags"]


def _items(workspace: Workspace, columns: list[str] | None = None) -> pd.DataFrame:
    items = workspace.items(columns)
    if items.empty:
        raise ClusterInputError(f"the workspace {workspace.root} has no items; run `curata ingest` first")
    return items.reset_index(drop=True)


def _truth(items: pd.DataFrame, target: str | None) -> tuple[list[Any] | None, str | None]:
    """Known labels to score against: "auto" uses the label column when it has 2+ distinct values."""
    from curata.tasks.data import single_target

    if target is None or target == "none":
        return None, None
    spec = "label" if target == "auto" else target
    values = single_target(items, spec)
    if target == "auto" and values.dropna().nunique() < 2:
        return None, None
    return list(values), spec


def _names(workspace: Workspace, items: pd.DataFrame, labels: np.ndarray, *, streamed: bool, seed: int
           ) -> list[Any]:
    """Cluster names from the items' text, tags and palettes. A streamed run (a large collection) names its
    clusters from a seeded sample of NAME_SAMPLE items: distinctive words need shares, not every item, and
    a tf-idf over millions of texts would not fit the budget; the sizes are still counted over every item."""
    if streamed and len(items) > NAME_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(len(items), NAME_SAMPLE, replace=False))
        part = items.iloc[rows]
        names = name_clusters(labels[rows], list(part["text"]), list(part["tags"]), _palettes(workspace, part))
        sizes = dict(zip(*np.unique(labels, return_counts=True), strict=True))
        for n in names:
            n.size = int(sizes.get(n.cluster, n.size))
        return sorted(names, key=lambda n: (n.cluster < 0, -n.size, n.cluster))
    return name_clusters(labels, list(items["text"]), list(items["tags"]), _palettes(workspace, items))


def _palettes(workspace: Workspace, items: pd.DataFrame) -> np.ndarray | None:
    """The colour vectors for the items (unavailable rows are zero: no colours): the `object_palette` feature
    where it was computed (the objects' colours, as /v1/colours names them), else the whole-image `palette`,
    else None. The palette is kept when it covers more of the items (object_palette computed for a part only)."""
    from curata.features.engine import load_matrix, make_extractor

    best: tuple[int, np.ndarray] | None = None
    for feature in ("object_palette", "palette"):
        try:
            matrix, errors = load_matrix(workspace, make_extractor(feature), items)
        except ValueError:
            continue
        failed = np.array([e is not None for e in errors], bool)
        if failed.all() or (best is not None and best[0] >= int((~failed).sum())):
            continue
        matrix[failed] = 0
        best = (int((~failed).sum()), matrix)
    return best[1] if best is not None else None


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def cluster_workspace(workspace: Workspace, features: Sequence[str] = ("minilm",), method: str = "kmeans",
                      k: int | None = None, *, k_range: tuple[int, int] = DEFAULT_K_RANGE, reduction: str = "none",
                      n_components: int | float | None = None, normalisation: str = "l2", target: str | None = "auto",
                      map_method: str = "auto", png: bool = True, html: bool = True,
                      max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, name: str | None = None, seed: int = 0,
                      linkage: str = "ward", min_cluster_size: int | None = None,
                      reporter: Reporter = SILENT) -> dict[str, Any]:
    """Cluster the workspace's items and write the run's files (see the module docstring).

    `features`: extractor names whose cached vectors are fused side by side, each block L2-normalised
    (early fusion); items lacking any of them are skipped and counted. `method` "lda" / "nmf" instead
    topic-models the items' texts with k topics (k required). `target`: "auto" scores against the
    label column when it has 2+ values, a spec ("label", "tag:<trait>", "meta:<field>") always, None never.
    """
    if name and safe_name(name) != name:
        raise ValueError(f"run name {name!r} is not a plain file name: use letters, digits, '_', '.', '+' and '-' "
                         f"(e.g. {safe_name(name)!r})")
    if map_method not in (*MAP_METHODS, "none"):
        raise ClusterInputError(f"unknown map method '{map_method}': use one of {', '.join(MAP_METHODS)} or none")
    started = time.perf_counter()
    items = _items(workspace, CLUSTER_COLUMNS + (["meta"] if str(target).startswith("meta:") else []))
    done = reporter.task("clustering", 4)
    skipped: dict[str, int] = {}
    map_rows: np.ndarray | None = None  # the rows the map shows (None: all); a streamed run maps its sample
    memory: dict[str, Any] = {"mode": "in_memory"}  # how the features were held: in memory, or streamed
    if method in TOPIC_METHODS:
        if k is None:
            raise ClusterInputError(f"{method} needs the number of topics: give k")
        model = topics(list(items["text"]), k, method, seed=seed)
        labels = model.labels
        x = model.doc_topics
        truth, spec = _truth(items, target)
        from curata.cluster.core import score

        scores = score(x, labels, truth, seed)
        summary: dict[str, Any] = {"method": method, "k": k, "params": {"seed": seed}, "scores": scores,
                                   "topics": model.to_dict()["topics"], "curve": None}
        curve = None
        space = x
    else:
        from curata.budget import matrix_bytes, memory_budget
        from curata.tasks.data import feature_dim, load_features

        if not features:
            raise ClusterInputError("name at least one feature to cluster on (e.g. minilm, effnet_lite0)")
        need = matrix_bytes(len(items), feature_dim(list(features)))
        memory.update(matrix_bytes=need, budget_bytes=memory_budget())
        # Streamed k-means also past STREAM_ABOVE_ROWS items within the budget: k-means with 10 restarts on every
        # row costs minutes per 100k rows of 1280-d, so per-item cost would jump with the collection's size.
        big = method == "kmeans" and reduction == "none" and len(items) > STREAM_ABOVE_ROWS
        if need > memory["budget_bytes"] or big:
            from curata.cluster.stream import over_budget_refusal, streamed_kmeans

            refusal = over_budget_refusal(method, reduction, need)
            if refusal is not None:
                raise refusal
            truth, spec = _truth(items, target)
            streamed = streamed_kmeans(workspace, features, items, k, k_range=k_range, normalisation=normalisation,
                                       truth=truth, seed=seed)
            skipped = dict(streamed.skipped)
            items = items[streamed.keep].reset_index(drop=True)
            # The map and the silhouette cover the seeded sample (see curata.cluster.stream).
            labels, curve, space, x, map_rows = streamed.labels, streamed.curve, None, streamed.sample_x, \
                streamed.sample_rows
            summary = streamed.to_dict()
            memory.update(mode="streamed", **streamed.params["streamed"])
        else:
            fs, keep = load_features(workspace, list(features), items)
            skipped = dict(fs.skipped)
            items = items[keep].reset_index(drop=True)
            if items.empty:
                raise ClusterInputError(f"no item has all of the features {', '.join(features)}")
            x = fs.concat(normalise=True)
            truth, spec = _truth(items, target)
            result = cluster(x, method, k, k_range=k_range, normalisation=normalisation, reduction=reduction,
                             n_components=n_components, truth=truth, seed=seed, linkage=linkage,
                             min_cluster_size=min_cluster_size)
            labels, curve, space = result.labels, result.curve, result.space
            summary = result.to_dict()
    done(1)
    names = _names(workspace, items, labels, streamed=map_rows is not None, seed=seed)
    done(1)
    run = name or run_name(features, method, k, reduction)
    folder = workspace.dir("clusters")
    xy = None
    if map_method != "none":
        # A 2-D t-SNE/UMAP the clustering already ran on is the map; otherwise map the input features.
        if space is not None and space.shape[1] == 2 and reduction in ("tsne", "umap"):
            xy, used = space, reduction
        else:
            if map_rows is not None and len(map_rows) > MAP_SAMPLE:  # a streamed run maps part of its sample
                keep = np.sort(np.random.default_rng(seed).choice(len(map_rows), MAP_SAMPLE, replace=False))
                map_rows, x = map_rows[keep], x[keep]
            xy, used = embed_2d(x, map_method, seed)
        summary["map"] = used
    done(1)
    label_names = {n.cluster: n.name for n in names}
    shown = items if map_rows is None else items.iloc[map_rows]
    shown_labels = labels if map_rows is None else labels[map_rows]
    all_xy = xy
    if xy is not None and map_rows is not None:  # items outside the mapped sample have no coordinates
        all_xy = np.full((len(items), 2), np.nan)
        all_xy[map_rows] = xy
    files: dict[str, str] = {"assignments": str(write_assignments(workspace.root, run, list(items["id"]), labels,
                                                                  all_xy))}
    notes: list[str] = []
    if map_rows is not None:
        why = "the features exceed the memory budget" if memory.get("matrix_bytes", 0) > memory.get(
            "budget_bytes", 0) else f"more than {STREAM_ABOVE_ROWS:,} items"
        sampled = memory.get("sample_rows", len(map_rows))
        notes.append(f"streamed k-means ({why}): the silhouette covers a seeded sample of {sampled} "
                     f"of the {len(items)} items, the map {len(map_rows)} of them, the names up to "
                     f"{min(NAME_SAMPLE, len(items))}")
    try:
        if curve is not None and png:
            files["k_curve"] = str(plot_k_curve(curve, folder / f"{run}-k.png", f"{run}: choosing k"))
        if xy is not None and png:
            files["map_png"] = str(plot_map(xy, shown_labels, folder / f"{run}.png", label_names, run))
    except RuntimeError as e:  # matplotlib missing: the run's data and HTML map are still worth having
        notes.append(f"no PNG: {e}")
    if xy is not None and html:
        page = interactive_map(xy, shown_labels, list(shown["id"]), folder / f"{run}.html", names=label_names,
                               images=list(shown["image"]), texts=list(shown["text"]),
                               max_thumbnails=max_thumbnails, title=run, seed=seed)
        files["map_html"] = page["path"]
        summary["thumbnails"] = page["thumbnails"]
    done(1)
    summary.update({"run": run, "features": list(features) if method not in TOPIC_METHODS else ["text"],
                    "items": len(items), "skipped": skipped, "target": spec, "memory": memory,
                    "clusters": [n.to_dict() for n in names], "files": files, "notes": notes,
                    "seconds": round(time.perf_counter() - started, 2)})
    files["summary"] = str(folder / f"{run}.json")
    _write_json(folder / f"{run}.json", summary)
    return summary


# --------------------------------------------------------------------------------------------------
# Near-duplicates


def _cached_phashes(workspace: Workspace, items: pd.DataFrame, reporter: Reporter) -> tuple[np.ndarray, dict[int, str]]:
    """pHashes by image content hash, cached in clusters/phash.parquet so reruns only hash new images."""
    path = workspace.dir("clusters") / "phash.parquet"
    empty = pd.DataFrame({"image_sha256": [], "phash": [], "error": []})
    cache = pd.read_parquet(readable(path)) if path.exists() else empty
    known = dict(zip(cache["image_sha256"], zip(cache["phash"], cache["error"], strict=True), strict=True))
    todo = items.drop_duplicates("image_sha256")
    todo = todo[~todo["image_sha256"].isin(known)]
    if len(todo):
        advance = reporter.task("perceptual hashes", len(todo))
        hashes, errors = phash_files(list(todo["image"]))
        advance(len(todo))
        for r, (sha, h) in enumerate(zip(todo["image_sha256"], hashes, strict=True)):
            known[sha] = (int(np.int64(h.view(np.int64))), errors.get(r))
        frame = pd.DataFrame({"image_sha256": list(known), "phash": [v[0] for v in known.values()],
                              "error": [v[1] for v in known.values()]})
        atomic_write_parquet(frame, path)
    out = np.zeros(len(items), np.uint64)
    errs: dict[int, str] = {}
    for r, sha in enumerate(items["image_sha256"]):
        h, error = known[sha]
        out[r] = np.int64(h).view(np.uint64)
        if isinstance(error, str):
            errs[r] = error
    return out, errs


def duplicates_workspace(workspace: Workspace, method: str = "phash", *, feature: str = "effnet_lite0",
                         threshold: float | None = None, reporter: Reporter = SILENT) -> DuplicateGroups:
    """Near-duplicate groups of the workspace's items; writes clusters/duplicates-<method>.json.

    "phash": perceptual hashes within `threshold` bits (default 8 of 64). "embedding": the cached
    `feature` vectors with cosine similarity >= `threshold` (default 0.95).
    """
    items = _items(workspace)
    if method == "phash":
        hashes, errors = _cached_phashes(workspace, items, reporter)
        groups = phash_groups(list(items["id"]), hashes, int(DEFAULT_HAMMING if threshold is None else threshold),
                              errors)
    elif method == "embedding":
        from curata.tasks.data import load_features

        fs, keep = load_features(workspace, [feature], items)
        groups = embedding_duplicates(list(items["id"][keep]), fs.blocks[feature],
                                      DEFAULT_COSINE if threshold is None else float(threshold))
        groups.skipped.update({str(i): f"no {feature} vector" for i in items["id"][~keep]})
    else:
        raise ClusterInputError(f"unknown duplicate method '{method}': use phash or embedding")
    payload = {**groups.to_dict(), "feature": feature if method == "embedding" else None}
    _write_json(workspace.dir("clusters") / f"duplicates-{method}.json", payload)
    return groups


# --------------------------------------------------------------------------------------------------
# Tag themes


def themes_workspace(workspace: Workspace, embedder: str = "minilm", n_themes: int | None = None, *,
                     min_count: int = 2, seed: int = 0) -> TagThemes:
    """Themes of the workspace's tag vocabulary; writes clusters/themes-<embedder>.json (themes) and
    .parquet (id, themes: the list of theme numbers of each item)."""
    items = _items(workspace)
    tag_lists = [list(t) for t in items["tags"]]
    found = tag_themes(tag_lists, n_themes=n_themes, embedder=embedder, min_count=min_count, seed=seed)
    folder = workspace.dir("clusters")
    _write_json(folder / f"themes-{embedder}.json", found.to_dict())
    frame = pd.DataFrame({"id": list(items["id"]), "themes": found.item_themes(tag_lists)})
    atomic_write_parquet(frame, folder / f"themes-{embedder}.parquet")
    return found
