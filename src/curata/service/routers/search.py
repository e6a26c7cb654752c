"""Search the collection by text, by image or by item (the index built by `curata index build`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.images import decode_all, fetch_sources, read_sources
from curata.service.routers.items import item_urls
from curata.service.schemas import (
    IMAGES_BODY,
    ImageSearchResponse,
    ImageSearchResult,
    SearchHit,
    SearchResponse,
)
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Depends(require_api_key)])

K = Query(10, ge=1, le=200, description="Number of results.")
MODEL = Query(None, max_length=120, description="Search model / index name (default: the workspace's default).")
LABEL = Query(None, max_length=512, description="Only items with this label.")
COLLECTION = Query(None, max_length=512, description="Only items of this collection.")
MODE = Query(None, pattern="^(hybrid|joint|lexical)$",
             description="hybrid: tags named in the query + BM25 + joint space, fused (the default when the index "
                         "has its lexical part); joint: the joint space only; lexical: tags + BM25 only.")


def _filters(label: str | None, collection: str | None) -> dict[str, str] | None:
    given = {k: v for k, v in (("label", label), ("collection", collection)) if v is not None}
    return given or None


def _hits(raw: list[dict[str, Any]]) -> list[SearchHit]:
    out = []
    for hit in raw:
        item_id = str(hit["id"])
        out.append(SearchHit(id=item_id, score=float(hit.get("score", 0.0)), label=hit.get("label"),
                             collection=hit.get("collection"), text=hit.get("text"), matched=hit.get("matched", []),
                             predicted=hit.get("predicted", []), via=hit.get("via", []), **item_urls(item_id)))
    return out


def _run(call: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        return call(*args, **kwargs)
    except (KeyError, ValueError) as e:  # an unknown filter value or item the searcher refuses
        raise ApiError(422, "bad_search", str(e).strip("'\"") or "the search cannot be run", None) from None


@router.get("/text", response_model=SearchResponse, summary="Items matching a text query")
def by_text(q: str = Query(..., min_length=1, max_length=1000, description="The query text."), k: int = K,
            model: str | None = MODEL, label: str | None = LABEL, collection: str | None = COLLECTION,
            mode: str | None = MODE, state: ServiceState = Depends(get_state)) -> SearchResponse:
    searcher = state.searcher(model)
    lexical = getattr(searcher, "lexical", None) is not None
    if mode == "lexical" and not lexical:
        raise ApiError(409, "no_lexical_index", "this search index has no lexical part (built before hybrid "
                       "search); run `curata index build`", "mode")
    hits = _run(searcher.by_text, q, k=k, filters=_filters(label, collection), mode=mode)
    used = (mode or searcher.default_mode) if lexical else "joint"
    # The searcher's per-query `notes` are shared between threads; only its fixed notes are returned here.
    return SearchResponse(query=q, results=_hits(hits), mode=used, notes=list(getattr(searcher, "open_notes", [])))


@router.get("/item", response_model=SearchResponse, summary="Items nearest to a workspace item (any id, as a "
            "query parameter)")
def by_item_query(id: str = Query(..., min_length=1, max_length=1024, description="The item id."), k: int = K,
                  model: str | None = MODEL, label: str | None = LABEL, collection: str | None = COLLECTION,
                  state: ServiceState = Depends(get_state)) -> SearchResponse:
    return by_item(id, k, model, label, collection, state)


@router.get("/item/{item_id:path}", response_model=SearchResponse, summary="Items nearest to a workspace item")
def by_item(item_id: str, k: int = K, model: str | None = MODEL, label: str | None = LABEL,
            collection: str | None = COLLECTION, state: ServiceState = Depends(get_state)) -> SearchResponse:
    state.item_record(item_id)  # 404 for an unknown item
    searcher = state.searcher(model)
    hits = _run(searcher.by_item, item_id, k=k + 1, filters=_filters(label, collection))
    hits = [h for h in hits if str(h.get("id")) != item_id][:k]  # the item itself is not its own neighbour
    return SearchResponse(query=item_id, results=_hits(hits))


@router.post("/image", response_model=ImageSearchResponse, openapi_extra=IMAGES_BODY,
             summary="Items nearest to each uploaded image")
async def by_image(request: Request, k: int = K, model: str | None = MODEL, label: str | None = LABEL,
                   collection: str | None = COLLECTION, state: ServiceState = Depends(get_state)
                   ) -> ImageSearchResponse:
    searcher = await run_in_threadpool(state.searcher, model)  # 409 before reading the body
    sources = await read_sources(request, state.settings, state)
    # URLs: fetched before the compute slot, never holding it
    await fetch_sources(sources, state.settings, state.fetch_limiter())

    def work() -> ImageSearchResponse:
        images = decode_all(sources, state.settings)
        filters = _filters(label, collection)
        return ImageSearchResponse(results=[
            ImageSearchResult(image=im.name, results=_hits(_run(searcher.by_image, im.image, k=k, filters=filters)))
            for im in images])

    return await state.compute(work)
