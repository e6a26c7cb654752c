"""Cluster runs written by `curata cluster` under <workspace>/clusters/."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Query

from curata.service.deps import get_state, require_api_key
from curata.service.schemas import ClusterAssignments, ClusterRunList, ClusterRunSummary
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/clusters", tags=["clusters"], dependencies=[Depends(require_api_key)])


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (scores of degenerate runs can be NaN): they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's summary without server paths (`files`) or private keys."""
    return _finite({k: v for k, v in summary.items() if k != "files" and not k.startswith("_")})


@router.get("", response_model=ClusterRunList, summary="Cluster runs, newest first")
def list_runs(state: ServiceState = Depends(get_state)) -> ClusterRunList:
    runs = []
    for s in state.cluster_runs():
        scores = _finite({k: v for k, v in (s.get("scores") or {}).items() if isinstance(v, int | float | str | None)})
        runs.append(ClusterRunSummary(run=s["run"], method=s.get("method"), k=s.get("k"), items=s.get("items"),
                                      features=[str(f) for f in s.get("features") or []], scores=scores,
                                      created=s["created"]))
    return ClusterRunList(runs=runs)


@router.get("/{run}", summary="A run's full summary: parameters, scores, named clusters")
def get_run(run: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return _public(state.cluster_run(run))


@router.get("/{run}/assignments", response_model=ClusterAssignments, summary="Which cluster each item is in")
def assignments(run: str, cluster: int | None = Query(None, ge=-1), offset: int = Query(0, ge=0, le=10_000_000),
                limit: int = Query(500, ge=1, le=5000), state: ServiceState = Depends(get_state)
                ) -> ClusterAssignments:
    frame = state.assignments(run)
    if cluster is not None:
        frame = frame[frame["cluster"] == cluster]
    page = frame.iloc[offset: offset + limit]
    rows = [{"id": str(r["id"]), "cluster": int(r["cluster"]),
             **({"x": float(r["x"]), "y": float(r["y"])} if "x" in page.columns and r["x"] == r["x"] else {})}
            for r in page.to_dict("records")]
    return ClusterAssignments(run=run, total=len(frame), offset=offset, limit=limit, assignments=rows)
