"""Liveness, readiness and the Prometheus scrape endpoint (open, no key), and which reward model
scores (viewer and admin keys)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.api.auth import require
from monitor.api.deps import ContextDep
from monitor.auth import VIEW
from monitor.config import INGEST_ROLES
from monitor.errors import StoreUnavailable
from monitor.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: the body's checks say which dependency failed"}})
def readyz(context: ContextDep) -> JSONResponse:
    """Ready only while the database answers and takes writes, the Kafka broker is reachable and (for
    a remote reward model) the scoring endpoint answers (503 otherwise); each check says why.
    Processes that do not ingest (``MONITOR_ROLE`` api or analyzer) check only the database."""
    checks: dict[str, dict[str, object]] = {}
    health = context.health
    try:
        ping(context.engine)
        checks["database"] = {"ok": True}
    except StoreUnavailable as exc:
        checks["database"] = {"ok": False, "error": str(exc)}
    if health.store_writes_failing:
        checks["database"] = {"ok": False, "error": f"the last ingest write failed: {health.store_error}"}
    if context.settings.role in INGEST_ROLES:
        scorer_ping = getattr(context.scorer, "ping", None)
        if callable(scorer_ping):
            checks["scorer"] = {"ok": bool(scorer_ping())}
        checks["broker"] = {"ok": health.broker_ok, **({"error": health.broker_error} if health.broker_error else {})}
        # Offsets outside their partition's log that were not reset (docs/ingest.md).
        offsets = health.offset_problems
        checks["offsets"] = {"ok": not offsets, **({"error": "; ".join(f"{p}: {why}" for p, why in offsets.items())}
                                                  if offsets else {})}
    ready = all(check["ok"] for check in checks.values())
    body = {
        "ready": ready,
        "checks": checks,
        "last_batch_at": health.last_batch_at.isoformat() if health.last_batch_at else None,
        "last_offset_reset": health.last_offset_reset,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/v1/reward-model", dependencies=[Depends(require(VIEW))])
def reward_model(context: ContextDep) -> dict[str, str]:
    """Which scorer scores new responses (``kind:model@revision``); each stored turn keeps its own."""
    return {"identity": context.scorer.identity}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(context: ContextDep) -> Response:
    return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)
