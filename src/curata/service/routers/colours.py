"""Colour naming and palettes of uploaded images, with the zero-label namer (nothing trained)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from curata.service.deps import get_state, require_api_key
from curata.service.images import decode_all, fetch_sources, read_sources
from curata.service.schemas import IMAGES_BODY, ColourName, ColourResult, ColoursResponse, PaletteColour
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/colours", tags=["colours"], dependencies=[Depends(require_api_key)])


@router.post("", response_model=ColoursResponse, openapi_extra=IMAGES_BODY,
             summary="Dominant colour names and the k-colour palette of each image")
async def colours(request: Request, k: int = Query(5, ge=1, le=12, description="Colours in the palette."),
                  vocabulary: Literal["basic", "css"] = Query("basic", description="12 basic terms or 148 CSS "
                                                                                    "names."),
                  state: ServiceState = Depends(get_state)) -> ColoursResponse:
    sources = await read_sources(request, state.settings, state)
    # URLs: fetched before the compute slot, never holding it
    await fetch_sources(sources, state.settings, state.fetch_limiter())

    def work() -> ColoursResponse:
        from curata.features.palette import PaletteExtractor, describe_palette, merge_shares

        extractor = PaletteExtractor(k=k)
        images = decode_all(sources, state.settings, max_side=extractor.max_side)
        vectors = extractor.transform([extractor.prepare(im.image) for im in images])
        results = []
        for im, vector in zip(images, vectors, strict=True):
            described = describe_palette(vector, k)
            # the zero-label namer's answer (ZeroLabelColourNamer), from the names already computed
            named = merge_shares((p[vocabulary], p["share"]) for p in described)
            palette = [PaletteColour(**{f: p[f] for f in ("hex", "rgb", "share", "basic", "css", "delta_e")})
                       for p in described]
            results.append(ColourResult(image=im.name, colour=named[0][0] if named else None, palette=palette,
                                        names=[ColourName(name=n, share=round(s, 4)) for n, s in named]))
        return ColoursResponse(vocabulary=vocabulary, k=k, results=results)

    return await state.compute(work)
