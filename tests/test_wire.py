"""The ingest decoder (msgspec, :mod:`monitor.ingest.wire`) against the contract (pydantic,
:mod:`monitor.events`): on generated near-valid events and raw bytes, each accepts exactly what
the other accepts, refuses with the same dead-letter reason, and yields the same rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings

from monitor.errors import InvalidEvent
from monitor.events import parse_conversation, parse_rating, to_wire
from monitor.ingest.decode import TimestampBounds, rating_row, turn_row
from monitor.ingest.records import KafkaRecord
from monitor.ingest.wire import WireStars, decode_conversation, decode_rating
from monitor.scoring.base import ScoreOutcome
from tests.factories import conversation, rating
from tests.test_fuzz_ingest import _BOUNDED, CONVERSATIONS, Payload, encode, near_valid_event, raw_record

# A failing example's report makes hypothesis import a deprecated mypy_extensions name.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

NOW = datetime(2026, 11, 28, tzinfo=UTC)
RECORD = KafkaRecord("t", 0, 7, b"k", b"")


def _verdict(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except InvalidEvent as error:
        return error.reason, None


def _same(topic: str, value: bytes | None) -> None:
    if value is None:
        return
    conversation_topic = topic == CONVERSATIONS
    ours = _verdict(decode_conversation if conversation_topic else decode_rating, value)
    contract = _verdict(parse_conversation if conversation_topic else parse_rating, value)
    assert ours[0] == contract[0], value[:300]
    if ours[0] != "ok":
        return
    assert ours[1].ts == contract[1].ts
    try:  # rows are built only of events dated within ingest's bounds (decode_batch checks first)
        TimestampBounds().check(contract[1].ts, NOW)
    except InvalidEvent:
        return
    if conversation_topic:
        outcome = ScoreOutcome(0.5)
        assert turn_row(RECORD, ours[1], outcome, "s", NOW) == turn_row(RECORD, contract[1], outcome, "s", NOW)
    else:
        assert rating_row(RECORD, ours[1], NOW) == rating_row(RECORD, contract[1], NOW)


@settings(max_examples=1500, **_BOUNDED)
@given(near_valid_event())
def test_near_valid_events_get_the_contracts_verdict(example: tuple[str, Payload]) -> None:
    _same(example[0], example[1].value)


@settings(max_examples=500, **_BOUNDED)
@given(raw_record())
def test_raw_bytes_get_the_contracts_verdict(example: tuple[str, Payload]) -> None:
    _same(CONVERSATIONS if example[0] == CONVERSATIONS else "ratings", example[1].value)


@pytest.mark.parametrize("value", [
    # Spellings msgspec refuses and pydantic accepts: the contract's verdict wins, converted.
    {"event_id": "0B6F7C526F1E4C43A1D21B1C55C1C0DE"},
    {"ts": "2026-11-27T10:00:00.123456789Z"},
    {"ts": "2026-11-27 10:00:00+01:00"},
])
def test_spellings_only_the_contract_knows_are_accepted(value: dict[str, Any]) -> None:
    event = conversation("c-1", 0, **value)
    raw = encode(event)
    try:
        expected = parse_conversation(raw)
    except InvalidEvent:
        pytest.skip("the contract refuses this spelling too")
    assert decode_conversation(raw).event_id == expected.event_id
    assert decode_conversation(raw).ts == expected.ts


@pytest.mark.parametrize(("change", "reason"), [
    ({"reward": 1e400}, "invalid_fields"),  # JSON reads it as infinity
    ({"messages": [{"role": "user", "content": "hi"}]}, "invalid_fields"),  # no assistant response last
    ({"candidates": [{"content": "x", "reward": -1e400}]}, "invalid_fields"),
    ({"segment": {"domain": "a\u0000b"}}, "invalid_utf8"),
    ({"schema_": "conversation/v1"}, "invalid_fields"),
])
def test_what_msgspec_would_let_through_is_refused(change: dict[str, Any], reason: str) -> None:
    raw = encode(conversation("c-1", 0, **change)).replace(b"Infinity", b"1e400")
    with pytest.raises(InvalidEvent) as refused:
        decode_conversation(raw)
    assert refused.value.reason == reason


def test_a_rating_reads_as_the_contracts() -> None:
    raw = encode(rating("c-1", 2, kind="stars", value=5, reasons=["too_long"], comment="ok"))
    ours, contract = decode_rating(raw), parse_rating(raw)
    assert isinstance(ours.rating, WireStars)
    assert (ours.rating.kind, ours.satisfaction, ours.reasons) == (contract.rating.kind, 1.0, ["too_long"])
    # The canonical spelling round-trips through both.
    assert decode_rating(to_wire(contract)) == ours
