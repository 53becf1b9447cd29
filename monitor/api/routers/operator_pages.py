"""The operator pages: ``/alerts`` (list), ``/alerts/{id}`` (an alert's evidence and the button that
opens a relabeling cycle on it), ``/cycles`` and ``/cycles/{id}``; sign-in at ``/login``.

Server-rendered (Jinja2, autoescaped), charts as server-side SVG. Viewers and admins read; only
admins open a cycle, through :class:`~monitor.relabel.cycles.CycleService` like the JSON API. The
form carries a token drawn per page render, sent as the idempotency key: a double submit opens
one cycle. Not in the OpenAPI document (pages, not API); each route checks the cookie's role.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from monitor.api.alert_view import alert_page
from monitor.api.auth import Principal
from monitor.api.deps import ContextDep, RowId
from monitor.api.pages import (
    key_holder,
    operator,
    refusal,
    render,
    safe_next,
    signed_in,
    signed_out,
)
from monitor.auth import ADMIN, VIEW
from monitor.errors import Conflict, InvalidInput, NotFound
from monitor.relabel.cycles import CycleRequest
from monitor.relabel.pairs import STRATEGIES
from monitor.store.analysis import list_alerts
from monitor.store.models import Alert

router = APIRouter(include_in_schema=False)
#: The relabel form's default cycle size.
DEFAULT_SIZE = 50


@router.get("/login")
def login_page(next: str | None = None) -> HTMLResponse:
    return render("ops_login.html", next=safe_next(next))


@router.post("/login")
async def login(request: Request, context: ContextDep) -> Response:
    form = await request.form()
    key, target = str(form.get("key", "")).strip(), safe_next(str(form.get("next", "")))
    caller = await run_in_threadpool(key_holder, request, context, key)
    if caller is None:
        return render("ops_login.html", status=401, next=target, error="That key is unknown or revoked.")
    if caller.role not in VIEW:
        return render("ops_login.html", status=403, next=target,
                      error=f"That is an {caller.role}'s key: the operator pages need a viewer or admin key. "
                            f"Annotators sign in on the review page (/review).")
    return signed_in(RedirectResponse(target, status_code=303), request, key)


@router.post("/logout")
def logout() -> Response:
    return signed_out()


@router.get("/alerts")
def alerts(request: Request, context: ContextDep, state: Literal["firing", "resolved"] | None = None,
           segment: Annotated[str | None, Query(max_length=256)] = None,
           limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Response:
    """The alerts, newest first; ``state`` and ``segment`` narrow them (Prometheus alert rules link
    here with both)."""
    caller = operator(request, context)
    if isinstance(caller, Response):
        return caller
    with context.sessions() as session:
        return render("ops_alerts.html", caller=caller, state=state,
                      alerts=list_alerts(session, state=state, segment=segment, limit=limit))


@router.get("/alerts/{alert_id}")
def show_alert(alert_id: RowId, request: Request, context: ContextDep) -> Response:
    caller = operator(request, context)
    if isinstance(caller, Response):
        return caller
    return _alert(context, caller, alert_id)


def _alert(context: ContextDep, caller: Principal, alert_id: int, *, error: str | None = None, status: int = 200,
           chosen: dict[str, str] | None = None) -> HTMLResponse:
    with context.sessions() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            return refusal(caller, 404, "No such alert", f"alert {alert_id} not found")
        view = alert_page(session, context.cycles.scheme, alert,
                          timedelta(minutes=context.settings.analyze_window_minutes))
        return render("ops_alert.html", status=status, caller=caller, can_relabel=caller.role in ADMIN,
                      form_token=secrets.token_urlsafe(24), strategies=STRATEGIES, error=error,
                      chosen=chosen or {"size": str(DEFAULT_SIZE), "strategy": STRATEGIES[0]}, **view)


@router.post("/alerts/{alert_id}/relabel")
async def open_cycle(alert_id: RowId, request: Request, context: ContextDep) -> Response:
    form = {name: str(value) for name, value in (await request.form()).items()}
    return await run_in_threadpool(_open_cycle, alert_id, request, context, form)


def _open_cycle(alert_id: int, request: Request, context: ContextDep, form: dict[str, str]) -> Response:
    caller = operator(request, context, back=f"/alerts/{alert_id}")
    if isinstance(caller, Response):
        return caller
    if caller.role not in ADMIN:
        return refusal(caller, 403, "Admins only", f"Opening a relabeling cycle needs an admin key; {caller.name} "
                                                   f"is signed in as a {caller.role}.")
    token = form.get("form_token", "").strip()
    try:
        if not token or len(token) > 128:
            raise InvalidInput("the form carries no valid token: reload the page and submit it again")
        cycle_request = CycleRequest.model_validate(
            {"alert_id": alert_id, "size": form.get("size", ""), "strategy": form.get("strategy") or STRATEGIES[0]})
        cycle, created = context.cycles.create(cycle_request, caller.name, idempotency_key=token)
    except ValidationError as exc:
        shown = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _alert(context, caller, alert_id, error=shown, status=422, chosen=form)
    except (InvalidInput, Conflict) as exc:
        return _alert(context, caller, alert_id, error=str(exc), status=exc.status_code, chosen=form)
    except NotFound as exc:
        return refusal(caller, 404, "No such alert", str(exc))
    return RedirectResponse(f"/cycles?opened={cycle['id']}&created={int(created)}", status_code=303)


@router.get("/cycles")
def cycles(request: Request, context: ContextDep, opened: int | None = None, created: int = 1,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    caller = operator(request, context)
    if isinstance(caller, Response):
        return caller
    return render("ops_cycles.html", caller=caller, cycles=context.cycles.list(limit), opened=opened,
                  created=bool(created))


@router.get("/cycles/{cycle_id}")
def show_cycle(cycle_id: RowId, request: Request, context: ContextDep) -> Response:
    caller = operator(request, context)
    if isinstance(caller, Response):
        return caller
    try:
        cycle = context.cycles.get(cycle_id)
    except NotFound as exc:
        return refusal(caller, 404, "No such cycle", str(exc))
    return render("ops_cycle.html", caller=caller, cycle=cycle)

