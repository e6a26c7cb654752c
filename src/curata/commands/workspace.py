"""`curata history`, `rollback`, `compact` and `repair`: the versions and upkeep of a workspace's tables."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import BadInput, JsonOpt, QuietOpt, WorkspaceOpt, app, console, emit_json, handle_errors
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace


def _existing(workspace: object) -> Workspace:
    ws = Workspace(workspace)  # type: ignore[arg-type]
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    return ws


@app.command("history")
@handle_errors
def history_cmd(workspace: WorkspaceOpt = default_workspace(),
                limit: Annotated[int, typer.Option("--limit", "-n", help="Versions to list, newest first.")] = 20,
                as_json: JsonOpt = False) -> None:
    """List the collection's versions (one per ingest, replace, rollback): `curata rollback VERSION` restores one."""
    versions = _existing(workspace).collection.history(limit)
    if as_json:
        emit_json(versions)
        return
    table = Table(title="collection versions (newest first)")
    for column in ("version", "when (UTC)", "items", "what", "added", "updated"):
        table.add_column(column, justify="right" if column in ("version", "items", "added", "updated") else "left")
    for v in versions:
        mark = " (current)" if v["current"] else ""
        table.add_row(f"{v['version']}{mark}", v["at"], str(v["items"]), escape(f"{v['action']} {v['what']}".strip()),
                      "" if v["added"] is None else str(v["added"]), "" if v["updated"] is None else str(v["updated"]))
    console.print(table)


@app.command("rollback")
@handle_errors
def rollback_cmd(version: Annotated[int, typer.Argument(help="The version to restore (see `curata history`).")],
                 workspace: WorkspaceOpt = default_workspace(), as_json: JsonOpt = False) -> None:
    """Make an earlier version of the collection current again, e.g. after a bad ingest. The rollback is
    itself a new version, so it can be undone the same way; features, models and indexes are kept (they are
    keyed by content, and `curata index build` drops items no longer in the collection)."""
    ws = _existing(workspace)
    table = ws.collection  # converts a pre-Lance workspace first (that takes the lock itself)
    with ws.lock():
        ws.apply_edits()  # none journaled meanwhile may be committed beside this
        new = table.rollback(version)
    items = table.count()
    if as_json:
        emit_json({"restored": version, "version": new, "items": items})
        return
    console.print(f"restored version {version} as version {new}: {items} items")


@app.command("compact")
@handle_errors
def compact_cmd(workspace: WorkspaceOpt = default_workspace(),
                keep_days: Annotated[float | None, typer.Option(
                    help="Also delete collection versions older than this many days (they can no longer be "
                         "rolled back to). Default: keep every version.")] = None,
                quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Merge the small fragments many ingests, edits and `features` runs leave into large ones (faster scans
    and lookups; no row is dropped) and delete data files no version refers to. The edit log and the review
    decisions are compacted too."""
    from curata.features.store import TABLE, FeatureStore

    ws = _existing(workspace)
    out = {}
    table = ws.collection
    with ws.lock():
        ws.apply_edits()  # none journaled meanwhile may be committed beside this
        out["collection"] = table.compact(keep_days)
        out.update(_compact_logs(ws))
    folders = [p.parent for p in sorted((ws.root / "features").glob(f"*/{TABLE}"))
               + sorted((ws.root / "cache").glob(f"*/*/{TABLE}")) if (p.parent / "extractor.json").exists()]
    with rich_reporter(not quiet and not as_json) as reporter:
        advance = reporter.task("compacting feature tables", len(folders))
        for folder in folders:
            # No lock: Lance commits a compaction beside a concurrent `features` append (rewrite and append
            # do not conflict), so no row of either is lost.
            out[str(folder.relative_to(ws.root))] = FeatureStore.in_folder(folder).compact()
            advance(1)
    if as_json:
        emit_json(out)
        return
    for name, metrics in out.items():
        console.print(f"{escape(name)}: {metrics.get('fragments_before', 0)} -> {metrics.get('fragments_after', 0)} "
                      "fragments")


def _compact_logs(ws: Workspace) -> dict[str, dict[str, int]]:
    """The edit log and the review decisions: append-only tables of one small fragment per write."""
    from curata import tables
    from curata.curation import LOG
    from curata.review import TABLE as REVIEW

    out = {}
    for name in (LOG, REVIEW):
        path = ws.root / name
        if tables.exists(path):
            out[name] = tables.compact(tables.open_table(path, f"move {name} aside"))
    return out


@app.command("repair")
@handle_errors
def repair_cmd(workspace: WorkspaceOpt = default_workspace(), as_json: JsonOpt = False) -> None:
    """Rewrite a damaged collection from the fragments that can still be read, dropping the others (their
    items are listed as lost: ingest their sources again). Damaged feature tables need no command: the next
    `curata features` run drops what it cannot read and recomputes it."""
    from curata.collection import Collection
    from curata.curation import APPLY_LOCK

    ws = _existing(workspace)
    # Not `ws.collection`: it would first apply the edits waiting in the journal, to a table that may not read.
    # Both locks, so that no edit is applied beside the repair; the journal's edits are applied after it.
    table = Collection(ws.root)
    with ws.lock(), ws.lock(APPLY_LOCK):
        before = table.history(1)
        dropped = table.repair()
    table = ws.collection
    result = {"dropped_items": dropped, "items": table.count(),
              "version_before": before[0]["version"] if before else None, "version": table.version}
    if as_json:
        emit_json(result)
        return
    console.print(f"collection rewritten as version {result['version']}: {result['items']} items kept, "
                  f"{dropped} dropped" + (" (ingest their sources again)" if dropped else ""))
