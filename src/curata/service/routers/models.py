"""Model bundles of the workspace: their cards, and reloading one without a restart."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from curata.service.deps import get_state, require_api_key
from curata.service.schemas import ModelInfo, ModelList
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("", response_model=ModelList, summary="Every bundle in <workspace>/models with its card")
def list_models(state: ServiceState = Depends(get_state)) -> ModelList:
    return ModelList(models=[ModelInfo(**state.model_info(name)) for name in state.bundle_names()])


@router.get("/{name}", response_model=ModelInfo, summary="One bundle's card and load status")
def get_model(name: str, state: ServiceState = Depends(get_state)) -> ModelInfo:
    return ModelInfo(**state.model_info(name))


@router.post("/{name}/reload", response_model=ModelInfo,
             summary="Load the bundle again from disk (requests in flight keep the model they started with)")
async def reload_model(name: str, state: ServiceState = Depends(get_state)) -> ModelInfo:
    state.bundle_dir(name)  # 404 for an unknown bundle
    # A joint search space is reloaded by reopening the searchers; a classifier is loaded aside and swapped.
    await run_in_threadpool(state.reload_search if state.is_search_model(name) else partial(state.reload, name))
    return ModelInfo(**state.model_info(name))
