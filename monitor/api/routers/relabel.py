"""Relabeling cycles (``/v1/relabel-cycles``): admins open and cancel them; viewers and admins follow
them and export their labels (a TRL preference dataset, :mod:`monitor.relabel.export`). A retried
``POST`` with the same ``Idempotency-Key`` returns the same cycle (200 instead of 201); the same key
with another body is a 409. See :mod:`monitor.relabel.cycles`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse, Response

from monitor.api.auth import Principal, require
from monitor.api.deps import ContextDep, RowId, SessionDep
from monitor.auth import ADMIN, VIEW
from monitor.relabel.cycles import CycleRequest
from monitor.relabel.export import MEDIA_TYPES, ExportFormat, cycle_export, render

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
def show_cycle(cycle_id: RowId, context: ContextDep, _caller: Viewer) -> dict[str, Any]:
    """Status, progress (pairs labelled) and the preferences so far."""
    return context.cycles.get(cycle_id)


@router.get("/{cycle_id}/export", response_class=Response,
            responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()},
                             "description": "The preference dataset, as an attachment."},
                       409: {"description": "No pair has a clear human preference yet."}})
def export_cycle(cycle_id: RowId, _caller: Viewer, session: SessionDep,
                 fmt: Annotated[ExportFormat, Query(alias="format")] = "jsonl") -> Response:
    """The cycle's labelled pairs as a TRL preference dataset (conversational prompt / chosen / rejected,
    redacted text, provenance columns); ties and unlabelled pairs are left out (docs/relabel.md)."""
    rows = cycle_export(session, cycle_id).require_rows().rows
    return Response(render(rows, fmt), media_type=MEDIA_TYPES[fmt],
                    headers={"Content-Disposition": f"attachment; filename=cycle-{cycle_id}.{fmt}"})


@router.post("/{cycle_id}/cancel")
def cancel_cycle(cycle_id: RowId, context: ContextDep, caller: Admin) -> dict[str, Any]:
    return context.cycles.cancel(cycle_id, caller.name)
