"""The HTTP service: `create_app(settings)` builds the FastAPI app (API under /v1, the web page at /).

Layout follows FastAPI's "bigger applications": one router per resource in `routers/`, schemas in
`schemas.py`, shared state and the API-key check as dependencies (`deps.py`), one error shape
(`errors.py`). The service only calls library functions; no logic lives only here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from curata import __version__
from curata.service.errors import install_error_handlers
from curata.service.guard import CLIENT_HEADER, RequestGuard
from curata.service.limits import BodyLimitMiddleware
from curata.service.routers import (
    clusters,
    colours,
    describe,
    edits,
    export,
    health,
    items,
    models,
    predict,
    review,
    search,
    session,
)
from curata.service.schemas import ErrorResponse
from curata.service.settings import Settings
from curata.service.state import ServiceState

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("curata.service")

# The page loads only its own files: no CDN, no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422)}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings` (default: from the environment, see `Settings.from_env`)."""
    settings = settings or Settings.from_env()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # scikit-learn (through the task modules) is imported here, before any request or loading thread runs:
        # two threads importing it for the first time at once can leave one with a partially initialised
        # module, and every later import in that process fails (seen in a full test run: /v1/ready never turned
        # 200).
        import curata.tasks.colour
        import curata.tasks.runner  # noqa: F401

        # Models load once, in a thread: /v1/health answers meanwhile, /v1/ready turns 200 when done.
        state.start_in_background()
        yield

    app = FastAPI(title="curata", version=__version__, lifespan=lifespan, responses=_ERRORS,
                  description="Classify, describe and search a visual collection. Every error has the shape "
                              '`{"error": {"code", "message", "field"}}`. When the server has an API key, every '
                              "path but /v1/health needs the `X-API-Key` header.")
    app.state.curata = state
    install_error_handlers(app)
    # Outermost last: CORS answers preflights, then the guard checks host, origin and key before the body
    # limit reads a byte of the body (a 413 or 401 still carries the CORS headers a browser needs).
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(RequestGuard, settings=settings, keys=state.keys)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type", "If-Match", CLIENT_HEADER],
                           allow_credentials=False, max_age=600)
    for module in (health, session, items, edits, review, export, models, predict, colours, describe, search, clusters):
        app.include_router(module.router)
    app.include_router(items.item_router)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory curata.service.app:app_from_env` (how `curata serve` runs workers)."""
    return create_app(Settings.from_env())
