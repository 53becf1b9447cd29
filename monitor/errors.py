"""The one exception tree of `monitor`.

    MonitorError
    ├── ConfigError            a setting is unknown or invalid (raised at start)
    ├── InvalidEvent           a Kafka payload breaks its wire contract (goes to the dead-letter topic)
    ├── ScoringError           a scorer could not score a batch at all
    ├── StoreUnavailable       the database cannot be reached
    ├── BrokerUnavailable      the Kafka bootstrap servers cannot be reached
    ├── NotFound               an API lookup found nothing (HTTP 404)
    ├── Unauthorized           no API key, or an unknown or revoked one (HTTP 401)
    ├── Forbidden              a valid key whose role may not do this (HTTP 403)
    ├── Conflict               the request clashes with the resource's state (HTTP 409)
    └── InvalidInput           a well-formed request whose content is refused (HTTP 422)

Third-party exceptions are translated at the boundary with ``raise ... from``. Errors that an API
handler may raise carry an HTTP ``status_code``.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base of every error `monitor` raises on purpose."""

    status_code = 500
    #: Extra response headers when an API handler renders the error.
    headers: dict[str, str] | None = None


class ConfigError(MonitorError):
    """A setting is unknown or has an invalid value."""


#: Longest ``detail`` of an :class:`InvalidEvent`.
MAX_DETAIL = 1000


class InvalidEvent(MonitorError):
    """A payload that breaks its wire contract.

    ``reason`` is one of :data:`monitor.events.DEAD_LETTER_REASONS` (a small fixed set, safe as a
    metric label); ``detail`` is the human-readable explanation stored with the dead letter, cut to
    :data:`MAX_DETAIL` characters: explanations quote the input, and a record must not grow its own
    dead letter past what the dead-letter topic accepts.

    >>> len(InvalidEvent("invalid_fields", "x" * 100_000).detail) < 1100
    True
    """

    status_code = 422

    def __init__(self, reason: str, detail: str) -> None:
        if len(detail) > MAX_DETAIL:
            detail = f"{detail[:MAX_DETAIL]}... ({len(detail) - MAX_DETAIL} more characters)"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ScoringError(MonitorError):
    """A scorer failed for a whole batch (individual failures are recorded per response)."""

    status_code = 503


class StoreUnavailable(MonitorError):
    """The database cannot be reached."""

    status_code = 503


class BrokerUnavailable(MonitorError):
    """The Kafka bootstrap servers cannot be reached."""

    status_code = 503


class NotFound(MonitorError):
    """The requested resource does not exist."""

    status_code = 404


class Unauthorized(MonitorError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(MonitorError):
    """A valid API key whose role may not do this."""

    status_code = 403


class Conflict(MonitorError):
    """The request clashes with the resource's current state (a double submit, an expired lease)."""

    status_code = 409


class InvalidInput(MonitorError):
    """A well-formed request whose content is refused (labels outside the rubric, a comment too long)."""

    status_code = 422
