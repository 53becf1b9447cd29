"""The annotator page (``/review``): server-rendered HTML forms over the review queue, no front-end
build. An annotator signs in with an API key (kept in an HttpOnly, SameSite=Strict cookie, so
another site cannot submit a form with it), sees the redacted conversation, the rubric and its
keyboard shortcuts, and submits or skips. Everything goes through :class:`ReviewQueue`, like the
JSON API, with the same checks; a rejected form comes back with the error and the answers given.

These routes are not in the OpenAPI document (they are pages, not API); each checks the key's
role itself: annotator or admin.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from monitor.api.auth import Principal, principal_of
from monitor.api.deps import ContextDep, RowId
from monitor.auth import ANNOTATE
from monitor.errors import InvalidInput, MonitorError

router = APIRouter(prefix="/review", include_in_schema=False)
COOKIE = "monitor_review_key"
_templates = Environment(loader=PackageLoader("monitor.api", "templates"), autoescape=select_autoescape(["html"]))


def _render(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**values), status_code=status)


def _caller(request: Request, context: ContextDep, key: str | None = None) -> Principal | None:
    """The annotator (or admin) whose key the cookie (or ``key``) holds; None otherwise."""
    key = key if key is not None else request.cookies.get(COOKIE)
    principal = principal_of(context, key) if key else None
    return principal if principal is not None and principal.role in ANNOTATE else None


def _signed_out() -> Response:
    response = RedirectResponse("/review/login", status_code=303)
    response.delete_cookie(COOKIE, path="/review")
    return response


@router.get("/login")
def login_page() -> HTMLResponse:
    return _render("login.html")


@router.post("/login")
async def login(request: Request, context: ContextDep) -> Response:
    form = await request.form()
    key = str(form.get("key", "")).strip()
    if await run_in_threadpool(_caller, request, context, key) is None:
        return _render("login.html", status=401, error="That key is unknown, revoked, or not an annotator's or "
                                                       "admin's key.")
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/review",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> Response:
    return _signed_out()


@router.get("")
def next_page(request: Request, context: ContextDep) -> Response:
    caller = _caller(request, context)
    if caller is None:
        return _signed_out()
    return _next(context, caller, notice=request.query_params.get("notice"))


def _next(context: ContextDep, caller: Principal, *, notice: str | None = None, error: str | None = None,
          status: int = 200, chosen: dict[str, str] | None = None) -> HTMLResponse:
    item = context.review.next(caller.name)
    if item is None:
        return _render("done.html", status=status if error else 200, annotator=caller.name,
                       notice=error or notice)
    rubric = context.review.rubric
    questions = [raw for raw in rubric.document["items"] if bool(raw.get("pairwise")) == (item["task"] == "pairwise")]
    return _render("item.html", status=status, annotator=caller.name, item=item, rubric=rubric.document,
                   questions=questions, notice=notice, error=error, chosen=chosen or {})


# The two form posts parse the body asynchronously, then do their store work in the thread pool,
# as the sync routes do, so a slow database never blocks the event loop.


@router.post("/items/{item_id}/annotate")
async def annotate(item_id: RowId, request: Request, context: ContextDep) -> Response:
    form = {name: str(value) for name, value in (await request.form()).items()}
    return await run_in_threadpool(_annotate, item_id, request, context, form)


def _annotate(item_id: int, request: Request, context: ContextDep, form: dict[str, str]) -> Response:
    caller = _caller(request, context)
    if caller is None:
        return _signed_out()
    rubric = context.review.rubric
    labels: dict[str, Any] = {}
    for item in rubric.items:
        if item.name in form and form[item.name] != "":
            value = form[item.name]
            labels[item.name] = int(value) if item.kind == "ordinal" and value.lstrip("-").isdigit() else value
    try:
        context.review.submit(item_id, caller.name, form.get("lease_id", ""), labels, form.get("comment") or None)
    except InvalidInput as exc:  # the same item again, with what was chosen and what is wrong
        return _next(context, caller, error=str(exc), status=exc.status_code, chosen=form)
    except MonitorError as exc:  # an expired or foreign lease, a double submit: on to the next item
        return _next(context, caller, error=str(exc), status=exc.status_code)
    return RedirectResponse(f"/review?notice=Saved+item+{item_id}", status_code=303)


@router.post("/items/{item_id}/skip")
async def skip(item_id: RowId, request: Request, context: ContextDep) -> Response:
    form = {name: str(value) for name, value in (await request.form()).items()}
    return await run_in_threadpool(_skip, item_id, request, context, form)


def _skip(item_id: int, request: Request, context: ContextDep, form: dict[str, str]) -> Response:
    caller = _caller(request, context)
    if caller is None:
        return _signed_out()
    try:
        context.review.skip(item_id, caller.name, str(form.get("lease_id", "")), str(form.get("reason", "")))
    except MonitorError as exc:
        return _next(context, caller, error=str(exc), status=exc.status_code)
    return RedirectResponse(f"/review?notice=Skipped+item+{item_id}", status_code=303)
