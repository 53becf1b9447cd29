"""The ``api_keys`` table: create, list, revoke, and look a presented key up by its digest."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.auth import check_name, check_role, generate_key, key_digest, looks_like_key
from monitor.store.models import ApiKey, utcnow


class KeyNameTaken(ValueError):
    """A key of that name exists already (revoked ones keep their name)."""


def create_key(session: Session, role: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key of ``role``: its row and the key itself, which is stored nowhere (digest only)."""
    check_role(role)
    name = check_name(name) if name is not None else f"{role}-{secrets.token_hex(3)}"
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise KeyNameTaken(f"a key named {name!r} exists already; pick another name")
    key = generate_key()
    row = ApiKey(name=name, role=role, digest=key_digest(key), prefix=key[:8], created_at=utcnow())
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name
        raise KeyNameTaken(f"a key named {name!r} exists already; pick another name") from exc
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, name: str) -> ApiKey | None:
    """Revoke the key named ``name`` (None when there is none); revoking twice changes nothing."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def active_key(session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row for a presented key, or None."""
    if not looks_like_key(key):
        return None
    return session.scalar(select(ApiKey).where(ApiKey.digest == key_digest(key), ApiKey.revoked_at.is_(None)))
