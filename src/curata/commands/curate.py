"""`curata edit`, `edits` and `undo`: a curator's edits from the command line (the same code as the service's
write API, `curata.curation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import BadInput, JsonOpt, WorkspaceOpt, app, console, emit_json, handle_errors
from curata.workspace import Workspace, default_workspace


def _workspace(workspace: Path) -> Workspace:
    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    return ws


def _show(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else "—" if value is None else str(value)


@app.command("edit")
@handle_errors
def edit_cmd(
    ids: Annotated[list[str] | None, typer.Argument(help="Item ids to edit.")] = None,
    where: Annotated[str | None, typer.Option(help="Instead of ids: every active item matching this filter "
                                              "(SQL on the collection's columns, e.g. \"label = 'cat'\").")] = None,
    label: Annotated[str | None, typer.Option(help="Set the label.")] = None,
    no_label: Annotated[bool, typer.Option("--no-label", help="Set no label.")] = False,
    add_tag: Annotated[list[str] | None, typer.Option("--add-tag", help="Add a tag (repeatable).")] = None,
    remove_tag: Annotated[list[str] | None, typer.Option("--remove-tag", help="Remove a tag (repeatable).")] = None,
    exclude: Annotated[bool | None, typer.Option("--exclude/--include", help="Leave the items out of every stage "
                                                 "(train, cluster, search, export), or bring them back.")] = None,
    duplicate_of: Annotated[str | None, typer.Option(help="Mark the items as duplicates of this kept item.")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Clear a duplicate-of mark.")] = False,
    revert: Annotated[list[str] | None, typer.Option("--revert", help="Follow the source's label or tags again "
                                                     "(label, tags; repeatable).")] = None,
    why: Annotated[str, typer.Option(help="Recorded in the edit log.")] = "",
    workspace: WorkspaceOpt = default_workspace(),
    as_json: JsonOpt = False,
) -> None:
    """Edit items: the curated value is kept beside the source's (a re-ingest never undoes it), every change
    is a row of the edit log (`curata edits`), and `curata undo BATCH` puts a batch back. Your name in the log
    comes from $CURATA_EDITOR (else your login)."""
    from curata.curation import Curation, EditError, changes_from, workspace_editor

    ws = _workspace(workspace)
    if bool(ids) == bool(where):
        raise BadInput("give item ids or --where, not both or neither")
    body: dict[str, object] = {}
    if label is not None and no_label:
        raise BadInput("give --label or --no-label, not both")
    if label is not None or no_label:
        body["label"] = label
    if add_tag:
        body["add_tags"] = add_tag
    if remove_tag:
        body["remove_tags"] = remove_tag
    if exclude is not None:
        body["excluded"] = exclude
    if duplicate_of is not None and keep:
        raise BadInput("give --duplicate-of or --keep, not both")
    if duplicate_of is not None or keep:
        body["duplicate_of"] = duplicate_of
    if revert:
        body["revert"] = revert
    try:
        changes = changes_from(body)
        selected = ids or ws.items(["id"], where=where)["id"].tolist()
        if not selected:
            raise BadInput(f"no active item matches {where!r}")
        result = Curation(ws).apply(selected, changes, who=workspace_editor(), why=why)
    except EditError as e:
        raise BadInput(str(e)) from None
    if as_json:
        emit_json(result.to_dict())
        return
    summary = result.to_dict()
    if result.batch is None:
        console.print(f"nothing changed: the {summary['unchanged']} item(s) already have these values")
        return
    console.print(f"batch {escape(result.batch)}: {summary['changed']} item(s) changed, {summary['unchanged']} "
                  f"already so; `curata undo {escape(result.batch)}` puts them back")


@app.command("edits")
@handle_errors
def edits_cmd(
    item: Annotated[str | None, typer.Option(help="Only this item's edits.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's edits.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Edits to list, newest first.")] = 50,
    workspace: WorkspaceOpt = default_workspace(),
    as_json: JsonOpt = False,
) -> None:
    """List the edit log, newest first: who changed which field of which item, from what to what, and why."""
    from curata.curation import Curation

    curation = Curation(_workspace(workspace))
    edits = curation.log(item=item, batch=batch, limit=max(1, limit))
    if as_json:
        emit_json({"edits": edits, "total": curation.count()})
        return
    table = Table(title=f"edits (newest first; {curation.count()} in the log)")
    for column in ("when (UTC)", "who", "item", "field", "before", "after", "why", "batch"):
        table.add_column(column)
    for e in edits:
        table.add_row(e["at"][:19], escape(e["who"]), escape(e["item"]), e["field"], escape(_show(e["before"])),
                      escape(_show(e["after"])), escape(e["why"] or ""), e["batch"])
    console.print(table)


@app.command("undo")
@handle_errors
def undo_cmd(
    batch: Annotated[str | None, typer.Argument(help="The batch to undo (see `curata edits`).")] = None,
    edit: Annotated[list[str] | None, typer.Option("--edit", help="Undo only this edit (repeatable).")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    as_json: JsonOpt = False,
) -> None:
    """Put back what an edit batch (or single edits) changed. The undo is itself a logged batch."""
    from curata.curation import Curation, EditError, workspace_editor

    if bool(batch) == bool(edit):
        raise BadInput("give a batch or --edit ids, not both or neither")
    try:
        result = Curation(_workspace(workspace)).undo(workspace_editor(), batch=batch, edit_ids=edit)
    except EditError as e:
        raise BadInput(str(e)) from None
    if as_json:
        emit_json(result.to_dict())
        return
    console.print(f"undone as batch {escape(result.batch or '-')}: {result.to_dict()['changed']} item(s) put back")


@app.command("review")
@handle_errors
def review_cmd(
    queue: Annotated[str | None, typer.Argument(help="labels, tags, duplicates, outliers or uncertain; none: "
                                                "every queue's counts.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Proposals to list, highest score first.")] = 20,
    accept: Annotated[list[str] | None, typer.Option("--accept", help="Accept this proposal id (repeatable).")
                      ] = None,
    reject: Annotated[list[str] | None, typer.Option("--reject", help="Reject this proposal id (repeatable): "
                                                     "never offered again for that item.")] = None,
    refresh: Annotated[bool, typer.Option(help="Recompute the proposals from their source.")] = False,
    workspace: WorkspaceOpt = default_workspace(),
    as_json: JsonOpt = False,
) -> None:
    """The review queues curata builds from its own analyses (suspicious labels from `curata quality`, tag
    suggestions from the newest tags bundle, near-duplicates, outliers, items to label next): list one, or
    decide proposals by id. The web page's Review screen does the same with the keyboard."""
    from curata.curation import EditError, workspace_editor
    from curata.review import QUEUES, ReviewError, build_queue, decide, queue_counts

    ws = _workspace(workspace)
    if queue is None:
        if accept or reject:
            raise BadInput("name the queue the proposals are in")
        counts = queue_counts(ws)
        if as_json:
            emit_json(counts)
            return
        for name, q in counts.items():
            where = escape(q["source"] or " ".join(q["notes"]))
            console.print(f"{name:<11} {q['left']:>6} left {q['done']:>6} done  {where}")
        return
    if queue not in QUEUES:
        raise BadInput(f"unknown review queue '{queue}' ({', '.join(QUEUES)})")
    decided = []
    try:
        for decision, ids in (("accept", accept or []), ("reject", reject or [])):
            for pid in ids:
                decided.append(decide(ws, pid, decision, workspace_editor(), queue))
    except (ReviewError, EditError) as e:
        raise BadInput(str(e)) from None
    if decided:
        if as_json:
            emit_json({"decided": decided})
            return
        for d in decided:
            p = d["proposal"]
            console.print(f"{d['decision']}ed {escape(p['item'])}: {p['field']} {escape(str(p['value']))}")
        return
    q = build_queue(ws, queue, refresh=refresh)
    if as_json:
        emit_json(q.to_dict(limit))
        return
    for note in q.notes:
        console.print(f"[yellow]note[/] {escape(note)}")
    table = Table(title=f"{queue}: {q.left} left, {q.done} done" + (f" (from {q.source})" if q.source else ""))
    for column in ("proposal", "item", "change", "now", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for p in q.proposals[:limit]:
        table.add_row(p.id, escape(p.item), escape(f"{p.field} → {p.value}"), escape(_show(p.current)),
                      f"{p.score:.3f}")
    console.print(table)
