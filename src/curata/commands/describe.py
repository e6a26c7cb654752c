"""`curata describe` (keywords and a sentence per image) and `curata quality` (suspicious labels,
outliers, near-duplicates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
    BadInput,
    JsonOpt,
    QuietOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    handle_errors,
    print_notes,
)
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace


def _print_descriptions(rows: list[dict]) -> None:
    for row in rows:
        name = row.get("id") or row.get("image")
        if "error" in row:
            # soft_wrap: the path stays on one line whatever the terminal width (scripts grep for it)
            console.print(f"[bold]{escape(str(name))}[/]: [red]{escape(row['error'])}[/]", soft_wrap=True)
            continue
        console.print(f"[bold]{escape(str(name))}[/]: {escape(row['sentence'])}", soft_wrap=True)
        table = Table(show_header=True, box=None, padding=(0, 2))
        for column in ("keyword", "score", "source"):
            table.add_column(column)
        for kw in row["keywords"]:
            table.add_row(escape(kw["keyword"]), f"{kw['score']:.2f}", escape(kw["source"]))
        console.print(table)


@app.command("describe")
@handle_errors
def describe_cmd(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files to describe (need not be in the "
                                                        "workspace).")] = None,
    item: Annotated[list[str] | None, typer.Option("--item", "-i", help="A workspace item id (repeatable).")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    top: Annotated[int, typer.Option("--top", "-k", help="Keywords per image.")] = 10,
    embedding: Annotated[str, typer.Option(help="Feature in which nearest neighbours are found.")] = "effnet_lite0",
    neighbours: Annotated[int, typer.Option(help="Neighbours that vote tags and text terms.")] = 10,
    tag_bundle: Annotated[str | None, typer.Option(help="Tag model in models/ (default: the newest tags "
                                                   "bundle, if any).")] = None,
    collection_bundle: Annotated[str | None, typer.Option(help="Collection/algorithm model in models/ "
                                                          "(default: the newest, if any).")] = None,
    clip: Annotated[Path | None, typer.Option(help="Local CLIP model folder: rerank keywords by image-text "
                                              "similarity.")] = None,
    colours: Annotated[str, typer.Option(help="Colour vocabulary: basic (12 terms) or css.")] = "basic",
    content: Annotated[str, typer.Option(help="Content words from the ImageNet head: auto (on unless items have "
                                         "trait=value tags), on or off.")] = "auto",
    prior: Annotated[str, typer.Option(help="Popularity prior on the content words: divide by the collection's "
                                       "mean prediction (idf-like), subtract it, or none.")] = "divide",
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Instead of describing, measure precision@k, "
                                           "recall@k and hit@k of the keywords against held-out tags (on a "
                                           "collection tagged with COCO categories: of the content words).")] = False,
    at: Annotated[int, typer.Option("--at", help="k of precision@k and recall@k (with --evaluate).")] = 5,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Keywords (ranked, with scores and their source) and one plain sentence for each image, from the
    workspace's tag and collection models, the colour namer, the nearest neighbours' tags and text and,
    for photos and paintings, content words from the ImageNet head of effnet_lite0."""
    from curata.describe import DescribeOptions, Describer, evaluate_keywords
    from curata.describe.content import PRIORS
    from curata.describe.evaluate import evaluate_content_words, is_coco_tagged
    from curata.imageio import load_image

    ws = Workspace(workspace)
    if top < 1:
        raise BadInput("--top must be at least 1")
    if colours not in ("basic", "css"):
        raise BadInput(f"unknown colour vocabulary '{colours}': use basic or css")
    if content not in ("auto", "on", "off"):
        raise BadInput(f"unknown --content '{content}': use auto, on or off")
    if prior not in PRIORS:
        raise BadInput(f"unknown prior '{prior}': use {', '.join(PRIORS)}")
    if evaluate:
        if not ws.exists:
            raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` first)")
        coco = is_coco_tagged([list(t) for t in ws.items()["tags"]])
        result = (evaluate_content_words(ws, k=at, neighbours=neighbours, mode=prior) if coco
                  else evaluate_keywords(ws, embedding=embedding, k=at, neighbours=neighbours))
        if as_json:
            emit_json(result)
            return
        console.print(f"protocol: {escape(str(result['protocol']))}")
        table = Table(title="content words against held-out COCO categories" if coco
                      else "keywords against held-out tags")
        keys = list(next(iter(result["sources"].values())))
        for column in ("source", *keys):
            table.add_column(column)
        for source, scores in result["sources"].items():
            table.add_row(escape(source), *(f"{scores[k]:.3f}" for k in keys))
        console.print(table)
        return
    if not images and not item:
        raise BadInput("give image files and/or --item IDs to describe (or --evaluate)")
    options = DescribeOptions(tag_bundle=tag_bundle, collection_bundle=collection_bundle, embedding=embedding,
                              neighbours=neighbours, colour_vocabulary=colours,
                              clip_path=str(clip) if clip else None,
                              content_words=None if content == "auto" else content == "on", content_prior=prior)
    with rich_reporter(not quiet and not as_json) as reporter:
        describer = Describer.open(ws, options, reporter=reporter)
    rows: list[dict] = describer.describe_items(list(item), top_k=top) if item else []
    for path in images or []:
        try:
            image = load_image(path)
        except (OSError, ValueError) as e:
            rows.append({"image": str(path), "error": getattr(e, "reason", str(e))})
            continue
        rows.append({"image": str(path), **describer.describe_images([image], top_k=top)[0]})
    if as_json:
        emit_json({"sources": describer.sources, "descriptions": rows})
        return
    console.print("sources: " + escape(", ".join(f"{k} ({v})" for k, v in describer.sources.items())))
    _print_descriptions(rows)
    if any("error" in r for r in rows):
        raise typer.Exit(2)


@app.command("quality")
@handle_errors
def quality_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    features: Annotated[str, typer.Option("--features", "-f", help="Comma-separated features for the checking "
                                          "model and the outlier distances.")] = "effnet_lite0",
    target: Annotated[str, typer.Option(help="The label to check: label, tag:<trait> or meta:<field>.")] = "label",
    z: Annotated[float, typer.Option(help="Robust z-score above which an item is an outlier in its class.")] = 3.5,
    duplicates: Annotated[str, typer.Option(help="Near-duplicate method: phash, embedding or none.")] = "phash",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Suspicious labels (confident out-of-fold predictions that disagree), outliers within each class and
    near-duplicates, written as reports/quality-*.json and a self-contained HTML page with thumbnails."""
    from curata.quality import quality_workspace

    if duplicates not in ("phash", "embedding", "none"):
        raise BadInput(f"unknown duplicate method '{duplicates}': use phash, embedding or none")
    with rich_reporter(not quiet and not as_json) as reporter:
        summary = quality_workspace(Workspace(workspace), [f.strip() for f in features.split(",") if f.strip()],
                                    target, z_threshold=z, duplicates=None if duplicates == "none" else duplicates,
                                    reporter=reporter)
    if as_json:
        emit_json(summary)
        return
    labels = summary["labels"]
    console.print(f"{summary['items']} items, checking model out-of-fold accuracy {labels['out_of_fold_accuracy']:.3f}"
                  f": [bold]{len(labels['suspicious'])}[/] suspicious labels, [bold]{len(summary['outliers'])}[/] "
                  "outliers" + (f", {summary['duplicates']['groups']} near-duplicate groups"
                                if summary.get("duplicates") else ""))
    table = Table(title="most suspicious labels")
    for column in ("item", "label", "suggested", "margin"):
        table.add_column(column)
    for row in labels["suspicious"][:15]:
        table.add_row(escape(row["id"]), escape(row["label"]), escape(row["suggested"]), f"{row['margin']:.2f}")
    console.print(table)
    print_notes(labels["notes"])
    console.print(f"report: {escape(summary['files']['html'])}")
