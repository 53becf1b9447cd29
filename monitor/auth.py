"""API keys and roles: what a key is, how it is stored, which role may do what.

A key is ``mon_`` followed by 43 URL-safe characters (256 random bits). Only its SHA-256 digest is
stored: a key is as strong as a random 256-bit secret, so a fast unsalted digest is enough (a slow
password hash protects *guessable* secrets) and a lookup is one indexed equality.

Roles:

* ``viewer``: the monitoring API (alerts, segments, drift reports, the reward model).
* ``annotator``: the review queue (human evaluation); nothing else.
* ``admin``: everything, including raw conversation text and key management.

>>> key = generate_key()
>>> key.startswith("mon_") and len(key) == 47 and key_digest(key) != key
True
"""

from __future__ import annotations

import hashlib
import re
import secrets

ROLES: tuple[str, ...] = ("viewer", "annotator", "admin")
#: Roles allowed on the monitoring read API.
VIEW = frozenset({"viewer", "admin"})
#: Roles allowed on what only operators may do (raw text, key management, relabeling).
ADMIN = frozenset({"admin"})
#: Roles allowed on the review queue.
ANNOTATE = frozenset({"annotator", "admin"})
KEY_PREFIX = "mon_"
_KEY = re.compile(r"mon_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    return _KEY.fullmatch(value) is not None


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"a key name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {name!r}")
    return name
