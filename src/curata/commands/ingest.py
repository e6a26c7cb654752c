"""`curata ingest`: image sources (folders, tables, NFT metadata, URL lists) into the workspace.

Also `print_ingest_report`, the on-screen ingest report `curata collect` prints too.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
    EXIT_BAD_INPUT,
    BadInput,
    EngineOpt,
    JsonOpt,
    QuietOpt,
    RayAddressOpt,
    RayCpusOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    handle_errors,
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


def print_ingest_report(report: IngestReport, max_rows: int = 30) -> None:
    summary = report.summary()
    console.print(
        f"[bold]{escape(report.source)}[/] ({report.format}): {summary['ok']} ok, "
        f"[red]{summary['errors']} rejected[/], {summary['with_notes']} with notes; "
        f"{summary['added']} added, {summary['updated']} updated, {summary['unchanged']} unchanged "
        f"in {summary['seconds']:.1f} s"
    )
    if report.engine == "ray":
        console.print(f"  images verified in Ray tasks on {report.nodes} node{'s' if report.nodes != 1 else ''}")
    if summary["kept_edits"]:
        console.print(f"  {summary['kept_edits']} updated item(s) kept their curated values over the source's "
                      "(`curata edits` lists them)")
    if len(report.collections) > 1 or (report.format == "nft" and report.collections):
        console.print("  collections: " + ", ".join(f"{escape(name)} ({count})"
                                                    for name, count in report.collections.items()))
    if report.commits > 1:
        console.print(f"  committed in {report.commits} parts (a part is kept if a later one fails)")
    for note, count in report.note_counts.most_common():
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
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Ingest image sources into the workspace, verifying every image.

    Re-ingesting the same source is idempotent; each rejected item is listed with its reason
    (on screen and in reports/ingest-latest.json) and never stops the others.

    With --engine ray the images are verified and hashed in Ray tasks (on a local runtime, or on every node of
    the cluster at --ray-address, which must see the images at the same paths); the collection is still
    committed once, by this process.
    """
    from curata.ingest.download import DownloadPolicy
    from curata.ingest.pipeline import IngestOptions, default_source_name, ingest
    from curata.ingest.table import ColumnMap

    if engine not in ("local", "ray"):
        raise BadInput(f"unknown --engine '{engine}'; choose local or ray")
    if engine == "local" and (ray_address or ray_cpus):
        raise BadInput("--ray-address and --ray-cpus need --engine ray")
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
    runtime = nullcontext()
    if engine == "ray":  # one Ray runtime for every source, started by the first with images to verify
        from curata.scale import ray_runtime

        runtime = ray_runtime(ray_address, ray_cpus, lazy=True)
    with rich_reporter(not quiet and not as_json) as reporter, runtime:
        for source in sources:
            options = IngestOptions(format=fmt, source_name=source_name, collection=collection, columns=columns,
                                    label_trait=label_trait, max_pixels=max_pixels, download=policy,
                                    engine=engine, ray_address=ray_address, ray_cpus=ray_cpus)
            reports.append(ingest(source, ws, options, reporter))
    if as_json:
        emit_json([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict())
    else:
        for report in reports:
            print_ingest_report(report)
    if strict and any(r.errors for r in reports):
        raise typer.Exit(EXIT_BAD_INPUT)
