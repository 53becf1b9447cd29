"""Unit tests of the wire contracts ``conversation/v1`` and ``rating/v1`` (monitor.events)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.errors import InvalidEvent, MonitorError
from monitor.events import (
    DEAD_LETTER_REASONS,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGES,
    ConversationEvent,
    RatingEvent,
    parse_conversation,
    parse_rating,
    timestamp,
    to_wire,
)
from tests.factories import conversation, rating, wire

Parser = Callable[[bytes], Any]
PARSERS = pytest.mark.parametrize("parse", [parse_conversation, parse_rating], ids=["conversation", "rating"])


def rejected(parse: Parser, raw: bytes) -> InvalidEvent:
    """Parse ``raw``, expect :class:`InvalidEvent`, and check its reason is a known label."""
    with pytest.raises(InvalidEvent) as info:
        parse(raw)
    assert info.value.reason in DEAD_LETTER_REASONS
    assert info.value.detail
    return info.value


def reason(parse: Parser, raw: bytes) -> str:
    return rejected(parse, raw).reason


def messages(*roles: str) -> list[dict[str, str]]:
    return [{"role": role, "content": f"{role} {i}"} for i, role in enumerate(roles)]


# --- valid events ---------------------------------------------------------------------------------


def test_valid_conversation_parses_every_field() -> None:
    event_id = str(uuid.uuid4())
    event = parse_conversation(wire(conversation("c-42", 3, reward=0.25, domain="payments", event_id=event_id)))

    assert isinstance(event, ConversationEvent)
    assert event.schema_ == "conversation/v1"
    assert event.event_id == uuid.UUID(event_id)
    assert event.conversation_id == "c-42"
    assert event.turn == 3
    assert event.ts == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert event.ts.utcoffset() == timedelta(0)
    assert event.model_version == "assistant-2026-11-20"
    assert [m.role for m in event.messages] == ["user", "assistant"]
    assert event.segment.domain == "payments"
    assert event.segment.locale == "en-GB"
    assert event.segment.channel == "app"
    assert event.reward == 0.25
    assert event.response == "You can freeze your card in the app."
    assert event.prompt == "How do I freeze my card?"


def test_valid_rating_parses_every_field() -> None:
    event_id = str(uuid.uuid4())
    raw = wire(rating("c-42", 3, kind="stars", value=4, event_id=event_id, reasons=["too_long"], comment="meh"))
    event = parse_rating(raw)

    assert isinstance(event, RatingEvent)
    assert event.schema_ == "rating/v1"
    assert event.event_id == uuid.UUID(event_id)
    assert event.conversation_id == "c-42"
    assert event.turn == 3
    assert event.ts == datetime(2026, 11, 27, 10, 1, 10, tzinfo=UTC)
    assert event.rating.kind == "stars"
    assert event.rating.value == 4
    assert event.reasons == ["too_long"]
    assert event.comment == "meh"
    assert event.satisfaction == 0.75


@pytest.mark.parametrize("reward", [None, 0, 1, -3.5, 0.5, 1e300])
def test_reward_is_optional_and_any_finite_number(reward: float | None) -> None:
    assert parse_conversation(wire(conversation(reward=reward))).reward == reward


def test_reward_may_be_absent() -> None:
    event = conversation()
    del event["reward"]
    assert parse_conversation(wire(event)).reward is None


def test_optional_segment_fields_and_rating_fields_may_be_absent() -> None:
    conv = conversation(segment={"domain": "cards"})
    parsed = parse_conversation(wire(conv))
    assert (parsed.segment.locale, parsed.segment.channel) == (None, None)

    rate = rating()
    del rate["reasons"], rate["comment"]
    parsed_rating = parse_rating(wire(rate))
    assert parsed_rating.reasons == []
    assert parsed_rating.comment is None


def test_timezone_offset_is_kept() -> None:
    event = parse_conversation(wire(conversation(ts="2026-11-27T12:00:00+02:00")))
    assert event.ts == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert event.ts.utcoffset() == timedelta(hours=2)


def test_non_ascii_text_is_fine() -> None:
    event = parse_conversation(wire(conversation(response="Ça marche 👍 — 完成")))
    assert event.response == "Ça marche 👍 — 完成"
    raw = json.dumps(conversation(response="Ça marche 👍"), ensure_ascii=False).encode("utf-8")
    assert parse_conversation(raw).response == "Ça marche 👍"


def test_events_are_frozen() -> None:
    event = parse_conversation(wire(conversation()))
    with pytest.raises(ValidationError):
        event.turn = 7  # type: ignore[misc]


def test_invalid_event_is_a_monitor_error_with_http_422() -> None:
    error = rejected(parse_conversation, b"not json")
    assert isinstance(error, MonitorError)
    assert error.status_code == 422
    assert str(error).startswith("invalid_json: ")


# --- satisfaction normalisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "satisfaction"),
    [
        ("thumbs", 0, 0.0),
        ("thumbs", 1, 1.0),
        ("stars", 1, 0.0),
        ("stars", 2, 0.25),
        ("stars", 3, 0.5),
        ("stars", 4, 0.75),
        ("stars", 5, 1.0),
        ("score", 0, 0.0),
        ("score", 0.0, 0.0),
        ("score", 0.3, 0.3),
        ("score", 0.999, 0.999),
        ("score", 1, 1.0),
        ("score", 1.0, 1.0),
    ],
)
def test_satisfaction_normalisation(kind: str, value: float, satisfaction: float) -> None:
    event = parse_rating(wire(rating(kind=kind, value=value)))
    assert event.rating.kind == kind
    assert event.satisfaction == pytest.approx(satisfaction)
    assert isinstance(event.satisfaction, float)
    assert 0.0 <= event.satisfaction <= 1.0


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("thumbs", -1),
        ("thumbs", 2),
        ("thumbs", 0.5),
        ("stars", 0),
        ("stars", 6),
        ("stars", -1),
        ("stars", 10),
        ("score", -0.01),
        ("score", 1.01),
        ("score", 2),
        ("score", -1),
    ],
)
def test_out_of_range_rating_value_is_rejected(kind: str, value: float) -> None:
    assert reason(parse_rating, wire(rating(kind=kind, value=value))) == "invalid_fields"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_score_is_rejected(literal: str) -> None:
    raw = wire(rating(kind="score", value=0.5)).replace(b'"value": 0.5', b'"value": ' + literal.encode())
    assert literal.encode() in raw
    assert reason(parse_rating, raw) == "invalid_fields"


@pytest.mark.parametrize("kind", ["likert", "THUMBS", "", None, 1])
def test_unknown_rating_kind_is_rejected(kind: object) -> None:
    assert reason(parse_rating, wire(rating(kind=kind, value=1))) == "invalid_fields"  # type: ignore[arg-type]


# --- oversize -------------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A valid conversation exactly ``size`` bytes long."""
    base = wire(conversation(response=""))
    raw = wire(conversation(response="x" * (size - len(base)), event_id=json.loads(base)["event_id"]))
    assert len(raw) == size
    return raw


def test_value_of_exactly_one_mib_is_accepted() -> None:
    assert MAX_MESSAGE_BYTES == 1024 * 1024
    event = parse_conversation(_padded(MAX_MESSAGE_BYTES))
    assert len(event.response) > 1_000_000


@PARSERS
def test_value_over_one_mib_is_oversize(parse: Parser) -> None:
    assert reason(parse, _padded(MAX_MESSAGE_BYTES + 1)) == "oversize"


def test_oversize_is_checked_before_decoding() -> None:
    assert reason(parse_rating, b"\xff" * (MAX_MESSAGE_BYTES + 1)) == "oversize"


# --- invalid UTF-8 ---------------------------------------------------------------------------------


@PARSERS
@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b'{"schema": "conversation/v1", "x": "\xff"}',
        b'{"schema": "rating/v1", "x": "\xc3"}',  # truncated two-byte sequence
        b'{"x": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"x": "\xed\xa0\x80"}',  # a UTF-16 surrogate encoded as UTF-8 (CESU)
        "{\"x\": \"caf\u00e9\"}".encode("latin-1"),
    ],
    ids=["bare-ff", "ff-in-string", "truncated", "overlong", "encoded-surrogate", "latin-1"],
)
def test_invalid_utf8_bytes(parse: Parser, raw: bytes) -> None:
    assert reason(parse, raw) == "invalid_utf8"


def _smuggle(document: dict[str, Any], path: tuple[Any, ...], escape: str) -> bytes:
    """``document`` on the wire with the JSON escape ``escape`` appended to the string at ``path``."""
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = target[path[-1]] + "@@SMUGGLED@@"
    raw = wire(document)
    assert raw.count(b"@@SMUGGLED@@") == 1
    return raw.replace(b"@@SMUGGLED@@", escape.encode("ascii"))


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\udc00\\ud800", "\\u0000"],
                         ids=["lone-high", "lone-low", "reversed-pair", "nul"])
@pytest.mark.parametrize(
    "path",
    [("messages", 1, "content"), ("messages", 0, "content"), ("conversation_id",), ("segment", "domain")],
    ids=["response", "prompt", "conversation_id", "segment"],
)
def test_escaped_lone_surrogate_or_nul_in_conversation(path: tuple[Any, ...], escape: str) -> None:
    assert reason(parse_conversation, _smuggle(conversation(), path, escape)) == "invalid_utf8"


@pytest.mark.parametrize("escape", ["\\ud83d", "\\u0000"], ids=["lone-surrogate", "nul"])
def test_escaped_lone_surrogate_or_nul_in_rating(escape: str) -> None:
    assert reason(parse_rating, _smuggle(rating(comment="ok"), ("comment",), escape)) == "invalid_utf8"
    assert reason(parse_rating, _smuggle(rating(reasons=["too_long"]), ("reasons", 0), escape)) == "invalid_utf8"


@PARSERS
@pytest.mark.parametrize("key", ["\\ud800", "a\\u0000"])
def test_escaped_bad_text_in_an_object_key(parse: Parser, key: str) -> None:
    raw = b'{"schema": "conversation/v1", "' + key.encode() + b'": 1}'
    assert reason(parse, raw) == "invalid_utf8"


def test_escaped_surrogate_pair_is_fine() -> None:
    raw = _smuggle(conversation(response="smile "), ("messages", 1, "content"), "\\ud83d\\ude00")
    assert parse_conversation(raw).response == "smile \U0001F600"


def test_raw_nul_byte_inside_a_string_is_not_accepted() -> None:
    raw = wire(conversation(response="a@b")).replace(b"a@b", b"a\x00b")
    # A raw control character is not even JSON; either way it must not get through.
    assert reason(parse_conversation, raw) in ("invalid_json", "invalid_utf8")


# --- not a JSON object ----------------------------------------------------------------------------


@PARSERS
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"not json",
        b"{",
        b'{"schema": "conversation/v1",}',
        b"{'schema': 'rating/v1'}",
        b"[]",
        b'[{"schema": "conversation/v1"}]',
        b'"a string"',
        b'"{\\"schema\\": \\"rating/v1\\"}"',
        b"42",
        b"3.5",
        b"null",
        b"true",
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b"[" * 100_000,
        b'{"a":' * 100_000,
    ],
    ids=["empty", "blank", "text", "unclosed", "trailing-comma", "single-quotes", "array", "array-of-event",
         "string", "string-of-event", "int", "float", "null", "true", "bom", "deep-array", "deep-object"],
)
def test_not_a_json_object(parse: Parser, raw: bytes) -> None:
    assert reason(parse, raw) == "invalid_json"


def test_valid_event_followed_by_garbage_is_invalid_json() -> None:
    assert reason(parse_conversation, wire(conversation()) + b" {}") == "invalid_json"


# --- schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    ["conversation/v2", "conversation", "Conversation/v1", "conversation/v1 ", "rating/v1", "", None, 1,
     ["conversation/v1"]],
)
def test_conversation_with_wrong_schema(schema: object) -> None:
    assert reason(parse_conversation, wire(conversation(schema=schema))) == "unknown_schema"


@pytest.mark.parametrize("schema", ["rating/v2", "conversation/v1", "RATING/V1", "", None, {}])
def test_rating_with_wrong_schema(schema: object) -> None:
    assert reason(parse_rating, wire(rating(schema=schema))) == "unknown_schema"


def test_missing_schema() -> None:
    conv, rate = conversation(), rating()
    del conv["schema"], rate["schema"]
    assert reason(parse_conversation, wire(conv)) == "unknown_schema"
    assert reason(parse_rating, wire(rate)) == "unknown_schema"
    assert reason(parse_conversation, b"{}") == "unknown_schema"


def test_payload_on_the_wrong_topic() -> None:
    assert reason(parse_conversation, wire(rating())) == "unknown_schema"
    assert reason(parse_rating, wire(conversation())) == "unknown_schema"


def test_schema_alias_cannot_be_bypassed() -> None:
    event, event_rating = conversation(), rating()
    event["schema_"] = event.pop("schema")
    event_rating["schema_"] = event_rating.pop("schema")
    assert reason(parse_conversation, wire(event)) == "unknown_schema"
    assert reason(parse_rating, wire(event_rating)) == "unknown_schema"


@PARSERS
def test_python_field_name_schema_underscore_is_an_unknown_field(parse: Parser) -> None:
    event = conversation() if parse is parse_conversation else rating()
    event["schema_"] = "garbage"
    assert reason(parse, wire(event)) == "invalid_fields"


# --- message count ---------------------------------------------------------------------------------


def test_exactly_max_messages_is_fine() -> None:
    assert MAX_MESSAGES == 200
    roles = ["user", "assistant"] * (MAX_MESSAGES // 2)
    event = parse_conversation(wire(conversation(messages=messages(*roles))))
    assert len(event.messages) == MAX_MESSAGES


@pytest.mark.parametrize("count", [MAX_MESSAGES + 1, 1000])
def test_too_many_messages(count: int) -> None:
    roles = ["user"] * (count - 1) + ["assistant"]
    assert reason(parse_conversation, wire(conversation(messages=messages(*roles)))) == "too_many_messages"


def test_too_many_messages_wins_over_other_field_errors() -> None:
    raw = wire(conversation(turn="3", messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)))
    assert reason(parse_conversation, raw) == "too_many_messages"


# --- invalid fields: conversation -------------------------------------------------------------------


def _without(event: dict[str, Any], *path: Any) -> dict[str, Any]:
    target: Any = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


@pytest.mark.parametrize(
    "field",
    ["event_id", "conversation_id", "turn", "ts", "model_version", "messages", "segment"],
)
def test_conversation_missing_required_field(field: str) -> None:
    assert reason(parse_conversation, wire(_without(conversation(), field))) == "invalid_fields"


@pytest.mark.parametrize(
    "changes",
    [
        {"turn": "3"},
        {"turn": 3.0},
        {"turn": 3.5},
        {"turn": True},
        {"turn": None},
        {"turn": -1},
        {"reward": "0.5"},
        {"reward": True},
        {"reward": [0.5]},
        {"conversation_id": 123},
        {"conversation_id": ""},
        {"conversation_id": "c" * 257},
        {"conversation_id": None},
        {"model_version": ""},
        {"model_version": "m" * 129},
        {"model_version": 2026},
        {"messages": []},
        {"messages": None},
        {"messages": {"role": "assistant", "content": "x"}},
        {"messages": ["assistant: hello"]},
        {"messages": [{"role": "assistant", "content": 5}]},
        {"messages": [{"role": "assistant", "content": None}]},
        {"messages": [{"role": "assistant"}]},
        {"messages": [{"content": "hi"}]},
        {"messages": [{"role": "bot", "content": "hi"}]},
        {"messages": [{"role": "Assistant", "content": "hi"}]},
        {"segment": None},
        {"segment": "cards"},
        {"segment": {}},
        {"segment": {"domain": ""}},
        {"segment": {"domain": "d" * 65}},
        {"segment": {"domain": "cards", "locale": ""}},
        {"segment": {"domain": "cards", "locale": "l" * 33}},
        {"segment": {"domain": "cards", "channel": 1}},
        {"ts": 1_764_237_600},
        {"ts": ""},
        {"ts": "yesterday"},
        {"ts": "2026-11-27"},
        {"ts": "2026-13-27T10:00:00Z"},
    ],
    ids=lambda changes: json.dumps(changes)[:60],
)
def test_conversation_wrong_types_and_values(changes: dict[str, Any]) -> None:
    assert reason(parse_conversation, wire(conversation(**changes))) == "invalid_fields"


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ((), {"extra": 1}),
        ((), {"Schema": "conversation/v1"}),
        ((), {"prompt": "sneaky"}),
        (("segment",), {"region": "eu"}),
        (("messages", 0), {"name": "alice"}),
        (("messages", 1), {"tool_calls": []}),
    ],
)
def test_unknown_fields_are_rejected(path: tuple[Any, ...], extra: dict[str, Any]) -> None:
    event = conversation()
    target: Any = event
    for key in path:
        target = target[key]
    target.update(extra)
    assert reason(parse_conversation, wire(event)) == "invalid_fields"


@pytest.mark.parametrize(
    "ts", ["2026-11-27T10:00:00", "2026-11-27 10:00:00", "2026-11-27T10:00:00.123456"]
)
def test_naive_timestamp_is_rejected(ts: str) -> None:
    assert reason(parse_conversation, wire(conversation(ts=ts))) == "invalid_fields"
    assert reason(parse_rating, wire(rating(ts=ts))) == "invalid_fields"


@pytest.mark.parametrize(
    "event_id",
    [
        "not-a-uuid",
        "",
        "0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0d",  # one digit short
        "0b6f7c52-6f1e-4c43-a1d2-1b1c55c1c0dez",
        "zb6f7c52-6f1e-4c43-a1d2-1b1c55c1c0de",
        123,
        None,
    ],
)
def test_non_uuid_event_id_is_rejected(event_id: object) -> None:
    conv = conversation()
    conv["event_id"] = event_id
    rate = rating()
    rate["event_id"] = event_id
    assert reason(parse_conversation, wire(conv)) == "invalid_fields"
    assert reason(parse_rating, wire(rate)) == "invalid_fields"


@pytest.mark.parametrize(
    "roles",
    [("user",), ("assistant", "user"), ("user", "assistant", "tool"), ("system",), ("user", "assistant", "user")],
)
def test_last_message_must_be_from_the_assistant(roles: tuple[str, ...]) -> None:
    raw = wire(conversation(messages=messages(*roles)))
    error = rejected(parse_conversation, raw)
    assert error.reason == "invalid_fields"
    assert "messages" in error.detail


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_reward_is_rejected(literal: str) -> None:
    raw = wire(conversation(reward=0.5)).replace(b'"reward": 0.5', b'"reward": ' + literal.encode())
    assert literal.encode() in raw
    error = rejected(parse_conversation, raw)
    assert error.reason == "invalid_fields"
    assert "reward" in error.detail


def test_reward_overflowing_to_infinity_is_rejected() -> None:
    raw = wire(conversation(reward=0.5)).replace(b'"reward": 0.5', b'"reward": 1e400')
    assert reason(parse_conversation, raw) == "invalid_fields"


def test_detail_names_the_offending_field() -> None:
    error = rejected(parse_conversation, wire(conversation(turn="3")))
    assert error.detail.startswith("turn: ")


def test_detail_summarises_many_errors() -> None:
    raw = wire(conversation(turn="3", conversation_id=1, model_version=2, reward="x", ts=5, segment=None, extra=1))
    error = rejected(parse_conversation, raw)
    assert error.reason == "invalid_fields"
    assert "more" in error.detail


# --- invalid fields: rating -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "conversation_id", "turn", "ts", "rating"])
def test_rating_missing_required_field(field: str) -> None:
    assert reason(parse_rating, wire(_without(rating(), field))) == "invalid_fields"


@pytest.mark.parametrize(("field",), [("kind",), ("value",)])
def test_rating_missing_kind_or_value(field: str) -> None:
    assert reason(parse_rating, wire(_without(rating(), "rating", field))) == "invalid_fields"


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("thumbs", "1"),
        ("thumbs", None),
        ("stars", "4"),
        ("stars", 4.0),
        ("stars", 3.5),
        ("stars", True),
        ("score", "0.5"),
        ("score", True),
        ("score", False),
        ("score", None),
        ("score", [0.5]),
    ],
)
def test_rating_value_wrong_type(kind: str, value: object) -> None:
    assert reason(parse_rating, wire(rating(kind=kind, value=value))) == "invalid_fields"  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False, 1.0, 0.0], ids=["true", "false", "1.0", "0.0"])
def test_thumbs_value_must_be_the_integer_0_or_1(value: object) -> None:
    assert reason(parse_rating, wire(rating(kind="thumbs", value=value))) == "invalid_fields"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"turn": "0"},
        {"turn": 0.0},
        {"turn": -1},
        {"turn": False},
        {"conversation_id": ""},
        {"conversation_id": 7},
        {"conversation_id": "c" * 257},
        {"rating": None},
        {"rating": 1},
        {"rating": {"kind": "thumbs", "value": 1, "weight": 2}},
        {"reasons": None},
        {"reasons": "too_long"},
        {"reasons": [1]},
        {"reasons": ["r" * 65]},
        {"reasons": ["r"] * 33},
        {"comment": 5},
        {"comment": "c" * 10_001},
        {"extra": True},
        {"satisfaction": 1.0},
    ],
    ids=lambda changes: json.dumps(changes)[:60],
)
def test_rating_wrong_types_and_values(changes: dict[str, Any]) -> None:
    assert reason(parse_rating, wire(rating(**changes))) == "invalid_fields"


def test_rating_limits_are_inclusive() -> None:
    event = parse_rating(wire(rating(reasons=["r" * 64] * 32, comment="c" * 10_000, conversation_id="c" * 256)))
    assert len(event.reasons) == 32
    assert len(event.comment or "") == 10_000


# --- prompt and response ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conversation_messages", "prompt"),
    [
        ([("user", "hi"), ("assistant", "hello")], "hi"),
        ([("system", "be nice"), ("user", "first"), ("assistant", "a1"), ("user", "second"), ("assistant", "a2")],
         "second"),
        ([("user", "q"), ("assistant", "thinking"), ("tool", "result"), ("assistant", "answer")], "q"),
        ([("user", "one"), ("user", "two"), ("assistant", "answer")], "two"),
        ([("system", "sys"), ("assistant", "unprompted")], ""),
        ([("assistant", "alone")], ""),
    ],
)
def test_prompt_is_the_last_user_message_before_the_response(
    conversation_messages: list[tuple[str, str]], prompt: str
) -> None:
    wire_messages = [{"role": role, "content": content} for role, content in conversation_messages]
    event = parse_conversation(wire(conversation(messages=wire_messages)))
    assert event.prompt == prompt
    assert event.response == conversation_messages[-1][1]


# --- to_wire --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        conversation(),
        conversation(reward=None, ts="2026-11-27T12:30:00.123456+02:00", segment={"domain": "cards"}),
        conversation(messages=messages("system", "user", "assistant", "tool", "assistant")),
        conversation(response="Ça marche 👍 \"quoted\" \\ back\nslash"),
    ],
    ids=["default", "sparse", "roles", "unicode"],
)
def test_conversation_round_trips_through_to_wire(event: dict[str, Any]) -> None:
    parsed = parse_conversation(wire(event))
    raw = to_wire(parsed)
    assert isinstance(raw, bytes)
    document = json.loads(raw)
    assert document["schema"] == "conversation/v1"
    assert "schema_" not in document
    again = parse_conversation(raw)
    assert again == parsed
    assert to_wire(again) == raw


@pytest.mark.parametrize(
    "event",
    [
        rating(kind="thumbs", value=0),
        rating(kind="stars", value=5, reasons=["too_long", "wrong"], comment="Nope"),
        rating(kind="score", value=0.125, ts="2026-11-27T10:01:10-05:00"),
    ],
    ids=["thumbs", "stars", "score"],
)
def test_rating_round_trips_through_to_wire(event: dict[str, Any]) -> None:
    parsed = parse_rating(wire(event))
    raw = to_wire(parsed)
    document = json.loads(raw)
    assert document["schema"] == "rating/v1"
    assert document["rating"] == event["rating"]
    again = parse_rating(raw)
    assert again == parsed
    assert again.satisfaction == parsed.satisfaction


def test_to_wire_keeps_the_event_id_and_timestamp() -> None:
    event_id = str(uuid.uuid4())
    document = json.loads(to_wire(parse_conversation(wire(conversation(event_id=event_id)))))
    assert document["event_id"] == event_id
    assert datetime.fromisoformat(document["ts"]) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_timestamp_helper_uses_z_suffix() -> None:
    value = datetime(2026, 11, 27, 10, 0, 5, tzinfo=UTC)
    assert timestamp(value) == "2026-11-27T10:00:05Z"
    assert parse_conversation(wire(conversation(ts=timestamp(value)))).ts == value


def test_candidates_are_optional_alternative_responses() -> None:
    assert parse_conversation(wire(conversation())).candidates is None  # old producers: nothing changes
    event = parse_conversation(wire(conversation(candidates=[
        {"content": "A shorter answer.", "model_version": "assistant-2026-11-27", "reward": 0.2},
        {"content": "Another one."}])))
    assert [c.content for c in event.candidates] == ["A shorter answer.", "Another one."]
    assert event.candidates[0].reward == 0.2 and event.candidates[1].model_version is None


@pytest.mark.parametrize("candidates", [
    [{"content": f"answer {i}"} for i in range(9)],  # more than MAX_CANDIDATES
    [{"content": "x", "reward": float("inf")}],
    [{"content": "x", "score": 1}],  # unknown field
    [{"reward": 0.1}],  # no content
    "an answer",
])
def test_bad_candidates_are_rejected(candidates: object) -> None:
    raw = json.dumps(conversation(candidates=candidates), allow_nan=True).encode()
    assert reason(parse_conversation, raw) == "invalid_fields"


def test_candidates_survive_the_wire_and_their_absence_stays_absent() -> None:
    with_candidates = parse_conversation(wire(conversation(candidates=[{"content": "Another answer."}])))
    assert parse_conversation(to_wire(with_candidates)) == with_candidates
    assert "candidates" not in json.loads(to_wire(parse_conversation(wire(conversation()))))
