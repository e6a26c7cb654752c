"""Liveness (no authentication, no work) and readiness (what is loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from curata import __version__
from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.schemas import Health, Ready
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:  # async: liveness never waits for a thread of the (maybe busy) pool
    return Health(status="ok", version=__version__)


@router.get("/ready", response_model=Ready, summary="Readiness: models loaded (503 while loading or broken)",
            dependencies=[Depends(require_api_key)], responses={503: {"model": Ready}})
def ready(state: ServiceState = Depends(get_state)) -> JSONResponse | Ready:
    models = {name: "loaded" for name in state.bundles}
    models.update({name: f"error: {reason}" for name, reason in state.bundle_errors.items()})
    for name in state.bundle_names():
        models.setdefault(name, "not loaded" if state.is_classifier(name) else "not a classifier")
    exists = state.workspace.root.is_dir()
    try:
        count = state.items().total if exists and state.loaded else 0
    except ApiError:  # no good snapshot of the collection at all: items_error says why
        count = 0
    ok = exists and state.loaded and state.load_error is None and state.items_error is None
    stale = f"{state.items_error}; serving the last good snapshot" if state.items_error and state.has_snapshot() \
        else state.items_error
    status = ("ready" if ok else "loading" if exists and not state.loaded
              else state.load_error or stale or "the workspace folder is gone")
    body = Ready(ready=ok, status=status, workspace=str(state.workspace.root.name), items=count, models=models,
                 search=state.engine_status("search"), describe=state.engine_status("describe"))
    return body if ok else JSONResponse(body.model_dump(), status_code=503)
