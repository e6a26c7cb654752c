"""The `curata` command line: thin wrappers over library functions (no logic lives only here).

Exit codes: 0 success, 2 bad input (unreadable source, missing column, bad option; with --strict
also any rejected item), 1 internal error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from curata import __version__
from curata.clibase import (
    EXIT_BAD_INPUT,
    BadInput,
    JsonOpt,
    QuietOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    err,
    handle_errors,
    print_notes,
)
from curata.imageio import DEFAULT_MAX_PIXELS
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace

if TYPE_CHECKING:
    from curata.ingest.report import IngestReport

# The ingest pipeline (httpx, the readers: ~0.2 s) is imported by `ingest` when it runs, not by every command
# (`curata search` must start fast); its formats are spelled out here for the help text
# (tests/test_search_speed_zeroshot.py checks they are curata.ingest.pipeline.FORMATS).
INGEST_FORMATS = ("auto", "folder", "table", "nft", "urls")

# The scale-out options `features` and `predict` share.
EngineOpt = Annotated[str, typer.Option(help="local (threads in this process) or ray (Ray Data actors on a local "
                                        "Ray runtime, or on the cluster at --ray-address).")]
RayAddressOpt = Annotated[str | None, typer.Option(help="Ray cluster to run on with --engine ray (e.g. auto, "
                                                   "ray://head:10001). Default: start a local runtime.")]
RayCpusOpt = Annotated[int | None, typer.Option(help="CPUs of the local Ray runtime (default: all cores this "
                                                "process may use).")]
RayActorsOpt = Annotated[int | None, typer.Option(help="Model replicas with --engine ray (default: one per CPU).")]


def print_ingest_report(report: IngestReport, max_rows: int = 30) -> None:
    summary = report.summary()
    console.print(
        f"[bold]{escape(report.source)}[/] ({report.format}): {summary['ok']} ok, "
        f"[red]{summary['errors']} rejected[/], {summary['with_notes']} with notes; "
        f"{summary['added']} added, {summary['updated']} updated, {summary['unchanged']} unchanged "
        f"in {summary['seconds']:.1f} s"
    )
    if summary["kept_edits"]:
        console.print(f"  {summary['kept_edits']} updated item(s) kept their curated values over the source's "
                      "(`curata edits` lists them)")
    if len(report.collections) > 1 or (report.format == "nft" and report.collections):
        console.print("  collections: " + ", ".join(f"{escape(name)} ({count})"
                                                    for name, count in report.collections.items()))
    notes = Counter(note for e in report.ok for note in e.notes)
    for note, count in notes.most_common():
        console.print(f"  [yellow]note[/] {count} x {escape(note)}")
    for entry in report.skipped[:max_rows]:
        console.print(f"  [yellow]skipped[/] {escape(entry.ref)}: {escape(entry.reason)}")
    if len(report.skipped) > max_rows:
        console.print(f"  ... and {len(report.skipped) - max_rows} more skipped in reports/ingest-latest.json")
    if not report.errors:
        return
    table = Table(title=f"Rejected items ({len(report.errors)})")
    for column in ("item", "code", "reason"):
        table.add_column(column, overflow="fold")
    for entry in report.errors[:max_rows]:
        table.add_row(escape(entry.ref), f"[red]{entry.code}[/]", escape(entry.reason))
    console.print(table)
    if len(report.errors) > max_rows:
        console.print(f"... and {len(report.errors) - max_rows} more in reports/ingest-latest.json")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"curata {__version__}")
        raise typer.Exit()


@app.command("ingest")
@handle_errors
def ingest_cmd(
    sources: Annotated[list[Path], typer.Argument(help="Folders, tables (CSV/TSV/Parquet/JSONL), NFT metadata "
                                                      "folders or _metadata.json, or text files of URLs.")],
    workspace: WorkspaceOpt = default_workspace(),
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"Source format: {', '.join(INGEST_FORMATS)}.")] = "auto",
    image_col: Annotated[str | None, typer.Option(help="Table column with image paths (relative to the "
                                                       "table) or URLs. Default: image/path/file/url.")] = None,
    text_col: Annotated[str | None, typer.Option(help="Table column with the item text.")] = None,
    label_col: Annotated[str | None, typer.Option(help="Table column with the single label. Default: label/"
                                                      "category/class.")] = None,
    tags_col: Annotated[str | None, typer.Option(help="Table column with multi-label tags. Default: tags/"
                                                     "traits/keywords.")] = None,
    collection_col: Annotated[str | None, typer.Option(help="Table column naming each row's collection (a table "
                                                           "of several collections). Default: collection.")
                              ] = None,
    tags_sep: Annotated[str, typer.Option(help="Separator inside the tags column.")] = ";",
    captions_col: Annotated[str | None, typer.Option(help="Table column with several captions.")] = None,
    captions_sep: Annotated[str, typer.Option(help="Separator inside the captions column.")] = "|",
    id_col: Annotated[str | None, typer.Option(help="Table column with a stable item id. Default: id, "
                                                    "else the image path.")] = None,
    split_col: Annotated[str | None, typer.Option(help="Table column with a train/val/test split.")] = None,
    label_trait: Annotated[str | None, typer.Option(help="NFT metadata: use this trait as the label.")] = None,
    source_name: Annotated[str | None, typer.Option(help="Name prefixed to item ids. Default: the "
                                                         "source's folder name.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection name for these items.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels than this "
                                                 "(decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    ipfs_gateway: Annotated[list[str] | None, typer.Option(help="IPFS gateway URL prefix, repeatable; tried in "
                                                                "order.")] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent downloads for URL sources.")] = 8,
    strict: Annotated[bool, typer.Option(help="Exit with code 2 when any item is rejected.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Ingest image sources into the workspace, verifying every image.

    Re-ingesting the same source is idempotent; each rejected item is listed with its reason
    (on screen and in reports/ingest-latest.json) and never stops the others.
    """
    from curata.ingest.download import DownloadPolicy
    from curata.ingest.pipeline import IngestOptions, default_source_name, ingest
    from curata.ingest.table import ColumnMap

    # Item ids are "<source name>/<local id>": two sources of one run under the same name (one
    # --source-name for all, or two folders both called "images") would share ids, and the later
    # source would silently overwrite the earlier one's items.
    if source_name and len(sources) > 1:
        raise BadInput("--source-name names one source; ingest several sources without it, or one at a time")
    names = Counter(default_source_name(s) for s in sources)
    clashing = sorted(name for name, count in names.items() if count > 1)
    if clashing:
        raise BadInput(f"several sources are named '{clashing[0]}' and their item ids would collide; "
                       "ingest them one at a time, each with its own --source-name")
    policy = DownloadPolicy(concurrency=concurrency)
    if ipfs_gateway:
        policy = DownloadPolicy(concurrency=concurrency, ipfs_gateways=tuple(ipfs_gateway))
    columns = ColumnMap(image=image_col, text=text_col, label=label_col, tags=tags_col, tags_sep=tags_sep,
                        captions=captions_col, captions_sep=captions_sep, id=id_col, split=split_col,
                        collection=collection_col)
    ws = Workspace(workspace)
    reports = []
    with rich_reporter(not quiet and not as_json) as reporter:
        for source in sources:
            options = IngestOptions(format=fmt, source_name=source_name, collection=collection, columns=columns,
                                    label_trait=label_trait, max_pixels=max_pixels, download=policy)
            reports.append(ingest(source, ws, options, reporter))
    if as_json:
        emit_json([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict())
    else:
        for report in reports:
            print_ingest_report(report)
    if strict and any(r.errors for r in reports):
        raise typer.Exit(EXIT_BAD_INPUT)


DEFAULT_EXTRACTORS = "color_stats,color_hist,palette,effnet_lite0,minilm,tfidf"
TEXT_EXTRACTORS = ("minilm", "tfidf")  # left out of the defaults when no item has a text


@app.command("features")
@handle_errors
def features_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    extractors: Annotated[str | None, typer.Option("--extractors", "-e", help="Comma-separated extractor names "
                                                   f"(see --list). Default: {DEFAULT_EXTRACTORS} (without the "
                                                   "text ones when no item has a text).")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per model batch (memory is bounded by it).")] = 32,
    refit: Annotated[bool, typer.Option(help="Refit collection-dependent extractors (tf-idf, visual words, "
                                              "Word2Vec) and recompute them.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the available extractors and exit.")] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_actors: RayActorsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute features for every item that does not have them yet (cached by content hash).

    With --engine ray the same extractors run in a pool of Ray actors; collection-dependent ones are
    fitted once here first, and the results land in the same feature store.
    """
    from contextlib import nullcontext

    from curata.features.engine import available_extractors, compute, make_extractor

    if engine not in ("local", "ray"):
        raise BadInput(f"unknown --engine '{engine}'; choose local or ray")
    if list_:
        names = available_extractors()
        emit_json(names) if as_json else console.print("\n".join(names))
        return
    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    skipped_text = []
    if extractors is None:
        extractors = DEFAULT_EXTRACTORS
        if not ws.has_text():
            skipped_text = list(TEXT_EXTRACTORS)
    names = [n.strip() for n in extractors.split(",") if n.strip() and n.strip() not in skipped_text]
    built = [make_extractor(n) for n in names]  # fail on a typo before any work
    if batch_size < 1:
        raise BadInput("--batch-size must be at least 1")
    runs = []
    if engine == "ray":
        from curata.scale import compute_ray, ray_runtime

        # One runtime for every extractor, started only once one of them has work to do.
        runtime = ray_runtime(ray_address, ray_cpus, lazy=True)
    else:
        runtime = nullcontext()
    with rich_reporter(not quiet and not as_json) as reporter, runtime:
        for extractor in built:
            if engine == "ray":
                runs.append(compute_ray(extractor, ws, batch_size=batch_size, refit=refit, address=ray_address,
                                        num_cpus=ray_cpus, actors=ray_actors, reporter=reporter))
            else:
                runs.append(compute(extractor, ws, batch_size=batch_size, refit=refit, reporter=reporter))
    if as_json:
        emit_json([r.to_dict() for r in runs])
        return
    table = Table(title=f"features in {escape(str(ws.root))}")
    for column in ("extractor", "items", "cached", "computed", "errors", "seconds", "items/s"):
        table.add_column(column, justify="left" if column == "extractor" else "right")
    for r in runs:
        table.add_row(escape(r.extractor), str(r.items), str(r.cached), str(r.computed),
                      f"[red]{r.errors}[/]" if r.errors else "0", f"{r.seconds:.1f}",
                      f"{r.per_second:.0f}" if r.computed else "-")
    console.print(table)
    print_notes([note for r in runs for note in r.notes]
                + ([f"no item has a text: {', '.join(skipped_text)} not computed (name them with -e to force)"]
                   if skipped_text else []))


TaskArg = Annotated[str, typer.Argument(help="Task: colour, tags, collection (alias algorithm) or category.")]
FeaturesOpt = Annotated[str | None, typer.Option("--features", help="Comma-separated feature names (default: "
                                                 "the task's). They must have been computed (`curata features`).")]
TargetOpt = Annotated[str | None, typer.Option(help="What to predict: label, tag:<trait>, meta:<field>, or for the "
                                               "tags task tags / tags:<trait>. Default: the task's.")]


def _train_options(task: str, features: str | None, target: str | None, model: str | None, compare: bool,
                   folds: int, seed: int, use_split: bool, group: str | None, min_per_class: int | None,
                   source: str | None, name: str | None) -> Any:
    from curata.tasks.runner import TrainOptions

    if folds < 2 and not use_split:
        raise BadInput("--folds must be at least 2")
    return TrainOptions(task=task, features=[f.strip() for f in features.split(",")] if features else None,
                        target=target, model=model, compare=compare, folds=folds, seed=seed, use_split=use_split,
                        group=group, min_per_class=min_per_class, source=source, name=name)


def _print_results(result: Any) -> None:
    protocol = result.protocol
    console.print(f"[bold]{escape(protocol['task'])}[/] → {escape(protocol['target'])}: "
                  f"{protocol['items_used']} items, {escape(protocol['split'])}, seed {protocol['seed']}")
    for reason, count in result.skipped.items():
        console.print(f"  [yellow]skipped[/] {count} items: {escape(reason)}")
    if rare := protocol.get("rare_tags"):
        console.print(f"  [yellow]left out[/] {rare['dropped']} tags seen on fewer than {rare['min_count']} items "
                      f"(e.g. {escape(', '.join(rare['examples'][:5]))}): too rare to learn or to score")
    if result.training_data.get("mode") == "sample":
        d = result.training_data
        console.print(f"  [yellow]sampled[/] {d['rows_used']} of {d['rows_total']} items (stratified, seeded) to fit "
                      f"the memory budget of {d['budget_bytes'] / 2**30:.2f} GiB; raise CURATA_MEMORY_BUDGET to train "
                      "on all")
    rows = result.table()
    metrics = [k for k in rows[0] if k not in ("model", "fit_seconds") and not k.endswith("_std")]
    table = Table(title="cross-validation (mean ± std over folds)")
    table.add_column("model")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("fit s", justify="right")
    for row in rows:
        table.add_row(escape(row["model"]), *[f"{row[m]:.3f} ± {row[m + '_std']:.3f}" for m in metrics],
                      f"{row['fit_seconds']:.1f}")
    console.print(table)
    if result.bundle:
        console.print(f"bundle: {escape(str(result.bundle))}")
    console.print(f"report: {escape(str(result.report['html']))}")


@app.command("train")
@handle_errors
def train_cmd(
    task: TaskArg,
    workspace: WorkspaceOpt = default_workspace(),
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    model: Annotated[str | None, typer.Option(help="Candidate model to train (default: the task's).")] = None,
    compare: Annotated[bool, typer.Option(help="Cross-validate every candidate and keep the best.")] = False,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and the models.")] = 0,
    use_split: Annotated[bool, typer.Option("--use-split", help="Evaluate on the items' split column "
                                            "(train vs the rest) instead of k-fold.")] = False,
    group: Annotated[str | None, typer.Option(help="Target spec whose value groups items, so a group never "
                                              "straddles train and test (e.g. meta:family).")] = None,
    min_per_class: Annotated[int | None, typer.Option(help="Drop classes with fewer items (reported).")] = None,
    source: Annotated[str | None, typer.Option(help="Only items of this source or collection.")] = None,
    name: Annotated[str | None, typer.Option(help="Bundle name (default: <task>-<target>).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Cross-validate a task, fit it on every labelled item and save the bundle in models/ with its card and
    an HTML report in reports/."""
    from curata.tasks.runner import run

    options = _train_options(task, features, target, model, compare, folds, seed, use_split, group, min_per_class,
                             source, name)
    with rich_reporter(not quiet and not as_json) as reporter:
        result = run(Workspace(workspace), options, save=True, reporter=reporter)
    if as_json:
        emit_json({"name": result.name, "bundle": result.bundle, "report": result.report,
                   "protocol": result.protocol, "table": result.table()})
    else:
        _print_results(result)
        from curata.tasks.runner import curation_line

        if line := curation_line(result.curation):
            console.print(escape(line))


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    task: TaskArg,
    workspace: WorkspaceOpt = default_workspace(),
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    model: Annotated[str | None, typer.Option(help="Evaluate only this candidate (default: all).")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and the models.")] = 0,
    use_split: Annotated[bool, typer.Option("--use-split", help="Use the items' split column.")] = False,
    group: Annotated[str | None, typer.Option(help="Target spec whose value groups items.")] = None,
    min_per_class: Annotated[int | None, typer.Option(help="Drop classes with fewer items.")] = None,
    source: Annotated[str | None, typer.Option(help="Only items of this source or collection.")] = None,
    name: Annotated[str | None, typer.Option(help="Report name (default: <task>-<target>).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare the task's candidate models under one cross-validation protocol; writes report.json and a
    self-contained report.html (confusion matrix, per-class scores, feature importance, 2-D map)."""
    from curata.tasks.runner import run

    options = _train_options(task, features, target, model, model is None, folds, seed, use_split, group,
                             min_per_class, source, name)
    with rich_reporter(not quiet and not as_json) as reporter:
        result = run(Workspace(workspace), options, save=False, reporter=reporter)
    if as_json:
        emit_json({"name": result.name, "report": result.report, "protocol": result.protocol,
                   "table": result.table()})
    else:
        _print_results(result)


@app.command("predict")
@handle_errors
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (models/<name>) or a bundle name in the "
                                           "workspace.")],
    images: Annotated[list[Path] | None, typer.Argument(help="Image files to predict. With --engine ray also "
                                                        "folders of images, a Parquet file (or folder of "
                                                        "Parquet shards) with an image column, or a text "
                                                        "file listing one image path per line.")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    text: Annotated[str | None, typer.Option(help="Text for every image, for bundles with text features.")] = None,
    all_items: Annotated[bool, typer.Option("--all", help="Predict every item of the workspace (cached "
                                            "features; with --engine ray, computed from the items' images "
                                            "and texts).")] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_actors: RayActorsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per model batch with --engine ray.")] = 32,
    output: Annotated[Path | None, typer.Option(help="With --engine ray: a new folder to write the predictions "
                                                "to as Parquet parts (id, image, prediction, tags, scores, "
                                                "error) instead of printing them.")] = None,
    top: Annotated[int, typer.Option(help="Scores of this many classes per item (0: every class).")] = 3,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with a trained bundle, for image files or for every workspace item. An open-set model's rows
    (with --json) also say whether the answer was accepted, and its probability and novelty distance against
    the thresholds of the class it chose."""
    from curata.tasks.runner import predict_images, predict_workspace

    if engine not in ("local", "ray"):
        raise BadInput(f"unknown --engine '{engine}'; choose local or ray")
    if output is not None and engine != "ray":
        raise BadInput("--output needs --engine ray")
    ws = Workspace(workspace)
    bundle_dir = bundle if bundle.is_dir() else ws.root / "models" / str(bundle)
    if not bundle_dir.is_dir():
        raise BadInput(f"no bundle at {bundle} (nor {bundle_dir})")
    if not images and not all_items:
        raise BadInput("give image files, or --all to predict every workspace item")
    if engine == "ray":
        from curata.scale import predict_ray

        if batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        if not images and not ws.exists:
            raise BadInput(f"no collection in workspace {ws.root}")
        source = (images[0] if len(images) == 1 else list(images)) if images else ws
        with rich_reporter(not quiet and not as_json) as reporter:
            result = predict_ray(bundle_dir, source, texts=text, output=output, batch_size=batch_size,
                                 address=ray_address, num_cpus=ray_cpus, actors=ray_actors, reporter=reporter)
        if output is not None:
            if as_json:
                emit_json(result.to_dict())
            else:
                console.print(f"{result.items} items, {result.predicted} predicted, {result.errors} errors in "
                              f"{result.seconds:.1f} s; predictions in {escape(str(output))}")
            return
        rows = result.rows
    elif images:
        rows = predict_images(bundle_dir, list(images), [text or ""] * len(images), top=top)
    else:
        rows = predict_workspace(bundle_dir, ws, top=top)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"predictions of {escape(bundle_dir.name)}")
    table.add_column("item")
    table.add_column("prediction")
    table.add_column("scores")
    for row in rows:
        what = row.get("prediction") or ", ".join(row.get("tags", [])) or ""
        scores = ", ".join(f"{k} {v:.2f}" for k, v in row.get("scores", {}).items())
        table.add_row(escape(str(row.get("id") or row.get("image"))),
                      f"[red]{escape(row['error'])}[/]" if "error" in row else escape(what), escape(scores))
    console.print(table)


@app.command("cluster")
@handle_errors
def cluster_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    features: Annotated[str | None, typer.Option("--features", "-f", help="Comma-separated features fused side by "
                                                 "side (each L2-normalised). Default: minilm, or effnet_lite0 "
                                                 "when no item has a text.")] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="kmeans, gmm, agglomerative, spectral, hdbscan; "
                                        "or lda / nmf topic models of the text.")] = "kmeans",
    k: Annotated[int | None, typer.Option("-k", help="Number of clusters (default: chosen by silhouette, or BIC "
                                          "for gmm, over --k-min..--k-max).")] = None,
    k_min: Annotated[int, typer.Option(help="Smallest k tried when choosing k.")] = 2,
    k_max: Annotated[int, typer.Option(help="Largest k tried when choosing k.")] = 12,
    reduce: Annotated[str, typer.Option(help="Reduction before clustering: none, pca, pca-whiten, svd, tsne, "
                                        "umap.")] = "none",
    components: Annotated[int | None, typer.Option(help="Dimensions kept by the reduction.")] = None,
    normalise: Annotated[str, typer.Option(help="Row normalisation before clustering: l2, center, sqrt (signed "
                                           "square root then l2: best for CNN features), standard, none.")] = "l2",
    target: Annotated[str | None, typer.Option(help="Score ARI/NMI against this target spec (default: the label "
                                               "column when present).")] = "auto",
    name: Annotated[str | None, typer.Option(help="Run name (files in clusters/).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Cluster the collection without labels, name the clusters, score them (silhouette; ARI/NMI against a
    label when there is one) and draw a 2-D map (PNG and an interactive HTML page with thumbnails)."""
    from curata.cluster import cluster_workspace

    ws = Workspace(workspace)
    if features is None:
        features = "minilm" if not ws.exists or ws.has_text() else "effnet_lite0"
        if features == "effnet_lite0" and not (as_json or quiet):
            err.print("no item has a text: clustering the images (effnet_lite0); -f chooses other features",
                      soft_wrap=True)
    with rich_reporter(not quiet and not as_json) as reporter:
        summary = cluster_workspace(ws, [f.strip() for f in features.split(",") if f.strip()],
                                    method, k, k_range=(k_min, k_max), reduction=reduce, n_components=components,
                                    normalisation=normalise,
                                    target=target, name=name, seed=seed, reporter=reporter)
    if as_json:
        emit_json(summary)
        return
    scores = ", ".join(f"{key} {value:.3f}" for key, value in summary["scores"].items()
                       if isinstance(value, int | float))
    console.print(f"[bold]{summary['k']} clusters[/] ({escape(method)}): {escape(scores)}")
    table = Table(title="clusters")
    for column in ("cluster", "items", "name"):
        table.add_column(column)
    for c in summary["clusters"]:
        table.add_row(str(c.get("cluster", "")), str(c.get("size", "")), escape(str(c.get("name", ""))))
    console.print(table)
    for key, path in summary.get("files", {}).items():
        console.print(f"{key}: {escape(str(path))}")
    print_notes(summary.get("notes", []))


@app.command("duplicates")
@handle_errors
def duplicates_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    method: Annotated[str, typer.Option("--method", "-m", help="phash (perceptual hash) or embedding (cosine "
                                        "similarity of a cached feature).")] = "phash",
    feature: Annotated[str, typer.Option(help="Feature for --method embedding.")] = "effnet_lite0",
    threshold: Annotated[float | None, typer.Option(help="Max differing bits of 64 (phash, default 8) or min "
                                                    "cosine similarity (embedding, default 0.95).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find groups of near-duplicate items without an n² comparison (hash buckets / blockwise search)."""
    from curata.cluster import duplicates_workspace

    with rich_reporter(not quiet and not as_json) as reporter:
        groups = duplicates_workspace(Workspace(workspace), method, feature=feature, threshold=threshold,
                                      reporter=reporter)
    payload = groups.to_dict()
    if as_json:
        emit_json(payload)
        return
    console.print(f"[bold]{payload['groups']} groups[/] of near-duplicates ({escape(method)}, threshold "
                  f"{payload['threshold']}): {payload['redundant_items']} redundant of {payload['items']} items")
    for group in payload["members"][:20]:
        console.print(f"  {escape(', '.join(map(str, group['ids'])))} (spread {group['spread']})")
    if payload["groups"] > 20:
        console.print(f"... and {payload['groups'] - 20} more (--json for all)")


@app.command("themes")
@handle_errors
def themes_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    embedder: Annotated[str, typer.Option(help="minilm (offline sentence embeddings) or word2vec (trained on "
                                          "the collection).")] = "minilm",
    n_themes: Annotated[int | None, typer.Option(help="Number of themes (default: chosen).")] = None,
    min_count: Annotated[int, typer.Option(help="Ignore tags seen fewer times.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Group the tag vocabulary into named themes and map every item to its themes."""
    from curata.cluster import themes_workspace

    found = themes_workspace(Workspace(workspace), embedder, n_themes, min_count=min_count)
    payload = found.to_dict()
    if as_json:
        emit_json(payload)
        return
    for theme in payload.get("themes", []):
        tags = theme.get("tags", [])
        console.print(f"[bold]{escape(str(theme.get('name', '')))}[/]: {escape(', '.join(map(str, tags[:12])))}"
                      + (" ..." if len(tags) > 12 else ""))


@app.command("demo")
@handle_errors
def demo_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    per_algorithm: Annotated[int, typer.Option(help="Tokens drawn per generative algorithm.")] = 60,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Collection seed (same seed, same images).")] = 0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw the built-in generative-art collection and run every stage on it, ending with a summary."""
    from curata.demo.run import run_demo

    if per_algorithm < 2:
        raise BadInput("--per-algorithm must be at least 2")
    with rich_reporter(not quiet and not as_json) as reporter:
        summary = run_demo(Workspace(workspace), per_algorithm=per_algorithm, size=size, seed=seed,
                           reporter=reporter)
    if as_json:
        emit_json(summary)
        return
    ingest_summary = summary["ingest"]
    console.rule("[bold]curata demo")
    console.print(f"{summary['tokens']} tokens from {len(summary['algorithms'])} algorithms "
                  f"({', '.join(summary['algorithms'])}) drawn into {escape(str(summary['collection']))}")
    console.print(f"ingest: {ingest_summary['ok']} ok, {ingest_summary['errors']} rejected")
    table = Table(title="features")
    for column in ("extractor", "computed", "cached", "errors", "items/s"):
        table.add_column(column)
    for run in summary["features"]:
        table.add_row(escape(run["extractor"]), str(run["computed"]), str(run["cached"]), str(run["errors"]),
                      f"{run['items_per_second']:.0f}")
    console.print(table)
    for name, value in summary["checks"].items():
        console.print(f"check {escape(name)}: [bold]{value}[/]")
    for task in summary["tasks"]:
        if "skipped" in task:
            console.print(f"task {escape(task['name'])}: [yellow]skipped[/] ({escape(task['skipped'])})")
            continue
        metrics = task["metrics"]
        shown = {k: metrics[k] for k in ("accuracy", "macro_f1", "micro_f1", "mean_average_precision") if k in metrics}
        console.print(f"task {escape(task['name'])} ({escape(task['model'])}, {task['items']} items, 5-fold): "
                      + ", ".join(f"{k} [bold]{v:.3f}[/]" for k, v in shown.items()))
        console.print(f"  report {escape(task['report'])}")
    if summary.get("clusters"):
        found = summary["clusters"]
        scores = ", ".join(f"{k} {v:.3f}" for k, v in found["scores"].items())
        console.print(f"clusters: k={found['k']} ({scores}): " + escape("; ".join(found["names"])))
        console.print(f"  map {escape(found['map'])}")
    if summary.get("descriptions"):
        described = summary["descriptions"]
        for token in described["tokens"]:
            console.print(f"describe {escape(token['id'])}: {escape(str(token['sentence']))}")
        scores = ", ".join(f"{source} P@5 {s['precision@5']:.2f} R@5 {s['recall@5']:.2f}"
                           for source, s in described["keywords_at_5"].items())
        console.print(f"  keywords vs held-out tags: {escape(scores)}")
    if summary.get("search"):
        found = summary["search"]
        recall = ", ".join(f"R@{k} {found['val'].get(f't2i_r{k}', 0):.2f} (untrained "
                           f"{found['val_untrained'].get(f't2i_r{k}', 0):.2f})" for k in (1, 5, 10))
        console.print(f"search: joint space '{escape(found['model'])}', text->image on held-out tokens: {recall}")
        for query in found["queries"]:
            hits = "; ".join(f"{h['id']} ({h['label']}, {h['score']:.2f})" for h in query["hits"])
            console.print(f"  \"{escape(query['query'])}\" -> {escape(hits)}")
    console.print(f"total {summary['seconds']['total']:.1f} s; workspace {escape(str(summary['workspace']))}")


@app.command("info")
@handle_errors
def info_cmd(workspace: WorkspaceOpt = default_workspace(), as_json: JsonOpt = False) -> None:
    """Summarise the workspace: items per source, collection and label, and the collection's recent versions."""
    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    items = ws.items(["source", "collection", "label", "text", "tags"])
    versions = ws.collection.history(5)
    summary = {
        "workspace": str(ws.root),
        "items": len(items),
        "sources": items["source"].value_counts().to_dict(),
        "collections": items["collection"].value_counts().to_dict(),
        "labels": items["label"].value_counts().head(50).to_dict(),
        "with_text": int((items["text"].str.len() > 0).sum()),
        "with_tags": int(items["tags"].map(len).gt(0).sum()),
        "versions": versions,
    }
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"workspace {escape(str(ws.root))}: {len(items)} items")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("sources", "collections", "labels"):
        for name, count in summary[key].items():
            table.add_row(escape(f"{key[:-1]}: {name}"), str(count))
    table.add_row("items with text", str(summary["with_text"]))
    table.add_row("items with tags", str(summary["with_tags"]))
    console.print(table)
    for v in versions:
        console.print(f"version {v['version']}{' (current)' if v['current'] else ''}  {v['at']}  {v['items']} items  "
                      f"{escape(v['action'] + ' ' + v['what'])}", soft_wrap=True)
    if versions:
        console.print("`curata history` lists more; `curata rollback VERSION` restores one")


import curata.commands  # noqa: E402, F401 (registers each feature area's commands on the same app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
