"""Relabeling cycles (``/v1/relabel-cycles``): admins open and cancel them; viewers and admins follow
them. A retried ``POST`` with the same ``Idempotency-Key`` returns the same cycle (200 instead of
201); the same key with another body is a 409. See :mod:`monitor.relabel.cycles`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse

from monitor.api.auth import Principal, require
from monitor.api.deps import ContextDep
from monitor.auth import ADMIN, VIEW
from monitor.relabel.cycles import CycleRequest

router = APIRouter(prefix="/v1/relabel-cycles", tags=["relabel"])

Admin = Annotated[Principal, Depends(require(ADMIN))]
Viewer = Annotated[Principal, Depends(require(VIEW))]


@router.post("", status_code=201, responses={200: {"description": "An idempotent retry: the cycle it created."}})
def start_cycle(body: CycleRequest, context: ContextDep, caller: Admin,
                idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None) -> Any:
    """Open a cycle: pairs on the slice, queued for pairwise review."""
    cycle, created = context.cycles.create(body, caller.name, idempotency_key)
    return JSONResponse(cycle, status_code=201 if created else 200)


@router.get("")
def list_cycles(context: ContextDep, _caller: Viewer,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"cycles": context.cycles.list(limit)}


@router.get("/{cycle_id}")
def show_cycle(cycle_id: int, context: ContextDep, _caller: Viewer) -> dict[str, Any]:
    """Status, progress (pairs labelled) and the preferences so far."""
    return context.cycles.get(cycle_id)


@router.post("/{cycle_id}/cancel")
def cancel_cycle(cycle_id: int, context: ContextDep, caller: Admin) -> dict[str, Any]:
    return context.cycles.cancel(cycle_id, caller.name)
