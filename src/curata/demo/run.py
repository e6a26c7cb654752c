"""`curata demo`: draw the built-in generative-art collection, then run every stage that exists.

Stages so far: generate -> ingest (ERC-721 metadata, label = algorithm) -> features -> two quick
checks that the features mean something (the zero-label colour namer against the `color` trait,
leave-one-out 1-nearest-neighbour accuracy of the algorithm on image features) -> supervised tasks
(algorithm detection, colour, tag suggestion), each cross-validated, saved as a bundle, reported ->
k-means clusters of the image embeddings, named, scored against the algorithm, mapped.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from curata.cluster import cluster_workspace
from curata.demo.generate import generate_collection
from curata.features.engine import compute, load_matrix, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.paths import cache_dir
from curata.progress import SILENT, Reporter
from curata.storage import is_remote
from curata.tasks.runner import TrainOptions
from curata.tasks.runner import run as run_task
from curata.vectors import l2_rows
from curata.workspace import Workspace

DEMO_EXTRACTORS = ("color_stats", "color_hist", "palette", "effnet_lite0", "minilm", "tfidf")
# Computed beside `palette` (reported apart, under "object_palette"): the object's colours, so that the demo
# workspace's service shows item colours, facet and filter as /v1/colours names them.
OBJECT_PALETTE = "object_palette"
# Trained and cross-validated (5-fold) on the demo's own traits; each writes a bundle and an HTML report.
DEMO_TASKS = (
    TrainOptions(task="collection", target="label", features=["effnet_lite0"], name="demo-algorithm"),
    TrainOptions(task="colour", target="tag:color", features=["color_stats"], name="demo-colour"),
    TrainOptions(task="tags", target="tags", features=["effnet_lite0", "color_hist"], name="demo-tags"),
)


def nearest_neighbour_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy with cosine similarity: how well the space separates the labels."""
    unit = l2_rows(x)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(1)] == labels).mean())


def colour_namer_agreement(workspace: Workspace, feature: str = "palette") -> float | None:
    """Share of tokens whose dominant colour name equals their `color` trait, named by the zero-label namer from
    `feature`: `object_palette` (the object's colours, as /v1/colours names them) or `palette` (whole image)."""
    from curata.tasks.colour import ZeroLabelColourNamer

    items = workspace.items()
    matrix, errors = load_matrix(workspace, make_extractor(feature), items)
    named = ZeroLabelColourNamer(feature=feature).predict(matrix)
    hits = total = 0
    for tags, name, error in zip(items["tags"], named, errors, strict=True):
        truth = next((t.split("=", 1)[1] for t in tags if t.startswith("color=")), None)
        if truth is None or error is not None:
            continue
        hits += name == truth
        total += 1
    return hits / total if total else None


DESCRIBED_TOKENS = 4
DEMO_QUERIES = ("a voronoi piece in the cobalt palette", "a dense cellular automaton",
                "a fractal with radial symmetry", "a sparse random walk with thin strokes")


def describe_tokens(workspace: Workspace, demo: pd.DataFrame, n: int, seed: int = 0) -> dict[str, Any]:
    """Keywords and a sentence for `n` tokens (one per algorithm first), and the keywords' precision@5 /
    recall@5 against held-out tags."""
    from curata.describe import Describer, evaluate_keywords

    picked = (demo.sample(frac=1.0, random_state=seed).groupby("label", sort=True).head(1)["id"].tolist())[:n]
    rows = Describer.open(workspace).describe_items(picked, top_k=6)
    evaluation = evaluate_keywords(workspace, k=5, seed=seed)
    return {"tokens": [{"id": r["id"], "sentence": r.get("sentence", r.get("error")),
                        "keywords": [k["keyword"] for k in r.get("keywords", [])]} for r in rows],
            "keywords_at_5": evaluation["sources"]}


def run_demo(workspace: Workspace, *, per_algorithm: int = 60, size: int = 256, seed: int = 0,
             extractors: tuple[str, ...] = DEMO_EXTRACTORS, reporter: Reporter = SILENT) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    out_dir = workspace.root / "demo-collection"
    if is_remote(out_dir):  # images are drawn as local files: beside the cache, each workspace its own folder
        out_dir = cache_dir() / "demo-collections" / hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]
    total = [0]
    advance = None

    def progress(done: int, n: int) -> None:
        nonlocal advance
        if advance is None:
            advance = reporter.task("drawing the demo collection", n)
        advance(done - total[0])
        total[0] = done

    generated = generate_collection(out_dir, per_algorithm=per_algorithm, size=size, seed=seed,
                                    progress=progress)
    timings["generate"] = time.perf_counter() - started

    t = time.perf_counter()
    report = ingest(out_dir, workspace, IngestOptions(format="nft", source_name="demo", collection="curata demo",
                                                      label_trait="algorithm"), reporter)
    timings["ingest"] = time.perf_counter() - t

    runs = []
    for name in extractors:
        t = time.perf_counter()
        runs.append(compute(make_extractor(name), workspace, reporter=reporter).to_dict())
        timings[f"features:{name}"] = time.perf_counter() - t
    object_run = None
    if "palette" in extractors:
        t = time.perf_counter()
        object_run = compute(make_extractor(OBJECT_PALETTE), workspace, reporter=reporter).to_dict()
        timings[f"features:{OBJECT_PALETTE}"] = time.perf_counter() - t

    items = workspace.items()
    demo = items[items["source"] == "demo"]
    labels = demo["label"].to_numpy()
    checks: dict[str, Any] = {}
    for name in ("color_stats", "effnet_lite0"):
        if name in extractors:
            x, _ = load_matrix(workspace, make_extractor(name), demo)
            checks[f"1nn_algorithm_accuracy[{name}]"] = round(nearest_neighbour_accuracy(x, labels), 3)
    if "palette" in extractors:
        # The `color` trait names the whole piece's palette, so the check reads the whole-image palette; the
        # object namer (what the service shows) is reported beside it: most pieces are full bleed (named whole,
        # the same answer), but on a plain ground it names the strokes, not the ground the trait names.
        agreement = colour_namer_agreement(workspace)
        checks["colour_namer_agrees_with_color_trait"] = None if agreement is None else round(agreement, 3)
        if object_run is not None:
            agreement = colour_namer_agreement(workspace, OBJECT_PALETTE)
            checks[f"colour_namer_agrees_with_color_trait[{OBJECT_PALETTE}]"] = (
                None if agreement is None else round(agreement, 3))
    tasks = []
    folds = max(2, min(5, per_algorithm))  # a tiny demo collection still cross-validates
    for options in DEMO_TASKS:
        if not set(options.features or ()) <= set(extractors):
            continue
        options = replace(options, folds=folds, min_per_class=folds, min_tag_count=folds)
        t = time.perf_counter()
        try:
            result = run_task(workspace, options, save=True, reporter=reporter)
        except ValueError as e:  # a tiny collection may lack enough items per class: say so, go on
            tasks.append({"name": options.name, "task": options.task, "skipped": str(e)})
            continue
        timings[f"train:{options.name}"] = time.perf_counter() - t
        tasks.append({"name": result.name, "task": options.task, "target": result.protocol["target"],
                      "model": result.results[0].name, "items": result.protocol["items_used"],
                      "metrics": {k: round(v["mean"], 3) for k, v in result.results[0].summary.items()},
                      "bundle": str(result.bundle), "report": str(result.report["html"])})
    clusters = None
    if "effnet_lite0" in extractors:
        t = time.perf_counter()
        found = cluster_workspace(workspace, ["effnet_lite0"], "kmeans", len(generated.algorithms), target="label",
                                  name="demo-clusters", reporter=reporter)
        timings["cluster"] = time.perf_counter() - t
        clusters = {"k": found["k"], "scores": {k: round(v, 3) for k, v in found["scores"].items()
                                                if k in ("silhouette", "ari", "nmi")},
                    "names": [c["name"] for c in found["clusters"]], "map": str(found["files"].get("map_html"))}
    descriptions = None
    if "effnet_lite0" in extractors and "palette" in extractors:
        t = time.perf_counter()
        descriptions = describe_tokens(workspace, demo, n=DESCRIBED_TOKENS, seed=seed)
        timings["describe"] = time.perf_counter() - t
    search = None
    if "effnet_lite0" in extractors:
        from curata.search.searcher import demo_search

        t = time.perf_counter()
        found = demo_search(workspace, list(DEMO_QUERIES), k=3, reporter=reporter)
        timings["search"] = time.perf_counter() - t
        search = {"model": found["model"], "val": found["val"], "val_untrained": found["val_untrained"],
                  "queries": [{"query": q["query"], "hits": [{"id": h["id"], "label": h["label"],
                                                              "score": round(h["score"], 3)} for h in q["hits"]]}
                              for q in found["queries"]]}
    timings["total"] = time.perf_counter() - started
    return {
        "workspace": str(workspace.root),
        "collection": str(generated.root),
        "tokens": generated.n_tokens,
        "algorithms": list(generated.algorithms),
        "ingest": report.summary(),
        "features": runs,
        OBJECT_PALETTE: object_run,
        "checks": checks,
        "tasks": tasks,
        "clusters": clusters,
        "descriptions": descriptions,
        "search": search,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
