"""Colour names of uploaded images: the zero-label namer (nothing trained), object and backdrop apart."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from curata.service.deps import get_state, require_api_key
from curata.service.images import decode_all, fetch_sources, read_sources
from curata.service.schemas import IMAGES_BODY, ColourName, ColourResult, ColoursResponse, PaletteColour
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/colours", tags=["colours"], dependencies=[Depends(require_api_key)])


@router.post("", response_model=ColoursResponse, openapi_extra=IMAGES_BODY,
             summary="Colour names of the object (and its backdrop) and the object's k-colour palette")
async def colours(request: Request, k: int = Query(5, ge=1, le=12, description="Colours in the palette."),
                  vocabulary: Literal["basic", "css"] = Query("basic", description="12 basic terms or 148 CSS "
                                                                                    "names."),
                  state: ServiceState = Depends(get_state)) -> ColoursResponse:
    sources = await read_sources(request, state.settings, state)
    # URLs: fetched before the compute slot, never holding it
    await fetch_sources(sources, state.settings, state.fetch_limiter())

    def work() -> ColoursResponse:
        from curata.features.colour_names import name_colours

        # Decoded in full like /v1/describe and `curata describe` do, then named by the same function:
        # the three give the same answer for the same file (a reduced decode here once made 4 in 323 differ).
        images = decode_all(sources, state.settings)
        results = []
        for im in images:
            named = name_colours(im.image, k=k, vocabulary=vocabulary)
            palette = [PaletteColour(**{f: p[f] for f in ("hex", "rgb", "share", "basic", "css", "delta_e")})
                       for p in named.palette]
            background = (ColourName(name=named.background.name, share=named.background.share)
                          if named.background else None)
            results.append(ColourResult(image=im.name, colour=named.top, palette=palette,
                                        names=[ColourName(name=c.name, share=c.share) for c in named.object],
                                        background=background, phrase=named.phrase, method=named.method,
                                        note=named.note))
        return ColoursResponse(vocabulary=vocabulary, k=k, results=results)

    return await state.compute(work)
