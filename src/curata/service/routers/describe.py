"""Keywords, a sentence and colour words for images or workspace items."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.images import decode_all, fetch_sources, read_sources
from curata.service.schemas import IMAGES_BODY, DescribeItemsRequest, DescribeResponse, Description
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/describe", tags=["describe"], dependencies=[Depends(require_api_key)])


def _description(raw: dict[str, Any], **extra: Any) -> Description:
    return Description(**{"keywords": raw.get("keywords", []), "sentence": raw.get("sentence", ""),
                          "colours": raw.get("colours", []), "id": raw.get("id"), "error": raw.get("error"),
                          **extra})


@router.post("", response_model=DescribeResponse, openapi_extra=IMAGES_BODY, summary="Describe uploaded images")
async def describe_images(request: Request, top_k: int = Query(10, ge=1, le=100),
                          state: ServiceState = Depends(get_state)) -> DescribeResponse:
    describer = await run_in_threadpool(state.describer)  # 409 before reading the body (opens on first use)
    sources = await read_sources(request, state.settings, state)
    # URLs: fetched before the compute slot, never holding it
    await fetch_sources(sources, state.settings, state.fetch_limiter())

    def work() -> DescribeResponse:
        images = decode_all(sources, state.settings)
        try:
            raw = describer.describe_images([im.image for im in images], top_k=top_k)
        except ValueError as e:
            raise ApiError(422, "cannot_describe", str(e), "images") from None
        return DescribeResponse(results=[_description(r, image=im.name) for r, im in zip(raw, images, strict=True)])

    return await state.compute(work)


@router.post("/items", response_model=DescribeResponse, summary="Describe workspace items by id")
def describe_items(body: DescribeItemsRequest, state: ServiceState = Depends(get_state)) -> DescribeResponse:
    for item_id in body.ids:
        state.item_record(item_id)  # 404 naming the first unknown item
    describer = state.describer()  # opens on first use
    try:
        raw = describer.describe_items(list(body.ids), top_k=body.top_k)
    except (KeyError, ValueError) as e:
        raise ApiError(422, "cannot_describe", str(e).strip("'\""), "ids") from None
    return DescribeResponse(results=[_description(r, id=r.get("id", i)) for r, i in zip(raw, body.ids, strict=True)])
