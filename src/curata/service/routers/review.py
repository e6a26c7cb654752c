"""Review queues over HTTP (`curata.review`): what curata proposes (suspicious labels, tag suggestions,
near-duplicates, outliers, items to label next), decided one by one; an accept is an edit like any other."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query

from curata.curation import EditConflict, EditError
from curata.service.deps import get_state, require_api_key, require_write
from curata.service.errors import ApiError
from curata.service.keys import ApiKey
from curata.service.schemas import ReviewDecision
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/review", tags=["curation"], dependencies=[Depends(require_api_key)])
QUEUE = Path(..., pattern="^(labels|tags|duplicates|outliers|uncertain)$", description="The queue.")


def _review_error(e: Exception) -> ApiError:
    if isinstance(e, EditConflict):
        return ApiError(409, "edit_conflict", str(e), e.item)
    return ApiError(409 if "no open proposal" in str(e) else 422, "bad_decision", str(e), None)


@router.get("", summary="Every queue with what is done and left")
def queues(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    from curata.review import queue_counts

    return {"queues": queue_counts(state.workspace)}


@router.get("/{queue}", summary="A queue's open proposals, highest score first")
def queue(queue: str = QUEUE, limit: int = Query(50, ge=1, le=500), refresh: bool = Query(False, description=
          "Recompute the proposals from their source (otherwise cached until the source changes)."),
          state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    from curata.review import build_queue

    return build_queue(state.workspace, queue, refresh=refresh).to_dict(limit)


@router.post("/{queue}/decisions", summary="Accept, reject or skip one proposal")
def decide(body: ReviewDecision, queue: str = QUEUE, state: ServiceState = Depends(get_state),
           who: ApiKey = Depends(require_write)) -> dict[str, Any]:
    from curata.review import ReviewError, decide

    try:
        return decide(state.workspace, body.proposal_id, body.decision, who.name, queue, edit=state.edits.apply)
    except (ReviewError, EditError) as e:
        raise _review_error(e) from None


@router.post("/{queue}/undo", summary="Take back your newest decision in this queue")
def undo(queue: str = QUEUE, state: ServiceState = Depends(get_state),
         who: ApiKey = Depends(require_write)) -> dict[str, Any]:
    from curata.review import ReviewError, undo_last

    try:
        done = undo_last(state.workspace, who.name, queue)
    except (ReviewError, EditError) as e:
        raise _review_error(e) from None
    if done is None:
        raise ApiError(404, "nothing_to_undo", f"you have no decision to undo in the {queue} queue", None)
    return done
