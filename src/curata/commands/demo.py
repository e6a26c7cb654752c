"""`curata demo` (the built-in collection through every stage) and `curata info` (what a workspace holds)."""

from __future__ import annotations

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
)
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace


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
    """Summarise the workspace: items per source, collection and label, how many a curator left out (excluded
    or marked as duplicates), and the collection's recent versions."""
    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    # Every item, the ones a curator excluded or marked as duplicates too (the stages leave those out:
    # counted apart as left_out); on a table written before curation both columns read as None.
    items = ws.items(["source", "collection", "label", "text", "tags", "excluded", "duplicate_of"],
                     include_excluded=True)
    left_out = items["excluded"].eq(True) | items["duplicate_of"].notna()
    versions = ws.collection.history(5)
    summary = {
        "workspace": str(ws.root),
        "items": len(items),
        "left_out": int(left_out.sum()),
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
    table.add_row("items left out (excluded or duplicates)", str(summary["left_out"]))
    console.print(table)
    for v in versions:
        console.print(f"version {v['version']}{' (current)' if v['current'] else ''}  {v['at']}  {v['items']} items  "
                      f"{escape(v['action'] + ' ' + v['what'])}", soft_wrap=True)
    if versions:
        console.print("`curata history` lists more; `curata rollback VERSION` restores one")
