"""Items of the collection: a filtered, paged list, facets for the filters, one item, its image, a
thumbnail, and its cached feature vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from curata.objectstore import is_object_uri, read_bytes
from curata.service.catalog import sql_text
from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.schemas import Facets, FeatureInfo, ItemDetail, ItemFeatures, ItemPage, ItemSummary
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/items", tags=["items"], dependencies=[Depends(require_api_key)])

_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
          "TIFF": "image/tiff", "MPO": "image/jpeg"}


# Every item by query parameter as well (/v1/item?id=...): any id works there, including ids that end in
# /image or hold ".." segments, which path URLs cannot carry (browsers normalise them away).
item_router = APIRouter(prefix="/v1/item", tags=["items"], dependencies=[Depends(require_api_key)])
ITEM_ID = Query(..., min_length=1, max_length=1024, description="The item id.")


def item_urls(item_id: str) -> dict[str, str]:
    query = quote(item_id, safe="")
    return {"image_url": f"/v1/item/image?id={query}", "thumbnail_url": f"/v1/item/thumbnail?id={query}"}


def _whole_id(state: ServiceState, item_id: str, suffix: str) -> str | None:
    """`/v1/items/a/image` names the image of item `a`; when there is no item `a` but an item `a/image`,
    it names that item (its details, like any `/v1/items/{id}`)."""
    view = state.items()
    whole = f"{item_id}/{suffix}"
    return whole if item_id not in view and whole in view else None


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _list(value: Any) -> list[str]:
    return [str(v) for v in value] if value is not None and not isinstance(value, float) else []


def _summary(r: Any, colour: str | None, cluster: int | None) -> dict[str, Any]:
    item_id = str(r["id"])
    version = r.get("edit_version")
    return {"id": item_id, "collection": _text(r["collection"]) or None, "source": _text(r["source"]) or None,
            "label": _text(r["label"]) or None, "tags": _list(r["tags"]),
            "text": _text(r["text"]), "colour": colour, "cluster": cluster,
            "width": int(r["width"]) if pd.notna(r["width"]) else None,
            "height": int(r["height"]) if pd.notna(r["height"]) else None, **item_urls(item_id),
            "version": int(version) if version is not None and pd.notna(version) else 0,
            "curated": _list(r.get("curated")), "excluded": bool(r.get("excluded") is True),
            "duplicate_of": _text(r.get("duplicate_of")) or None}


def item_filters(label: str | None = None, collection: str | None = None, tag: str | None = None,
                 q: str | None = None) -> str | None:
    """The list's column filters as SQL that Lance runs in the scan (values quoted by `sql_text`)."""
    where = [f"label = {sql_text(label)}" if label is not None else None,
             f"collection = {sql_text(collection)}" if collection is not None else None,
             f"array_has(tags, {sql_text(tag)})" if tag is not None else None,
             f"strpos(lower(text), lower({sql_text(q)})) > 0" if q else None]
    return " AND ".join(w for w in where if w is not None) or None


def etag(version: int) -> str:
    return f'"v{int(version)}"'


def _clusters_of(state: ServiceState, run: str | None, ids: list[str]) -> dict[str, int]:
    """The cluster of each of `ids` in `run`."""
    if run is None or not ids:
        return {}
    frame = state.assignments(run)
    frame = frame[frame["id"].isin(ids)]
    return {str(i): int(c) for i, c in zip(frame["id"], frame["cluster"], strict=True)}


@router.get("", response_model=ItemPage, summary="List items, filtered and paged")
def list_items(
    label: str | None = Query(None, min_length=1, max_length=512, description="Only items with this label."),
    tag: str | None = Query(None, min_length=1, max_length=512, description="Only items with this tag "
                            "(e.g. 'hair=short')."),
    colour: str | None = Query(None, min_length=1, max_length=64, description="Only items whose dominant colour "
                               "is this name."),
    cluster: int | None = Query(None, ge=-1, description="Only items in this cluster of `cluster_run`."),
    cluster_run: str | None = Query(None, min_length=1, max_length=120, description="Cluster run (default: the "
                                    "newest)."),
    collection: str | None = Query(None, min_length=1, max_length=512, description="Only items of this "
                                   "collection."),
    q: str | None = Query(None, max_length=512, description="Only items whose text contains this (any case)."),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(48, ge=1, le=500),
    state: ServiceState = Depends(get_state),
) -> ItemPage:
    view = state.items()
    # Filters on columns are SQL that Lance runs in the scan; colour and cluster are id sets derived elsewhere.
    filters = item_filters(label, collection, tag, q)
    ids: pa.Array | None = None
    if colour is not None:
        if not view.palette_ready:
            raise ApiError(409, "no_palette_feature", "the colour filter needs the object_palette (or palette) "
                           "feature; run `curata features -e object_palette` first", "colour")
        ids = view.ids_with_colour(colour.strip().lower())
    run = cluster_run or (state.latest_run() if cluster is not None else None)
    if cluster is not None and run is None:
        raise ApiError(409, "no_cluster_run", "the cluster filter needs a cluster run; run `curata cluster` first",
                       "cluster")
    if cluster_run is not None:
        state.cluster_run(cluster_run)  # 404 for an unknown run
    if cluster is not None:
        assigned = state.assignments(run)
        members = pa.array(assigned.loc[assigned["cluster"] == cluster, "id"].astype(str).to_numpy(), pa.string())
        ids = members if ids is None else members.filter(pc.is_in(members, value_set=ids))
    total, page = view.page(filters, offset, limit, ids)
    page_ids = [str(i) for i in page["id"]]
    clusters = _clusters_of(state, run, page_ids)
    colours = view.colours_of(page)
    items = [ItemSummary(**_summary(r, c, clusters.get(i)))
             for r, c, i in zip(page.to_dict("records"), colours, page_ids, strict=True)]
    return ItemPage(total=total, offset=offset, limit=limit, cluster_run=run, items=items)


@router.get("/facets", response_model=Facets, summary="Values to filter on, with their counts")
def facets(state: ServiceState = Depends(get_state), top: int = Query(200, ge=1, le=5000)) -> Facets:
    view = state.items()
    counts = view.facets(top)
    run = state.latest_run()
    clusters = []
    if run is not None:
        summary = state.cluster_run(run)
        for c in summary.get("clusters", []):
            if isinstance(c, dict) and "cluster" in c:
                clusters.append({"cluster": int(c["cluster"]), "name": str(c.get("name", c["cluster"])),
                                 "size": int(c.get("size", 0))})
    return Facets(total=view.total, labels=counts["labels"], collections=counts["collections"], tags=counts["tags"],
                  colours=counts["colours"], cluster_run=run, clusters=clusters)


@router.get("/{item_id:path}/image", summary="The item's original image bytes",
            response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
def item_image(item_id: str, state: ServiceState = Depends(get_state)) -> Response:
    if (whole := _whole_id(state, item_id, "image")) is not None:
        return JSONResponse(get_item(whole, state).model_dump())
    _, record = state.item_record(item_id)
    image = str(record["image"])
    media = _MEDIA.get(_text(record["image_format"]).upper(), "application/octet-stream")
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if is_object_uri(image):  # on object storage: the bytes pass through (the client never sees the bucket)
        try:
            return Response(read_bytes(image), media_type=media, headers=headers)
        except OSError:
            raise ApiError(404, "image_missing", f"the image of {item_id!r} is no longer there", "item_id") from None
    if not Path(image).is_file():
        raise ApiError(404, "image_missing", f"the image of {item_id!r} is no longer on disk", "item_id")
    return FileResponse(image, media_type=media, headers=headers)


@router.get("/{item_id:path}/thumbnail", summary="A thumbnail (never upscaled; PNG for small images, else JPEG)",
            response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
async def item_thumbnail(item_id: str, size: int = Query(256, ge=16, le=1024),
                         state: ServiceState = Depends(get_state)) -> Response:
    if (whole := _whole_id(state, item_id, "thumbnail")) is not None:
        return JSONResponse(get_item(whole, state).model_dump())
    # A cached one needs no compute slot; making one decodes the image, which takes a slot like all image work.
    hit = await run_in_threadpool(state.cached_thumbnail, item_id, size)
    data, media = hit if hit is not None else await state.compute(state.thumbnail, item_id, size)
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{item_id:path}/features", response_model=ItemFeatures, summary="The item's cached feature vectors")
def item_features(item_id: str, name: str | None = Query(None, max_length=64, description="Only this feature."),
                  values: bool = Query(False, description="Include the vectors (always with `name`)."),
                  state: ServiceState = Depends(get_state)) -> ItemFeatures | JSONResponse:
    from curata.features.engine import available_extractors, load_matrix, make_extractor

    if (whole := _whole_id(state, item_id, "features")) is not None:
        return JSONResponse(get_item(whole, state).model_dump())

    _, record = state.item_record(item_id)
    names = available_extractors()
    if name is None:
        # Only extractors with a store in features/ (a folder "<name>@v<version>-<digest>"): building the
        # others can import heavy plug-in libraries for nothing.
        folder = state.workspace.root / "features"
        stored = {p.name.split("@", 1)[0] for p in folder.iterdir()} if folder.is_dir() else set()
        names = [n for n in names if n in stored]
    if name is not None:
        if name not in names:
            raise ApiError(404, "unknown_feature", f"no feature named {name!r}; known: {', '.join(names)}", "name")
        names, values = [name], True
    out = []
    for feature in names:
        try:
            extractor = make_extractor(feature)
            matrix, errors = load_matrix(state.workspace, extractor, pd.DataFrame([record]))
        except Exception:  # not computed, not fitted, or a plug-in without its model: not listed
            continue
        if errors[0] is None:
            out.append(FeatureInfo(name=feature, key=extractor.key, dim=int(matrix.shape[1]),
                                   values=[round(float(v), 6) for v in matrix[0]] if values else None))
    if name is not None and not out:
        raise ApiError(404, "feature_not_computed", f"{name!r} has not been computed for this item; run "
                       f"`curata features -e {name}`", "name")
    return ItemFeatures(id=item_id, features=out)


@router.get("/{item_id:path}", response_model=ItemDetail, summary="One item with its palette and clusters")
def get_item(item_id: str, state: ServiceState = Depends(get_state)) -> ItemDetail:
    view, record = state.item_record(item_id)
    clusters: dict[str, int] = {}
    for summary in state.cluster_runs()[:10]:
        assigned = state.assignments(summary["run"])
        hit = assigned.loc[assigned["id"] == item_id, "cluster"]
        if len(hit):
            clusters[summary["run"]] = int(hit.iat[0])
    latest = state.latest_run()
    found = view.colour_vector(record) if view.palette_ready else None
    dominant = view.colours_of(pd.DataFrame([record]))[0] if found is not None else None
    detail = _summary(record, dominant, clusters.get(latest) if latest else None)
    detail.update(_colours(*found) if found is not None else {})
    detail.update(captions=[str(c) for c in (record["captions"] if record["captions"] is not None else [])],
                  attributes=_json(record["attributes"], []), meta=_json(record["meta"], {}),
                  split=_text(record["split"]) or None, image_format=_text(record["image_format"]) or None,
                  image_mode=_text(record["image_mode"]) or None, clusters=clusters,
                  source_label=_text(record.get("source_label", record["label"])) or None,
                  source_tags=_list(record.get("source_tags", record["tags"])))
    return ItemDetail(**detail)


def _colours(feature: str, vector: Any) -> dict[str, Any]:
    """An item's palette and colour names from its cached vector: the object's (`object_palette`, named as
    /v1/colours names the file) or, where that was not computed, the whole image's (`palette`)."""
    fields = ("hex", "rgb", "share", "basic", "css", "delta_e")
    if feature == "object_palette":
        from curata.features.colour_names import read_object_palette

        named = read_object_palette(vector)
        background = ({"name": named.background.name, "share": named.background.share}
                      if named.background else None)
        return {"palette": [{k: p[k] for k in fields} for p in named.palette],
                "colours": [{"name": c.name, "share": c.share} for c in named.object],
                "background": background, "phrase": named.phrase, "colour_method": named.method,
                "colour_source": feature}
    from curata.features.palette import describe_palette, dominant_color_names

    return {"palette": [{k: p[k] for k in fields} for p in describe_palette(vector)],
            "colours": [{"name": n, "share": round(s, 4)} for n, s in dominant_color_names(vector)],
            "colour_source": feature}


def _json(text: Any, default: Any) -> Any:
    try:
        value = json.loads(text) if isinstance(text, str) and text else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


@item_router.get("", response_model=ItemDetail, summary="One item, by id as a query parameter (any id); its "
                 "ETag is its version, for If-Match on an edit")
def get_item_by_query(response: Response, id: str = ITEM_ID, state: ServiceState = Depends(get_state)) -> ItemDetail:
    detail = get_item(id, state)
    response.headers["ETag"] = etag(detail.version)
    response.headers["Cache-Control"] = "no-cache"
    return detail


@item_router.get("/image", summary="The item's original image bytes, by id as a query parameter",
                 response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
def item_image_by_query(id: str = ITEM_ID, state: ServiceState = Depends(get_state)) -> Response:
    state.item_record(id)  # an exact id: a known item never falls back to another (see _whole_id)
    return item_image(id, state)


@item_router.get("/thumbnail", summary="A thumbnail, by id as a query parameter", response_class=Response,
                 responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
async def item_thumbnail_by_query(id: str = ITEM_ID, size: int = Query(256, ge=16, le=1024),
                                  state: ServiceState = Depends(get_state)) -> Response:
    state.item_record(id)
    return await item_thumbnail(id, size, state)


@item_router.get("/features", response_model=ItemFeatures, summary="Cached feature vectors, by id as a query "
                 "parameter")
def item_features_by_query(id: str = ITEM_ID, name: str | None = Query(None, max_length=64),
                           values: bool = Query(False), state: ServiceState = Depends(get_state)) -> ItemFeatures:
    state.item_record(id)
    result = item_features(id, name, values, state)
    assert isinstance(result, ItemFeatures)
    return result
