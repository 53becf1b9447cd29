"""Turn a polled batch of Kafka records into rows: valid events, dead letters, next offsets.

Pure: no I/O. Every record ends up in exactly one place: a turn row, a rating row, a dead letter,
or (a redelivered copy of an event already in this batch) the ``duplicates`` count.

Beyond its wire contract, an event must be dated plausibly (:class:`TimestampBounds`): a ``ts``
more than a tolerance ahead of the ingest clock (``future_timestamp``) or before a floor
(``ancient_timestamp``) is a producer's broken clock, and would otherwise move the analyzer's
watermark or open a segment's reference window decades ago.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.errors import InvalidEvent
from monitor.events import ConversationEvent, RatingEvent
from monitor.ingest.records import KafkaRecord
from monitor.ingest.wire import WireConversation, WireRating, decode_conversation, decode_rating
from monitor.scoring.base import ScoreOutcome


@dataclass
class DeadLetterRecord:
    record: KafkaRecord
    reason: str
    detail: str

    def row(self, received_at: datetime) -> dict[str, Any]:
        return {
            "source_topic": self.record.topic,
            "source_partition": self.record.partition,
            "source_offset": self.record.offset,
            "key": self.record.key,
            "raw": self.record.value if self.record.value is not None else b"",
            "reason": self.reason,
            "detail": self.detail,
            "received_at": received_at,
        }


#: Defaults of ``MONITOR_INGEST_FUTURE_TOLERANCE_SECONDS`` and ``MONITOR_INGEST_TIMESTAMP_FLOOR``.
DEFAULT_FUTURE_TOLERANCE = timedelta(minutes=5)
DEFAULT_TIMESTAMP_FLOOR = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class TimestampBounds:
    """The event times ingest accepts, relative to its own wall clock ``now``.

    >>> now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    >>> bounds = TimestampBounds()
    >>> bounds.check(now + timedelta(minutes=4), now)  # within the tolerance: no error
    >>> bounds.check(now + timedelta(days=365), now)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monitor.errors.InvalidEvent: future_timestamp: ts 2027-11-27T10:00:00+00:00 is 31536000 s ahead of ...
    """

    #: How far ahead of ``now`` a ``ts`` may be: producers' clocks drift a little, never by hours.
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE
    #: The earliest ``ts`` accepted: anything older is an unset or zeroed clock, not a late event.
    floor: datetime = DEFAULT_TIMESTAMP_FLOOR

    def check(self, ts: datetime, now: datetime) -> None:
        """Raise :class:`InvalidEvent` (``future_timestamp`` / ``ancient_timestamp``) for a ``ts`` out of bounds."""
        # Aware datetimes compare without converting to UTC, so year 1 or 9999 with an offset is safe here.
        if ts > now + self.future_tolerance:
            ahead = (ts - now).total_seconds()
            raise InvalidEvent(
                "future_timestamp",
                f"ts {ts.isoformat()} is {ahead:.0f} s ahead of the ingest clock ({now.isoformat()}); "
                f"the tolerance is {self.future_tolerance.total_seconds():.0f} s",
            )
        if ts < self.floor:
            raise InvalidEvent("ancient_timestamp", f"ts {ts.isoformat()} is before {self.floor.isoformat()}")


DEFAULT_TIMESTAMP_BOUNDS = TimestampBounds()


@dataclass
class DecodedBatch:
    conversations: list[tuple[KafkaRecord, WireConversation]] = field(default_factory=list)
    ratings: list[tuple[KafkaRecord, WireRating]] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    #: (topic, partition) -> the offset to consume next, i.e. the last offset seen + 1.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    duplicates: int = 0
    consumed_by_topic: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(self.consumed_by_topic.values())


def next_offsets(records: Sequence[KafkaRecord]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset to consume after ``records``: the last one seen + 1."""
    following: dict[tuple[str, int], int] = {}
    for record in records:
        position = (record.topic, record.partition)
        following[position] = max(following.get(position, 0), record.offset + 1)
    return following


def decode_batch(
    records: list[KafkaRecord],
    *,
    conversations_topic: str,
    ratings_topic: str,
    now: datetime | None = None,
    timestamps: TimestampBounds = DEFAULT_TIMESTAMP_BOUNDS,
) -> DecodedBatch:
    """Sort ``records`` into a :class:`DecodedBatch`; ``now`` (default: the wall clock) bounds ``ts``."""
    now = datetime.now(UTC) if now is None else now
    batch = DecodedBatch()
    seen_ids: set[object] = set()
    seen_turns: set[tuple[str, int]] = set()
    batch.next_offsets = next_offsets(records)
    for record in records:
        batch.consumed_by_topic[record.topic] = batch.consumed_by_topic.get(record.topic, 0) + 1
        try:
            if record.value is None:
                raise InvalidEvent("invalid_json", "empty record value (tombstone)")
            if record.topic == conversations_topic:
                conversation = decode_conversation(record.value)
                timestamps.check(conversation.ts, now)
                turn_key = (conversation.conversation_id, conversation.turn)
                if conversation.event_id in seen_ids or turn_key in seen_turns:
                    batch.duplicates += 1
                    continue
                seen_ids.add(conversation.event_id)
                seen_turns.add(turn_key)
                batch.conversations.append((record, conversation))
            elif record.topic == ratings_topic:
                rating = decode_rating(record.value)
                timestamps.check(rating.ts, now)
                if rating.event_id in seen_ids:
                    batch.duplicates += 1
                    continue
                seen_ids.add(rating.event_id)
                batch.ratings.append((record, rating))
            else:
                raise InvalidEvent("unknown_schema", f"record from unexpected topic {record.topic!r}")
        except InvalidEvent as exc:
            batch.dead_letters.append(DeadLetterRecord(record, exc.reason, exc.detail))
    return batch


def utc(ts: datetime) -> datetime:
    """``ts`` in UTC. PostgreSQL's COPY takes a datetime as its text, and rejects an offset past
    15:59 that the contract accepts (``+23:59``); the ORM's column type converts, COPY does not.
    Only for a ``ts`` within :class:`TimestampBounds` (year 1 at ``+01:00`` has no UTC equivalent).

    >>> utc(datetime.fromisoformat("2026-11-27T10:00:00+23:59")).isoformat()
    '2026-11-26T10:01:00+00:00'
    """
    return ts if not ts.utcoffset() else ts.astimezone(UTC)


def turn_row(record: KafkaRecord, event: ConversationEvent | WireConversation, outcome: ScoreOutcome, scorer: str,
             ingested_at: datetime) -> dict[str, Any]:
    """The ``turns`` row of one event: its text, score and, when the producer sent it, the prompt's risk.

    The response's signals (and the prompt risk the producer did not send) are left out, so NULL:
    the signal deriver (monitor.analyze.derive) fills them once per turn, off the ingest path; here
    they would cost about 40% of ingest throughput (see docs/analysis.md). So are satisfaction and
    rated_at, which the rating join sets.
    """
    messages = event.messages
    producer_risk = event.metadata.prompt_risk if event.metadata is not None else None
    segment = event.segment
    return {
        "event_id": event.event_id,
        "conversation_id": event.conversation_id,
        "turn": event.turn,
        "ts": utc(event.ts),
        "model_version": event.model_version,
        "domain": segment.domain,
        "locale": segment.locale,
        "channel": segment.channel,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "prompt": event.prompt,
        "response": messages[-1].content,
        "candidates": [{"content": c.content, "model_version": c.model_version, "reward": c.reward}
                       for c in event.candidates] if event.candidates else None,
        "producer_reward": event.reward,
        "score": outcome.score,
        "scorer": scorer,
        "score_error": outcome.error,
        "score_truncated": outcome.truncated,
        "rating_count": 0,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "ingested_at": ingested_at,
        "prompt_harmful": None if producer_risk is None else producer_risk == "harmful",
        "prompt_risk_source": None if producer_risk is None else "producer",
    }


def rating_row(record: KafkaRecord, event: RatingEvent | WireRating, ingested_at: datetime) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "conversation_id": event.conversation_id,
        "turn": event.turn,
        "ts": utc(event.ts),
        "kind": event.rating.kind,
        "value": float(event.rating.value),
        "satisfaction": event.satisfaction,
        "reasons": list(event.reasons),
        "comment": event.comment,
        "joined": False,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "ingested_at": ingested_at,
    }


