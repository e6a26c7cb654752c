"""`curata cluster`, `duplicates`, `themes`: what the collection holds, without labels."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
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
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace


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
