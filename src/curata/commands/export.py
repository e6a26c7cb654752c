"""`curata export`: the collection, curated, as CSV, JSON Lines, Parquet or a folder of ERC-721 metadata files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from curata.clibase import BadInput, JsonOpt, QuietOpt, WorkspaceOpt, app, console, emit_json, handle_errors
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"
    erc721 = "erc721"


@app.command("export")
@handle_errors
def export_cmd(
    path: Annotated[Path, typer.Argument(
        help="Where to write: a .csv, .jsonl or .parquet file, or a folder (to be created) for --format erc721. "
             "Its parent folder must exist.", show_default=False)],
    fmt: Annotated[Format | None, typer.Option(
        "--format", "-f", help="Output format. Default: from PATH's suffix (.csv, .jsonl, .parquet); erc721 "
                               "(one JSON metadata file per item) only when asked for.", show_default=False)] = None,
    source_values: Annotated[bool, typer.Option(
        "--source-values", help="Export the source's label and tags instead of the curated ones.")] = False,
    include_excluded: Annotated[bool, typer.Option(
        "--include-excluded", help="Also export items a curator excluded or marked as duplicates (the excluded "
                                   "and duplicate_of columns say which).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace PATH if it exists (the new export is renamed in only once complete).")] = False,
    columns: Annotated[str | None, typer.Option(
        "--columns", help="Comma-separated columns for csv / jsonl / parquet, in order. Default: id, collection, "
                          "label, tags, text, image, split, source_label, source_tags, curated, excluded, "
                          "duplicate_of.", show_default=False)] = None,
    workspace: WorkspaceOpt = default_workspace(),
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export the collection with its curation: label and tags as curated (or the source's with
    --source-values), plus source_label, source_tags, curated, excluded and duplicate_of so a reader sees what
    a curator changed. Excluded and duplicate items are left out unless --include-excluded.

    CSV joins list cells (tags) with `|` and quotes cells a spreadsheet would run as formulas. erc721 writes
    one `<id>.json` per item (name, description, image, attributes: the stored attributes merged with the
    tags; curated tags replace the source's values of their traits). The export is written under a hidden
    name beside PATH and renamed into place when complete, so an interrupted export leaves no PATH.

    Examples: `curata export items.csv`, `curata export tokens --format erc721`,
    `curata export all.parquet --include-excluded --source-values`.
    """
    from curata.export import export_collection, infer_format

    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    chosen = fmt.value if fmt is not None else infer_format(path)
    if chosen is None:
        raise BadInput(f"cannot tell the export format from '{path.name}': pass --format "
                       "(csv, jsonl, parquet, erc721) or use a .csv, .jsonl or .parquet name")
    names = [c.strip() for c in columns.split(",") if c.strip()] if columns is not None else None
    with rich_reporter(not quiet and not as_json) as reporter:
        result = export_collection(ws, path, chosen, values="source" if source_values else "curated",
                                   include_excluded=include_excluded, columns=names, overwrite=overwrite,
                                   reporter=reporter)
    if as_json:
        emit_json(result)
        return
    what = "files" if chosen == "erc721" else "items"
    console.print(f"exported {result['items']} {what} ({result['values']} values, {result['curated_items']} "
                  f"curated) to {escape(str(path))} as {chosen}", soft_wrap=True)
    if result["left_out"]:
        console.print(f"{result['left_out']} excluded or duplicate items left out (--include-excluded exports "
                      "them too)")
