"""Fuzzing ingest with hypothesis: (a) raw bytes and (b) near-valid events (a valid
``conversation/v1`` or ``rating/v1`` with one field mutated) go through the loop's real
``process_batch`` (``decode_batch``, scoring, ``write_ingest_batch`` with bisection) into SQLite and
PostgreSQL. Nothing may raise, and every record ends in exactly one place: a turn, a rating, or a
dead letter (stored and published) with the reason the wire contract gives, or ``store_rejected``
for the values the test database refuses.

Bounded and reproducible: ``derandomize=True`` (the same examples on every run, no example
database), no deadline, and a number of examples that keeps the file under a minute on two cores.
The regression cases of tests/test_bad_input.py stay there; this file looks for new ones.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.errors import MAX_DETAIL, InvalidEvent
from monitor.events import parse_conversation, parse_rating
from monitor.health import HealthState
from monitor.ingest.decode import DeadLetterRecord, TimestampBounds
from monitor.ingest.loop import STORE_REJECTED, IngestLoop
from monitor.ingest.records import KafkaRecord
from monitor.metrics import Metrics
from monitor.scoring.base import ProducerRewardScorer
from monitor.store.db import make_engine, make_session_factory
from monitor.store.migrate import upgrade
from monitor.store.models import ConsumerOffset, DeadLetter, RatingRow, Turn
from tests.factories import conversation, rating
from tests.test_store_rejects import MARKER, add_rejection_rules

pytestmark = [
    pytest.mark.slow,
    # A failing example can hold a 300 kB string: hypothesis warns that its report is long.
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

CONVERSATIONS, RATINGS = "conversations", "ratings"
#: The ingest clock of every batch: the factories' events (2026-11-27) are a day old.
NOW = datetime(2026, 11, 28, tzinfo=UTC)
#: PostgreSQL's timestamptz takes UTC offsets up to 15:59; Python's (and the contract's) up to 23:59.
PG_MAX_OFFSET = timedelta(hours=15, minutes=59, seconds=59)

_BOUNDED = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


class _NotPolled:
    """The source seam: ``process_batch`` never polls, commits or rewinds (the loop's ``run`` does)."""

    def _unused(self, *args: object) -> Any:
        raise AssertionError("the fuzz test drives process_batch, never the consumer")

    poll = commit = rewind = lag = set_revoke_hook = close = _unused


@dataclass
class _PublishedDeadLetters:
    """The dead-letter sink seam: what the loop would have published on the DLQ topic."""

    published: list[DeadLetterRecord] = field(default_factory=list)

    def publish(self, dead_letters: Sequence[DeadLetterRecord], received_at: datetime) -> None:
        self.published.extend(dead_letters)


@dataclass(repr=False)
class Store:
    kind: str
    sessions: sessionmaker[Session]
    loop: IngestLoop
    sink: _PublishedDeadLetters
    offsets: Iterator[int] = field(default_factory=itertools.count)

    def __repr__(self) -> str:  # hypothesis shows the arguments of each example
        return f"Store({self.kind!r})"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          pg_databases: Callable[[], str]) -> Iterator[Store]:
    """One migrated database of each kind per module, with the test's rejection rules."""
    url = (f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'monitor.db'}" if request.param == "sqlite"
           else pg_databases())
    upgrade(url)
    add_rejection_rules(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    sink = _PublishedDeadLetters()
    loop = IngestLoop(
        Settings(database_url=url, conversations_topic=CONVERSATIONS, ratings_topic=RATINGS,
                 consumer_group="fuzz"),
        source=_NotPolled(), sessions=sessions, scorer=ProducerRewardScorer(), dead_letter_sink=sink,
        metrics=Metrics(CollectorRegistry()), health=HealthState(), wall_clock=lambda: NOW,
    )
    yield Store(request.param, sessions, loop, sink)
    engine.dispose()


# --- what goes in -------------------------------------------------------------------------------

class Payload:
    """A record's value; shown short when hypothesis reports an example (some are 300 kB)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        if self.value is None or len(self.value) <= 300:
            return repr(self.value)
        return f"{self.value[:300]!r}... ({len(self.value)} bytes)"


@dataclass(frozen=True)
class Raw:
    """JSON text put into the payload verbatim (what ``json.dumps`` will not write)."""

    text: str


def encode(event: dict[str, Any]) -> bytes:
    raws: dict[str, str] = {}

    def placeholders(value: Any) -> Any:
        if isinstance(value, Raw):
            raws[f"__raw_{len(raws)}__"] = value.text
            return f"__raw_{len(raws) - 1}__"
        if isinstance(value, dict):
            return {key: placeholders(item) for key, item in value.items()}
        if isinstance(value, list):
            return [placeholders(item) for item in value]
        return value

    # ensure_ascii=True writes NUL and lone surrogates as \u escapes, as producers in other
    # languages do; a few cases below put raw (invalid) bytes in instead.
    text = json.dumps(placeholders(event))
    for name, raw in raws.items():
        text = text.replace(f'"{name}"', raw)
    return text.encode("utf-8", "surrogatepass")


ODD_TIMESTAMPS = [
    "2026-11-27T10:00:00+23:59", "2026-11-27T10:00:00-23:59", "2026-11-27T10:00:00+15:59",
    "2026-11-27T10:00:00+16:00", "2026-11-27T10:00:00+14:00", "2026-11-27T10:00:00.123456789Z",
    "2026-11-27T23:59:60Z", "2026-02-30T10:00:00Z", "2026-11-27T10:00:00", "2026-11-27 10:00:00Z",
    "2026-11-27t10:00:00z", "2026-11-27T10:00Z", "20261127T100000Z", "2026-W48-5T10:00:00Z",
    "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "1970-01-01T00:00:00Z",
    "2026-11-28T00:04:59Z", "2026-11-28T00:05:01Z", "2026-11-27T10:00:00.000+00:00", "", " ",
]
WRONG_TYPES = [None, True, False, 0, -1, 1.5, -0.0, 1e308, "", "x", "1", [], {}, [1], {"a": 1}, [None]]
HUGE_INTS = [2**31, 2**63, -(2**63) - 1, 10**30, 10**400, Raw("9" * 5000), Raw("1e400"), Raw("-1e-400")]
TEXT_ANY = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates and controls too


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def mutated_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(WRONG_TYPES),
        st.sampled_from(HUGE_INTS),
        st.sampled_from([65, 129, 257, 10_001, 300_000]).map(lambda n: "x" * n),
        TEXT_ANY.map(lambda text: f"{text}\x00{text}"),
        st.sampled_from(["\ud800", "a\udfff", "\udbff\udfff", "\ufffe", "\U0010ffff", "\u202e", "\x7f"]),
        TEXT_ANY,
        st.sampled_from([5, 100, 2_000, 100_000]).map(nested),
        st.sampled_from(ODD_TIMESTAMPS),
    )


CONVERSATION_PATHS: list[tuple[Any, ...]] = [
    ("schema",), ("event_id",), ("conversation_id",), ("turn",), ("ts",), ("model_version",), ("messages",),
    ("messages", 0, "content"), ("messages", -1, "content"), ("messages", 0, "role"), ("segment",),
    ("segment", "domain"), ("segment", "locale"), ("segment", "channel"), ("reward",), ("metadata",),
    ("metadata", "prompt_risk"), ("candidates",), ("candidates", 0, "content"), ("candidates", 0, "reward"),
]
RATING_PATHS: list[tuple[Any, ...]] = [
    ("schema",), ("event_id",), ("conversation_id",), ("turn",), ("ts",), ("rating",), ("rating", "kind"),
    ("rating", "value"), ("reasons",), ("reasons", 0), ("comment",),
]


def set_path(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


_ids = itertools.count()


@st.composite
def near_valid_event(draw: st.DrawFn) -> tuple[str, Payload]:
    """(topic, value): a valid event, then one mutation (or none, or the value the store refuses)."""
    n = next(_ids)
    event_id = str(uuid.UUID(int=n, version=4))
    # Unique, so no record is a replay of another; fixed width, so the payload's length (which the
    # position of an invalid byte is drawn from) does not depend on how many examples ran before.
    conversation_id = f"fuzz-{n:09d}"
    if draw(st.booleans()):
        topic = CONVERSATIONS
        event = conversation(conversation_id, draw(st.integers(0, 3)), event_id=event_id,
                             metadata={"prompt_risk": "safe"},
                             candidates=[{"content": "another answer", "reward": 0.1}])
        paths = CONVERSATION_PATHS
    else:
        topic = RATINGS
        kind, value = draw(st.sampled_from([("thumbs", 1), ("stars", 4), ("score", 0.25)]))
        event = rating(conversation_id, draw(st.integers(0, 3)), kind=kind, value=value, event_id=event_id,
                       reasons=["too_long"], comment="fine")
        paths = RATING_PATHS
    mutation = draw(st.sampled_from(["none", "value", "value", "value", "ts", "extra_key", "refused_by_store",
                                     "invalid_utf8", "tombstone"]))
    if mutation == "ts":
        event["ts"] = draw(st.sampled_from(ODD_TIMESTAMPS))
    elif mutation == "value":
        set_path(event, draw(st.sampled_from(paths)), draw(mutated_values()))
    elif mutation == "extra_key":
        where = draw(st.sampled_from([(), ("segment",), ("rating",), ("messages", 0)]))
        target: Any = event
        for step in where:
            target = target.get(step, {}) if isinstance(target, dict) else target[step]
        target[draw(st.one_of(st.sampled_from(["schema_", "extra", "Schema", ""]), TEXT_ANY))] = draw(
            st.sampled_from(WRONG_TYPES))
    elif mutation == "refused_by_store":
        event["model_version" if topic == CONVERSATIONS else "comment"] = f"assistant-{MARKER}"
    elif mutation == "invalid_utf8":
        raw = encode(event)
        at = draw(st.integers(0, len(raw) - 1))
        return topic, Payload(raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]))
                              + raw[at:])
    elif mutation == "tombstone":
        return topic, Payload(None)
    return topic, Payload(encode(event))


def raw_record() -> st.SearchStrategy[tuple[str, Payload]]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT_ANY,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT_ANY, children, max_size=4),
        max_leaves=12,
    )
    values = st.one_of(st.none(), st.binary(max_size=300),
                       json_values.map(lambda v: json.dumps(v).encode()))
    return st.tuples(st.sampled_from([CONVERSATIONS, RATINGS, "elsewhere"]), values.map(Payload))


# --- what must come out -------------------------------------------------------------------------

def expected_outcome(topic: str, value: bytes | None, kind: str) -> set[str]:
    """Where the record may end: ``{"row"}`` or ``{reason}`` (both for a ts PostgreSQL may refuse)."""
    if value is None:
        return {"invalid_json"}
    if topic not in (CONVERSATIONS, RATINGS):
        return {"unknown_schema"}
    try:
        event = (parse_conversation if topic == CONVERSATIONS else parse_rating)(value)
        TimestampBounds().check(event.ts, NOW)
    except InvalidEvent as error:
        return {error.reason}
    refused = getattr(event, "model_version", None) or getattr(event, "comment", None) or ""
    if MARKER in refused:
        return {STORE_REJECTED}
    offset = event.ts.utcoffset()
    if kind == "postgresql" and offset is not None and abs(offset) > PG_MAX_OFFSET:
        # Valid, yet PostgreSQL refuses the offset unless the store converts ts to UTC first.
        return {"row", STORE_REJECTED}
    return {"row"}


def replays_a_stored_event(store: Store, topic: str, value: bytes) -> bool:
    """Whether the store already holds this event's ``event_id`` (or, for a turn, its
    ``(conversation_id, turn)``) from an earlier record."""
    with store.sessions() as session:
        if topic == RATINGS:
            event_id = parse_rating(value).event_id
            return session.scalar(select(RatingRow.id).where(RatingRow.event_id == event_id)) is not None
        turn = parse_conversation(value)
        return session.scalar(select(Turn.id).where(
            (Turn.event_id == turn.event_id)
            | ((Turn.conversation_id == turn.conversation_id) & (Turn.turn == turn.turn)))) is not None


def ingest_and_account(store: Store, examples: list[tuple[str, Payload]]) -> None:
    items = [(topic, payload.value) for topic, payload in examples]
    records = []
    for topic, value in items:
        # Offsets grow across the whole module, so a record's position is unique in the database.
        offset = next(store.offsets)
        records.append(KafkaRecord(topic, offset % 3, offset, b"key", value))
    published_before = len(store.sink.published)

    batch = store.loop.process_batch(records)  # must not raise

    assert len(batch.conversations) + len(batch.ratings) + len(batch.dead_letters) + batch.duplicates == len(records)
    positions = [(r.topic, r.partition, r.offset) for r in records]
    offsets = [r.offset for r in records]
    with store.sessions() as session:
        turns = {tuple(row) for row in session.execute(
            select(Turn.source_topic, Turn.source_partition, Turn.source_offset)
            .where(Turn.source_offset.in_(offsets)))}
        ratings = {tuple(row) for row in session.execute(
            select(RatingRow.source_topic, RatingRow.source_partition, RatingRow.source_offset)
            .where(RatingRow.source_offset.in_(offsets)))}
        dead = {(d.source_topic, d.source_partition, d.source_offset): d for d in session.scalars(
            select(DeadLetter).where(DeadLetter.source_offset.in_(offsets)))}
        stored_offsets = {(o.topic, o.partition): o.next_offset for o in session.scalars(
            select(ConsumerOffset).where(ConsumerOffset.group_id == "fuzz"))}
    published = {(d.record.topic, d.record.partition, d.record.offset): d
                 for d in store.sink.published[published_before:]}

    for position, (topic, value) in zip(positions, items, strict=True):
        places = [name for name, rows in (("turn", turns), ("rating", ratings), ("dead letter", dead))
                  if position in rows]
        outcome = expected_outcome(topic, value, store.kind)
        if not places and "row" in outcome and value is not None and replays_a_stored_event(store, topic, value):
            continue  # a re-send of an event stored before (a mutation can repeat an id): ignored by design
        assert len(places) == 1, f"{position} of {value[:300] if value else value!r} is in {places}"
        if places[0] == "dead letter":
            row = dead[position]
            assert row.reason in outcome, f"{row.reason}: {row.detail} for {value[:300] if value else value!r}"
            assert row.raw == (value or b"") and 0 < len(row.detail) < MAX_DETAIL + 50
            assert published[position].reason == row.reason
        else:
            assert "row" in outcome, f"stored, expected {outcome} for {value[:300] if value else value!r}"
            assert places[0] == ("turn" if topic == CONVERSATIONS else "rating")
    assert set(published) == set(dead)
    for (topic, partition, offset) in positions:
        assert stored_offsets[(topic, partition)] >= offset + 1
    assert batch.size == len(records)


@settings(max_examples=60, **_BOUNDED)
@given(items=st.lists(raw_record(), min_size=1, max_size=8))
def test_raw_bytes_never_stop_ingest(store: Store, items: list[tuple[str, Payload]]) -> None:
    ingest_and_account(store, items)


@settings(max_examples=150, **_BOUNDED)
@given(items=st.lists(near_valid_event(), min_size=1, max_size=12))
def test_near_valid_events_each_end_in_exactly_one_place(store: Store, items: list[tuple[str, Payload]]) -> None:
    ingest_and_account(store, items)


def test_the_fuzzer_reaches_every_outcome() -> None:
    """Guards against a generator that silently stopped producing a kind of record."""
    outcomes: set[str] = set()

    @settings(max_examples=300, **_BOUNDED)
    @given(item=near_valid_event())
    def collect(item: tuple[str, Payload]) -> None:
        outcomes.update(expected_outcome(item[0], item[1].value, kind="postgresql"))

    collect()
    assert {"row", STORE_REJECTED, "invalid_fields", "invalid_utf8", "invalid_json", "unknown_schema",
            "future_timestamp", "ancient_timestamp"} <= outcomes, outcomes

