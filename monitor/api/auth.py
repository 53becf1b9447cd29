"""Role checks for the API: ``Depends(require(VIEW))`` on a route lets viewer and admin keys in.

The key comes as ``Authorization: Bearer <key>``. Missing, malformed, unknown or revoked: 401 with
``WWW-Authenticate: Bearer``; a valid key of another role: 403. Both render as the API's JSON
error. ``/healthz``, ``/readyz`` and ``/metrics`` carry no such dependency; every ``/v1`` route
does (``tests/test_api_keys.py`` walks the OpenAPI document to make sure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from monitor.api.context import AppContext
from monitor.api.deps import ContextDep
from monitor.errors import Forbidden, Unauthorized
from monitor.store.keys import active_key

_bearer = HTTPBearer(auto_error=False, description="An API key from `monitor keys create`.")


@dataclass(frozen=True)
class Principal:
    """Who called: the key's name and role."""

    name: str
    role: str


def principal_of(context: AppContext, key: str) -> Principal | None:
    """The active key ``key``'s caller; None for an unknown or revoked key."""
    with context.sessions() as session:
        row = active_key(session, key.strip())
        return None if row is None else Principal(row.name, row.role)


def require(roles: frozenset[str]) -> Callable[..., Principal]:
    """A dependency that admits keys of ``roles`` and returns the caller."""
    allowed = ", ".join(sorted(roles))

    def check(request: Request, context: ContextDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        if credentials is None:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' "
                               "(create one with `monitor keys create --role ROLE`)")
        principal = principal_of(context, credentials.credentials)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        if principal.role not in roles:
            raise Forbidden(f"a {principal.role} key may not call {request.method} {request.url.path}: "
                            f"it needs a key of role {allowed}")
        request.state.principal = principal
        return principal

    return check
