"""Classify images with any trained bundle of the workspace."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.images import decode_all, fetch_sources, read_sources
from curata.service.schemas import IMAGES_BODY, Prediction, PredictResponse
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/predict", tags=["predict"], dependencies=[Depends(require_api_key)])


@router.post("/{bundle}", response_model=PredictResponse, openapi_extra=IMAGES_BODY,
             summary="Predict with a bundle for one or more images (or workspace items)")
async def predict(bundle: str, request: Request, top: int = Query(3, ge=1, le=50),
                  state: ServiceState = Depends(get_state)) -> PredictResponse:
    state.bundle_dir(bundle)  # 404 before reading the body
    sources = await read_sources(request, state.settings, state)
    # URLs: fetched before the compute slot, never holding it
    await fetch_sources(sources, state.settings, state.fetch_limiter())

    def work() -> PredictResponse:
        loaded = state.bundle(bundle)  # picked once: a concurrent reload cannot change it under us
        images = decode_all(sources, state.settings)
        rows = []
        step = state.settings.max_batch
        for start in range(0, len(images), step):
            batch = images[start: start + step]
            try:
                rows += loaded.predict([im.image for im in batch], [im.text for im in batch], top=top)
            except ValueError as e:  # e.g. an image the bundle's extractor refuses
                raise ApiError(422, "cannot_predict", str(e), "images") from None
        results = [Prediction(image=im.name, **row) for im, row in zip(images, rows, strict=True)]
        return PredictResponse(bundle=bundle, task=loaded.card.task, target=loaded.card.target, results=results)

    return await state.compute(work)
