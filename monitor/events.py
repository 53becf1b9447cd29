"""Wire contracts: ``conversation/v1`` and ``rating/v1`` (see DESIGN.md), strictly validated.

:func:`parse_conversation` and :func:`parse_rating` take the raw Kafka value (bytes) and return a
validated event or raise :class:`~monitor.errors.InvalidEvent` with a reason from
:data:`DEAD_LETTER_REASONS`. Nothing is coerced: a string where a number belongs, an unknown field,
a naive timestamp or an unknown ``schema`` is rejected.

>>> raw = b'''{"schema": "rating/v1", "event_id": "0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0de",
...   "conversation_id": "c-1", "turn": 0, "ts": "2026-11-27T10:01:10Z",
...   "rating": {"kind": "stars", "value": 4}}'''
>>> parse_rating(raw).satisfaction
0.75
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from monitor.errors import InvalidEvent

CONVERSATION_SCHEMA = "conversation/v1"
RATING_SCHEMA = "rating/v1"

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_MESSAGES = 200
#: Turns are stored in a 32-bit column; a larger value is a producer bug, not a conversation.
MAX_TURN = 1_000_000

#: Why a payload was dead-lettered. Fixed and small: these are Prometheus label values.
DEAD_LETTER_REASONS = (
    "oversize",  # the Kafka value is over MAX_MESSAGE_BYTES
    "invalid_utf8",  # not UTF-8, or text PostgreSQL cannot hold (NUL, lone surrogates)
    "invalid_json",  # not a JSON object
    "unknown_schema",  # `schema` missing or not the one this topic carries
    "too_many_messages",  # a conversation over MAX_MESSAGES messages
    "invalid_fields",  # anything else the contract forbids
    # Ingest's bounds on `ts` (monitor.ingest.decode.TimestampBounds), checked after the contract:
    "future_timestamp",  # ts more than MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS ahead of the ingest clock
    "ancient_timestamp",  # ts before MONITOR_INGEST_TIMESTAMP_FLOOR
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Segment(_Strict):
    domain: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    locale: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    channel: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None


class EventMetadata(_Strict):
    """Optional facts the producer knows about a turn. ``prompt_risk`` is the producer's own
    safety verdict on the prompt; when absent the monitor classifies the prompt itself."""

    prompt_risk: Literal["safe", "harmful"] | None = None


#: Alternative responses one event may carry (pairwise review).
MAX_CANDIDATES = 8


class CandidateResponse(_Strict):
    """An alternative response to the same prompt (another sample, another model): the review
    queue shows it beside the served one as a pairwise task."""

    content: str
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    reward: float | None = None

    @field_validator("reward")
    @classmethod
    def _finite(cls, reward: float | None) -> float | None:
        return _finite_reward(reward)


def _finite_reward(reward: float | None) -> float | None:
    """The check both a turn's and a candidate's ``reward`` pass: a finite number or absent."""
    if reward is not None and not math.isfinite(reward):
        raise ValueError("reward must be a finite number")
    return reward


class _TurnEvent(_Strict):
    """Fields both topics share: the event's identity and the assistant turn it is about."""

    event_id: uuid.UUID
    conversation_id: Id
    turn: Annotated[int, Field(ge=0, le=MAX_TURN)]
    ts: AwareDatetime


class ConversationEvent(_TurnEvent):
    """One assistant turn. The last message is the assistant response under watch."""

    schema_: Literal["conversation/v1"] = Field(alias="schema")
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    segment: Segment
    reward: float | None = None
    metadata: EventMetadata | None = None
    #: Optional alternative responses to the same prompt (backward compatible: absent is None).
    candidates: Annotated[list[CandidateResponse], Field(max_length=MAX_CANDIDATES)] | None = None

    @field_validator("messages")
    @classmethod
    def _ends_with_assistant(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "assistant":
            raise ValueError("the last message must be the assistant response")
        return messages

    @field_validator("reward")
    @classmethod
    def _finite(cls, reward: float | None) -> float | None:
        return _finite_reward(reward)

    @property
    def response(self) -> str:
        return self.messages[-1].content

    @property
    def prompt(self) -> str:
        """The last user message before the response ('' when there is none)."""
        return prompt_of(self.messages)


def prompt_of(messages: Sequence[Any]) -> str:
    """The last user message before the response (the last message); '' when there is none."""
    for message in reversed(messages[:-1]):
        if message.role == "user":
            return str(message.content)
    return ""


def check_size(raw: bytes) -> None:
    """Raise :class:`InvalidEvent` (``oversize``) for a Kafka value over :data:`MAX_MESSAGE_BYTES`."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("oversize", f"{len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")


class ThumbsRating(_Strict):
    kind: Literal["thumbs"]
    # Literal[0, 1] would match true/false and 1.0 by equality; a strict int does not.
    value: Annotated[int, Field(ge=0, le=1)]

    def satisfaction(self) -> float:
        return float(self.value)


class StarsRating(_Strict):
    kind: Literal["stars"]
    value: Annotated[int, Field(ge=1, le=5)]

    def satisfaction(self) -> float:
        return (self.value - 1) / 4


class ScoreRating(_Strict):
    kind: Literal["score"]
    value: Annotated[float, Field(ge=0.0, le=1.0)]

    def satisfaction(self) -> float:
        return float(self.value)


Rating = Annotated[ThumbsRating | StarsRating | ScoreRating, Field(discriminator="kind")]


class RatingEvent(_TurnEvent):
    """A user's rating of one assistant turn; may arrive before the turn itself."""

    schema_: Literal["rating/v1"] = Field(alias="schema")
    rating: Rating
    reasons: Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=32)] = []
    comment: Annotated[str, StringConstraints(max_length=10_000)] | None = None

    @property
    def satisfaction(self) -> float:
        """The rating normalised to [0, 1]: thumbs 0/1, stars (v-1)/4, score as is."""
        return self.rating.satisfaction()


FLAG_SCHEMA = "flag/v1"


class FlagEvent(_Strict):
    """A divergence alert changing state, as published on the flags topic (key = segment).

    One event per (alert, state): ``firing`` when first detected, ``resolved`` when it clears.
    ``flag_id`` is stable for that pair, so a consumer can drop the duplicates that at-least-once
    publishing may deliver.
    """

    schema_: Literal["flag/v1"] = Field(alias="schema")
    flag_id: uuid.UUID
    alert_key: str
    segment: str
    detector: str
    direction: Literal["up", "down"]
    mode: str
    modes: list[str]
    state: Literal["firing", "resolved"]
    started_at: AwareDatetime
    resolved_at: AwareDatetime | None
    emitted_at: AwareDatetime
    window: dict[str, float | int | str | None]
    top_event_ids: list[str]


def parse_flag(raw: bytes) -> FlagEvent:
    """Validate a ``flag/v1`` Kafka value; raise :class:`InvalidEvent`."""
    return _parse(FlagEvent, raw, FLAG_SCHEMA)  # type: ignore[return-value]


RELABEL_CYCLE_SCHEMA = "relabel_cycle/v1"


class RelabelCycleEvent(_Strict):
    """A relabeling cycle that ended (``complete``, ``expired`` at its deadline, or ``insufficient``),
    on the relabel topic (key = the cycle id) and to the webhook: what a training pipeline needs to
    fetch its preference set (``export``, a path under the API) and judge it (``rm_audit``).

    ``event_id`` is stable per cycle, so a consumer can drop the duplicates that at-least-once
    publishing may deliver.
    """

    schema_: Literal["relabel_cycle/v1"] = Field(alias="schema")
    event_id: uuid.UUID
    cycle_id: int
    status: Literal["complete", "expired", "insufficient"]
    detail: str | None
    segments: list[str]
    mode: str | None
    strategy: str
    alert_id: int | None
    pairs: int
    labelled: int
    preferences: dict[str, int]
    rm_accuracy: float | None
    rm_accuracy_ci95: list[float] | None
    reference_accuracy: float | None
    created_by: str
    created_at: AwareDatetime
    finished_at: AwareDatetime
    emitted_at: AwareDatetime
    export: str


def parse_relabel_cycle(raw: bytes) -> RelabelCycleEvent:
    """Validate a ``relabel_cycle/v1`` Kafka value or webhook body; raise :class:`InvalidEvent`."""
    return _parse(RelabelCycleEvent, raw, RELABEL_CYCLE_SCHEMA)  # type: ignore[return-value]


def _parse(model: type[_Strict], raw: bytes, schema: str) -> _Strict:
    check_size(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_utf8", f"not valid UTF-8: {exc}") from exc
    try:
        # Strict JSON mode: ISO strings become datetimes/UUIDs, nothing else is coerced.
        event = model.model_validate_json(text)
    except ValidationError as exc:
        raise _classify(text, schema, exc) from exc
    # Valid UTF-8 can still carry \u escapes of text that UTF-8 (and PostgreSQL) cannot hold.
    if "\\u" in text:
        _check_text(_load(text))
    # `extra="forbid"` lets the attribute name of the aliased `schema` field through.
    if '"schema_"' in text and "schema_" in _load(text):
        raise InvalidEvent("invalid_fields", "schema_: Extra inputs are not permitted")
    return event


def _load(text: str) -> Any:
    """``json.loads``, its every failure an :class:`InvalidEvent`: not JSON, nested too deep, or a
    number Python refuses to convert (an integer of more than 4,300 digits)."""
    try:
        return json.loads(text)
    except RecursionError as error:
        raise InvalidEvent("invalid_json", f"not JSON: nested too deep ({error})") from error
    except json.JSONDecodeError as error:
        raise InvalidEvent("invalid_json", f"not JSON: {error}") from error
    except ValueError as error:  # the digit limit on int(): valid JSON, but no contract field is that big
        raise InvalidEvent("invalid_fields", f"a number out of any field's range: {error}") from error


def _classify(text: str, schema: str, exc: ValidationError) -> InvalidEvent:
    """Why a payload failed, in a fixed order of precedence (the hot path never gets here)."""
    try:
        document = _load(text)
    except InvalidEvent as error:
        return error
    if not isinstance(document, dict):
        return InvalidEvent("invalid_json", f"expected a JSON object, got {type(document).__name__}")
    try:
        _check_text(document)
    except InvalidEvent as error:
        return error
    if document.get("schema") != schema:
        return InvalidEvent("unknown_schema", f"expected schema {schema!r}, got {document.get('schema')!r}")
    messages = document.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        return InvalidEvent("too_many_messages", f"{len(messages)} messages exceeds the limit of {MAX_MESSAGES}")
    return InvalidEvent("invalid_fields", _summarise(exc))


def _check_text(value: object) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidEvent("invalid_utf8", "text contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEvent("invalid_utf8", f"text is not valid Unicode: {exc.reason}") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


def _summarise(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_conversation(raw: bytes) -> ConversationEvent:
    """Validate a ``conversation/v1`` Kafka value; raise :class:`InvalidEvent`."""
    return _parse(ConversationEvent, raw, CONVERSATION_SCHEMA)  # type: ignore[return-value]


def parse_rating(raw: bytes) -> RatingEvent:
    """Validate a ``rating/v1`` Kafka value; raise :class:`InvalidEvent`."""
    return _parse(RatingEvent, raw, RATING_SCHEMA)  # type: ignore[return-value]


def to_wire(event: ConversationEvent | RatingEvent | FlagEvent | RelabelCycleEvent) -> bytes:
    """Serialise an event exactly as producers put it on the wire (an event without ``candidates``
    leaves the field out, as producers that predate it do)."""
    exclude = {"candidates"} if isinstance(event, ConversationEvent) and event.candidates is None else None
    return event.model_dump_json(by_alias=True, exclude=exclude).encode("utf-8")


def timestamp(value: datetime) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, the wire format of ``ts``."""
    return value.isoformat().replace("+00:00", "Z")
