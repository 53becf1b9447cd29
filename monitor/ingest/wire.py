"""The ingest path's decoder of ``conversation/v1`` and ``rating/v1``: msgspec, with pydantic as the judge.

:mod:`monitor.events` holds the contract (pydantic models: the API, the simulator and the docs use
them). Validating a turn with them costs about 10 µs of CPU; msgspec decodes the same contract,
declared again below, in about 2 (`monitor bench ingest`, docs/ingest.md). So ingest decodes with
msgspec, and whatever msgspec refuses goes to :func:`monitor.events.parse_conversation` /
:func:`~monitor.events.parse_rating`, which either raise the dead-letter reason (the only place
reasons are decided) or accept a spelling msgspec does not know, which is then converted. Either
way a payload is accepted exactly when the pydantic contract accepts it; tests/test_wire.py holds
the two to that over generated near-valid events.

The structs answer to the attributes ingest reads of the pydantic events (``event_id``,
``segment.domain``, ``prompt``, ``satisfaction``, ...), so rows are built from either alike.

>>> raw = b'''{"schema": "rating/v1", "event_id": "0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0de",
...   "conversation_id": "c-1", "turn": 0, "ts": "2026-11-27T10:01:10Z",
...   "rating": {"kind": "stars", "value": 4}}'''
>>> rating = decode_rating(raw)
>>> rating.rating.kind, rating.satisfaction
('stars', 0.75)
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from monitor.events import (
    MAX_CANDIDATES,
    MAX_MESSAGES,
    MAX_TURN,
    _check_text,
    _load,
    check_size,
    parse_conversation,
    parse_rating,
    prompt_of,
    to_wire,
)

Id = Annotated[str, Meta(min_length=1, max_length=256)]
ModelVersion = Annotated[str, Meta(min_length=1, max_length=128)]
AwareTime = Annotated[datetime, Meta(tz=True)]


class _Wire(Struct, forbid_unknown_fields=True, frozen=True):
    pass


class WireMessage(_Wire, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class WireSegment(_Wire, frozen=True):
    domain: Annotated[str, Meta(min_length=1, max_length=64)]
    locale: Annotated[str, Meta(min_length=1, max_length=32)] | None = None
    channel: Annotated[str, Meta(min_length=1, max_length=32)] | None = None


class WireMetadata(_Wire, frozen=True):
    prompt_risk: Literal["safe", "harmful"] | None = None


class WireCandidate(_Wire, frozen=True):
    content: str
    model_version: ModelVersion | None = None
    reward: float | None = None


class WireConversation(_Wire, frozen=True, rename={"schema_": "schema"}):
    event_id: uuid.UUID
    conversation_id: Id
    turn: Annotated[int, Meta(ge=0, le=MAX_TURN)]
    ts: AwareTime
    schema_: Literal["conversation/v1"]
    model_version: ModelVersion
    messages: Annotated[list[WireMessage], Meta(min_length=1, max_length=MAX_MESSAGES)]
    segment: WireSegment
    reward: float | None = None
    metadata: WireMetadata | None = None
    candidates: Annotated[list[WireCandidate], Meta(max_length=MAX_CANDIDATES)] | None = None

    @property
    def response(self) -> str:
        return self.messages[-1].content

    @property
    def prompt(self) -> str:
        """The last user message before the response ('' when there is none)."""
        return prompt_of(self.messages)


class _WireRating(_Wire, frozen=True, tag_field="kind"):
    @property
    def kind(self) -> str:
        return str(type(self).__struct_config__.tag)


class WireThumbs(_WireRating, frozen=True, tag="thumbs"):
    value: Annotated[int, Meta(ge=0, le=1)]


class WireStars(_WireRating, frozen=True, tag="stars"):
    value: Annotated[int, Meta(ge=1, le=5)]


class WireScore(_WireRating, frozen=True, tag="score"):
    value: Annotated[float, Meta(ge=0.0, le=1.0)]


class WireRating(_Wire, frozen=True, rename={"schema_": "schema"}):
    event_id: uuid.UUID
    conversation_id: Id
    turn: Annotated[int, Meta(ge=0, le=MAX_TURN)]
    ts: AwareTime
    schema_: Literal["rating/v1"]
    rating: WireThumbs | WireStars | WireScore
    reasons: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=32)] = []
    comment: Annotated[str, Meta(max_length=10_000)] | None = None

    @property
    def satisfaction(self) -> float:
        """The rating normalised to [0, 1]: thumbs 0/1, stars (v-1)/4, score as is."""
        rating = self.rating
        if isinstance(rating, WireStars):
            return (rating.value - 1) / 4
        return float(rating.value)


_conversations = msgspec.json.Decoder(WireConversation)
_ratings = msgspec.json.Decoder(WireRating)

#: A ``ts`` with more than 6 fractional digits: msgspec rounds to the microsecond, pydantic truncates.
_SUB_MICROSECOND = re.compile(rb'"ts"\s*:\s*"[^"]*[.,][0-9]{7}')


def _differs(raw: bytes) -> bool:
    """Whether ``raw`` holds a spelling msgspec reads otherwise than the contract."""
    at = raw.find(b'"ts"')  # a memchr-speed scan; the pattern is tried only where it can start
    while at != -1:
        if _SUB_MICROSECOND.match(raw, at):
            return True
        at = raw.find(b'"ts"', at + 4)
    return False


def _finite(reward: float | None) -> bool:
    return reward is None or math.isfinite(reward)


def _checked_text(raw: bytes) -> None:
    # As monitor.events._parse: valid UTF-8 can still carry \u escapes of text PostgreSQL cannot hold.
    if b"\\u" in raw:
        _check_text(_load(raw.decode("utf-8")))


def decode_conversation(raw: bytes) -> WireConversation:
    """Validate a ``conversation/v1`` Kafka value; raise :class:`InvalidEvent` (the contract's reason)."""
    check_size(raw)
    try:
        event = _conversations.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return _judged_conversation(raw)
    if event.messages[-1].role != "assistant" or not _finite(event.reward) or (
            event.candidates is not None and not all(_finite(c.reward) for c in event.candidates)) or _differs(raw):
        return _judged_conversation(raw)
    _checked_text(raw)
    return event


def decode_rating(raw: bytes) -> WireRating:
    """Validate a ``rating/v1`` Kafka value; raise :class:`InvalidEvent` (the contract's reason)."""
    check_size(raw)
    try:
        event = _ratings.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return _ratings.decode(to_wire(parse_rating(raw)))
    if _differs(raw):
        return _ratings.decode(to_wire(parse_rating(raw)))
    _checked_text(raw)
    return event


def _judged_conversation(raw: bytes) -> WireConversation:
    """The pydantic contract's verdict on what msgspec refused: its :class:`InvalidEvent`, or the
    event in its canonical spelling (which msgspec reads)."""
    return _conversations.decode(to_wire(parse_conversation(raw)))
