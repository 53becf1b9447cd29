"""Plumbing of the operator pages (``/alerts``, ``/cycles``): templates, and sign-in by cookie.

The sign-in works like the annotator page's (:mod:`monitor.api.routers.review_page`): an API key
in an HttpOnly, SameSite=Strict cookie, so another site cannot submit a form with it; its own
cookie, for the whole site, since the operator pages are under several paths. Viewer and admin
keys sign in; an annotator's key is refused with a 403 page. A page asked for without a valid
cookie redirects to ``/login?next=<the page>``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from monitor.api.auth import Principal, principal_of
from monitor.api.context import AppContext
from monitor.auth import VIEW

COOKIE = "monitor_operator_key"
LOGIN = "/login"
HOME = "/alerts"
templates = Environment(loader=PackageLoader("monitor.api", "templates"), autoescape=select_autoescape(["html"]))


def render(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=status)


def refusal(caller: Principal | None, status: int, title: str, message: str) -> HTMLResponse:
    """The error page (403, 404, ...) with the operator pages' header."""
    return render("ops_error.html", status=status, caller=caller, title=title, message=message)


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in; anything else (another site) goes home.

    >>> safe_next("/alerts/3"), safe_next("//evil.example"), safe_next("https://evil.example"), safe_next(None)
    ('/alerts/3', '/alerts', '/alerts', '/alerts')
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return HOME
    return value


def key_holder(request: Request, context: AppContext, key: str | None = None) -> Principal | None:
    """Whoever's key the cookie (or ``key``) holds, of any role; None for none, unknown or revoked."""
    key = key if key is not None else request.cookies.get(COOKIE)
    return principal_of(context, key) if key else None


def operator(request: Request, context: AppContext, back: str | None = None) -> Principal | Response:
    """The viewer or admin signed in; otherwise the response to send instead: a redirect to the
    sign-in page, then back to ``back`` (default: this page), when the cookie holds no valid key;
    a 403 page for a key of another role."""
    caller = key_holder(request, context)
    if caller is None:
        target = back or request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"{LOGIN}?next={quote(target, safe='/')}", status_code=303)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path="/")
        return response
    if caller.role not in VIEW:
        return refusal(caller, 403, "Not for this key",
                       f"The key of {caller.name} has the role {caller.role}: the operator pages need a viewer or "
                       f"admin key. Annotators label on the review page (/review).")
    return caller


def signed_in(response: Response, request: Request, key: str) -> Response:
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


def signed_out() -> Response:
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
