"""Bad input never stops the loop: >= 1,000 fuzzed payloads and the poison pills that once stopped
it (a 5,000-digit integer, a half-megabyte echo in the error, nesting past the recursion limit, a
megabyte key), interleaved with valid traffic, each end in the dead-letter topic and table with a
reason; every valid event is stored."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import select

from monitor.errors import InvalidEvent
from monitor.events import DEAD_LETTER_REASONS, MAX_MESSAGE_BYTES, parse_conversation, parse_rating
from monitor.ingest.dead_letters import dead_letter_message
from monitor.ingest.decode import DEFAULT_TIMESTAMP_BOUNDS, DeadLetterRecord
from monitor.ingest.records import KafkaRecord
from monitor.sim.traffic import TrafficSimulator
from monitor.store.db import make_engine, make_session_factory
from monitor.store.models import DeadLetter, RatingRow, Turn
from tests.factories import conversation, rating
from tests.helpers import ServiceThread, read_topic, wait_for

pytestmark = pytest.mark.slow

REQUIRED_CONVERSATION = ["schema", "event_id", "conversation_id", "turn", "ts", "model_version", "messages", "segment"]
REQUIRED_RATING = ["schema", "event_id", "conversation_id", "turn", "ts", "rating"]
WRONG_TYPES = {
    "turn": ["3", 3.5, None, [], -1],
    "ts": [12345, "yesterday", "2026-11-27T10:00:00", None],
    "event_id": ["not-a-uuid", 42, None],
    "conversation_id": [7, None, ""],
    "messages": ["hi", [], [{"role": "user", "content": "no answer"}], [{"role": "bot", "content": "x"}]],
    "segment": ["payments", {"locale": "en-GB"}, None],
    "reward": ["0.5", True, [1]],
    "rating": [{"kind": "thumbs", "value": 2}, {"kind": "stars", "value": 0}, {"kind": "score", "value": 1.5},
               {"kind": "likes", "value": 1}, {"kind": "thumbs", "value": "1"}, 5],
}


def fuzzed_payloads(rng: random.Random, n: int) -> list[tuple[str, bytes | None]]:
    """(kind, value) pairs that break the contract in many different ways."""
    payloads: list[tuple[str, bytes | None]] = []
    while len(payloads) < n:
        kind = rng.choice(["conversation", "rating"])
        seeded_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        make = conversation if kind == "conversation" else rating
        valid = make(f"f-{rng.getrandbits(32):x}", event_id=seeded_id)
        mutation = rng.randrange(12)
        event = dict(valid)
        if mutation == 0:
            value: bytes | None = rng.randbytes(rng.randrange(1, 300))
            if value.startswith((b"{", b"[", b"\"")) or value.strip() == b"":
                value = b"\x80" + value
        elif mutation == 1:
            value = json.dumps(event).encode().replace(b"freeze", b"fr\xc3\x28eeze").replace(b"thumbs", b"th\xffumbs")
            if value == json.dumps(event).encode():
                value = b"\xff" + value
        elif mutation == 2:
            del event[rng.choice(REQUIRED_CONVERSATION if kind == "conversation" else REQUIRED_RATING)]
            value = json.dumps(event).encode()
        elif mutation == 3:
            field = rng.choice([f for f in WRONG_TYPES if f in event or f == "reward"])
            if kind == "rating" and field in ("messages", "segment", "reward"):
                field = "rating"
            if kind == "conversation" and field == "rating":
                field = "messages"
            event[field] = rng.choice(WRONG_TYPES[field])
            value = json.dumps(event).encode()
        elif mutation == 4:
            foreign = "rating/v1" if kind == "conversation" else "conversation/v1"
            event["schema"] = rng.choice(["conversation/v2", "rating/v0", "", None, foreign])
            value = json.dumps(event).encode()
        elif mutation == 5:
            value = rng.choice([b"[]", b'"just a string"', b"42", b"null", b"{not json", b"", b"{\"a\": }"])
        elif mutation == 6:
            event[f"unexpected_{rng.randrange(100)}"] = "field"
            value = json.dumps(event).encode()
        elif mutation == 7 and kind == "conversation":
            event["messages"] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 101
            value = json.dumps(event).encode()
        elif mutation == 8:
            target = "messages" if kind == "conversation" else "comment"
            bad_text = rng.choice(["\ud800 lone surrogate", "nul \x00 inside"])
            if kind == "conversation":
                event["messages"] = [{"role": "user", "content": bad_text}, {"role": "assistant", "content": "a"}]
            else:
                event[target] = bad_text
            value = json.dumps(event).encode()
        elif mutation == 9 and len([p for p in payloads if p[1] and len(p[1]) > MAX_MESSAGE_BYTES]) < 4:
            event["comment" if kind == "rating" else "model_version"] = "x" * (MAX_MESSAGE_BYTES + 10)
            value = json.dumps(event).encode()
        elif mutation == 10:
            value = None  # a tombstone
        elif mutation == 11:
            event["ts"] = rng.choice(["2099-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00",  # a broken clock
                                      "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"])
            value = json.dumps(event).encode()
        else:
            event["turn"] = rng.choice(["1", 1.0, {"n": 1}])
            value = json.dumps(event).encode()
        payloads.append((kind, value))
    return payloads


def poison_pills() -> list[tuple[str, bytes, bytes]]:
    """(kind, key, value) of records that once stopped ingest: an integer json cannot convert, an
    error detail that echoes half a megabyte, nesting past the recursion limit, a megabyte key."""
    big_int = json.dumps(conversation("pill-int", 0)).replace('"turn": 0', '"turn": ' + "9" * 5000).encode()
    echo_schema = json.dumps({**rating("pill-echo", 0), "schema": "x" * 450_000}).encode()
    echo_key = json.dumps({**conversation("pill-key", 0), "k" * 450_000: 1}).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    return [("conversation", b"pill", big_int), ("rating", b"pill", echo_schema), ("conversation", b"pill", echo_key),
            ("rating", b"pill", deep), ("conversation", b"k" * 900_000, b"{not json")]


def test_a_dead_letter_always_fits_the_topic_whatever_the_record() -> None:
    """The worst record: a value at the size limit, a megabyte key, a detail quoting the input."""
    worst = KafkaRecord("conversations", 0, 7, b"k" * (1024 * 1024), b"x" * (MAX_MESSAGE_BYTES + 1))
    dead = DeadLetterRecord(worst, "invalid_fields", InvalidEvent("invalid_fields", "y" * 10**6).detail)
    message = dead_letter_message(dead, datetime.now(UTC))
    assert len(message) < 800_000  # under Kafka's default 1 MiB request, with room for headers
    decoded = json.loads(message)
    assert decoded["raw_truncated"] and decoded["source"]["key_truncated"] and len(decoded["detail"]) < 1100


def expected_reason(kind: str, value: bytes | None) -> str:
    if value is None:
        return "invalid_json"
    try:
        event = (parse_conversation if kind == "conversation" else parse_rating)(value)
        DEFAULT_TIMESTAMP_BOUNDS.check(event.ts, datetime.now(UTC))
    except InvalidEvent as exc:
        return exc.reason
    raise AssertionError(f"fuzzer produced a valid {kind}: {value[:200]!r}")


def test_fuzzed_payloads_go_to_the_dead_letter_topic_and_valid_ones_are_stored(topic_settings, pg_databases) -> None:
    url = pg_databases()
    settings = topic_settings(database_url=url, batch_size=100)
    rng = random.Random(20261127)
    bad = fuzzed_payloads(rng, 1200)
    reasons = [expected_reason(kind, value) for kind, value in bad]
    assert set(reasons) == set(DEAD_LETTER_REASONS)  # every rejection path is exercised

    good = TrafficSimulator(seed=3).conversations(400)
    stream: list[tuple[str, bytes | None, bytes | None, str | None]] = []  # topic, key, value, reason
    good_iter, bad_iter = iter(good), iter(zip(bad, reasons, strict=True))
    topic_of = {"conversation": settings.conversations_topic, "rating": settings.ratings_topic}
    for message in good_iter:
        stream.append((topic_of[message.kind], message.key.encode(), message.value, None))
        for _ in range(rng.choice([0, 1, 2, 3, 4])):
            item = next(bad_iter, None)
            if item is not None:
                (kind, value), reason = item
                key = b"fuzz" if value is None else rng.choice([None, b"fuzz"])  # a tombstone needs a key
                stream.append((topic_of[kind], key, value, reason))
    for (kind, value), reason in bad_iter:
        stream.append((topic_of[kind], b"fuzz", value, reason))
    pills = poison_pills()
    for kind, key, value in pills:
        stream.insert(len(stream) // 2, (topic_of[kind], key, value, expected_reason(kind, value)))
    assert {expected_reason(kind, value) for kind, _, value in pills} == {"invalid_fields", "unknown_schema",
                                                                          "invalid_json"}

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5,
                             max_request_size=4 * MAX_MESSAGE_BYTES)
    futures = [(producer.send(topic, key=key, value=value), value, reason) for topic, key, value, reason in stream]
    producer.flush(60)
    expected_dead = {}
    for future, value, reason in futures:
        if reason is not None:
            meta = future.get(30)
            expected_dead[(meta.topic, meta.partition, meta.offset)] = (reason, value or b"")
    producer.close(10)
    n_turns = sum(m.kind == "conversation" for m in good)
    n_ratings = len(good) - n_turns

    with ServiceThread(settings) as service:
        engine = make_engine(url)
        sessions = make_session_factory(engine)

        def stored() -> tuple[int, int, int]:
            with sessions() as session:
                return (len(session.scalars(select(Turn.id)).all()), len(session.scalars(select(RatingRow.id)).all()),
                        len(session.scalars(select(DeadLetter.id)).all()))

        wait_for(lambda: stored() == (n_turns, n_ratings, len(expected_dead)), timeout=120,
                 what=f"{n_turns} turns, {n_ratings} ratings, {len(expected_dead)} dead letters")
        with sessions() as session:
            rows = {(d.source_topic, d.source_partition, d.source_offset): (d.reason, d.raw)
                    for d in session.scalars(select(DeadLetter))}
        assert rows == expected_dead

        # The loop is still alive and still ingesting.
        assert service.alive
        assert httpx.get(f"{service.url}/healthz").status_code == 200
        late = conversation("after-the-storm", 0)
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        producer.send(settings.conversations_topic, key=b"late", value=json.dumps(late).encode()).get(30)
        producer.close(10)
        wait_for(lambda: stored()[0] == n_turns + 1, what="the event sent after the fuzz")
        metrics = httpx.get(f"{service.url}/metrics").text
        total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("monitor_dead_letters_total{"))
        assert total == len(expected_dead)
        engine.dispose()

    topic_messages = read_topic(settings, settings.dlq_topic, expected=len(expected_dead), timeout=60)
    by_source = {(m["source"]["topic"], m["source"]["partition"], m["source"]["offset"]): m for m in topic_messages}
    assert set(by_source) == set(expected_dead)
    for source, (reason, raw) in expected_dead.items():
        message = by_source[source]
        assert message["reason"] == reason and message["detail"]
        assert message["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        assert message["raw_bytes"] == len(raw)
        assert len(message["detail"]) < 1100  # capped: an echo of the input stays short
        if not message["raw_truncated"]:
            assert base64.b64decode(message["raw_b64"]) == raw
        else:
            assert len(raw) > MAX_MESSAGE_BYTES // 2 and raw.startswith(base64.b64decode(message["raw_b64"]))


def test_the_fuzzer_is_deterministic() -> None:
    assert fuzzed_payloads(random.Random(1), 50) == fuzzed_payloads(random.Random(1), 50)
