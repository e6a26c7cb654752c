"""Curation over HTTP: edit one item or many (ids, a filter, a search result, a cluster), read the edit log,
undo a batch or edits. Every write goes through `curata.curation.Curation`, the same code as the CLI's, and
needs the `write` scope (deps.require_write); a stale version (If-Match / `versions`) gets 409 and nothing is
written."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query

from curata.curation import Change, Curation, EditConflict, EditError, EditJob, EditResult, changes_from
from curata.service.deps import get_state, require_api_key, require_write
from curata.service.errors import ApiError
from curata.service.keys import ApiKey
from curata.service.routers.items import item_filters
from curata.service.schemas import (
    EditByFilter,
    EditByIds,
    EditBySearch,
    EditChanges,
    EditLog,
    EditRequest,
    EditResponse,
    UndoBatch,
    UndoEdits,
    UndoRequest,
)
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/edits", tags=["curation"], dependencies=[Depends(require_api_key)])


def _changes(body: EditChanges) -> list[Change]:
    try:
        return changes_from(body.given())
    except EditError as e:
        raise ApiError(422, "bad_edit", str(e), "changes") from None


def _selected(body: EditRequest, state: ServiceState) -> list[str]:
    """The ids the request selects, at most `max_bulk_edit` of them."""
    limit = state.settings.max_bulk_edit
    if isinstance(body, EditByIds):
        ids = list(dict.fromkeys(body.ids))
    elif isinstance(body, EditByFilter):
        where = item_filters(**body.where.model_dump())
        if where is None:
            raise ApiError(422, "bad_edit", "a filter edit needs at least one filter (label, collection, tag, q)",
                           "where")
        ids = state.items().ids(where, limit + 1)
    elif isinstance(body, EditBySearch):
        searcher = state.searcher(body.search.model)
        try:
            ids = [str(hit["id"]) for hit in searcher.by_text(body.search.text, k=body.search.k)]
        except (KeyError, ValueError) as e:
            raise ApiError(422, "bad_search", str(e).strip("'\"") or "the search cannot be run", "search") from None
    else:
        run = body.cluster.run or state.latest_run()
        if run is None:
            raise ApiError(409, "no_cluster_run", "a cluster edit needs a cluster run; run `curata cluster` first",
                           "cluster")
        state.cluster_run(run)  # 404 for an unknown run
        assigned = state.assignments(run)
        ids = assigned.loc[assigned["cluster"] == body.cluster.cluster, "id"].astype(str).tolist()
    if len(ids) > limit:
        raise ApiError(413, "too_many_items", f"the edit selects more than {limit:,} items; narrow the selection",
                       None)
    if not ids:
        raise ApiError(404, "nothing_selected", "the selection matches no item", None)
    return ids


def _expected(body: EditRequest, ids: list[str], if_match: str | None) -> dict[str, int] | None:
    """The versions the caller read: `versions`, and If-Match's one version for every selected item."""
    expected = dict(body.versions or {})
    if if_match is not None:
        tag = if_match.strip().removeprefix("W/").strip('"')
        expected.update({item: int(tag[1:]) for item in ids if item not in expected})
    return expected or None


def _response(result: EditResult) -> EditResponse:
    data = result.to_dict()
    return EditResponse(batch=data["batch"], changed=data["changed"], unchanged=data["unchanged"],
                        edits=data["edits"], versions=data["versions"])


def _edit_error(e: EditError) -> ApiError:
    if isinstance(e, EditConflict):
        return ApiError(409, "edit_conflict", str(e), e.item)
    if "no item" in str(e) or "names no item" in str(e):
        return ApiError(404, "unknown_item", str(e), None)
    return ApiError(422, "bad_edit", str(e), None)


@router.post("", response_model=EditResponse, summary="Edit items: label, tags, excluded, duplicate-of")
def edit_items(body: EditRequest, state: ServiceState = Depends(get_state), who: ApiKey = Depends(require_write),
               if_match: str = Header(None, pattern=r'^(W/)?"v[0-9]{1,9}"$', description="The ETag "
                                             '("v<version>") the caller read: every selected item must still '
                                             "have that version, else 409 and nothing is written.")
               ) -> EditResponse:
    changes = _changes(body.changes)
    ids = _selected(body, state)
    try:
        result = state.edits.apply(EditJob(ids, changes, who.name, body.why, _expected(body, ids, if_match)))
    except EditError as e:
        raise _edit_error(e) from None
    return _response(result)


@router.post("/undo", response_model=EditResponse, summary="Undo an edit batch, or some edits, as a new batch")
def undo_edits(body: UndoRequest, state: ServiceState = Depends(get_state),
               who: ApiKey = Depends(require_write)) -> EditResponse:
    batch = body.batch if isinstance(body, UndoBatch) else None
    edit_ids = body.edit_ids if isinstance(body, UndoEdits) else None
    try:
        result = Curation(state.workspace).undo(who.name, batch=batch, edit_ids=edit_ids, why=body.why)
    except EditError as e:
        raise ApiError(404, "unknown_edit", str(e), "batch" if batch else "edit_ids") from None
    return _response(result)


@router.get("", response_model=EditLog, summary="The edit log, newest first: all, one item's, or one batch's")
def edit_log(item: str | None = Query(None, min_length=1, max_length=1024), batch: str | None = Query(
             None, min_length=1, max_length=80), limit: int = Query(100, ge=1, le=1000),
             state: ServiceState = Depends(get_state)) -> EditLog:
    curation = Curation(state.workspace)
    return EditLog(edits=curation.log(item=item, batch=batch, limit=limit), total=curation.count())
