"""`IngestLoop`: consume → validate → score → write rows and offsets in one transaction → commit.

Per batch, in this order:

1. decode and validate every record (bad ones become dead letters, never exceptions);
2. score the valid conversation turns (the `Scorer` seam);
3. publish dead letters to the dead-letter topic and wait for the acknowledgement;
4. write turns, ratings, dead letters, rating joins and the next offsets in **one** transaction;
5. commit the offsets to Kafka (a failure here costs nothing: the store already has them).

Three threads make a pipeline: the main thread polls, a decoder thread runs steps 1-2 (and
builds the rows), a writer thread steps 3-4. While batch N is written, batch N+1 is decoded and
N+2 fetched, so the writer's waits for the database are spent on the next batch's Python work (the
GIL was idle 40% of the time with decode and write on one thread, `monitor bench ingest`). At most
two batches are in flight; batches are written in order; the consumer is only touched from the
main thread. (Decoding on the polling thread itself was slower: it held up the next fetch.)

If step 2, 3 or 4 fails, nothing of the batch is committed anywhere: the consumer is rewound to the
first offsets of the failed batch (and of the one polled meanwhile, which is dropped), and ingest
resumes after a backoff, so a dependency outage delays ingest but loses nothing. A stop request is
honoured between batches; the batch in flight finishes. On a rebalance, the batch in flight is
finished before the partitions are given up.

One exception to the retry: when the store refuses the batch for its *data* (:func:`rejects_data`),
a retry would fail the same way forever. The batch is then bisected in record order, each part in a
transaction of its own with the offsets it covers, down to the single records the store still
refuses: each becomes a dead letter with reason :data:`STORE_REJECTED`, and ingest moves on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg
from prometheus_client import Histogram
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.errors import BrokerUnavailable, InvalidEvent, MonitorError, ScoringError
from monitor.health import HealthState
from monitor.ingest.backlog import Backlog
from monitor.ingest.decode import (
    DeadLetterRecord,
    DecodedBatch,
    TimestampBounds,
    decode_batch,
    next_offsets,
    rating_row,
    turn_row,
)
from monitor.ingest.records import KafkaRecord
from monitor.ingest.source import EventSource
from monitor.ingest.wire import WireConversation
from monitor.metrics import Metrics
from monitor.scoring.base import ScoreOutcome, Scorer, ScoringStats
from monitor.store.models import utcnow
from monitor.store.writes import write_ingest_batch

log = logging.getLogger(__name__)

#: The dead-letter reason of a record that passed validation but that the store refuses to hold.
STORE_REJECTED = "store_rejected"

#: What a store write raises: SQLAlchemy's errors, and psycopg's own from the COPY path
#: (:func:`monitor.store.writes.insert_ignoring_duplicates` drives the driver's cursor directly).
_STORE_ERRORS = (SQLAlchemyError, psycopg.Error)


class DeadLetterSink(Protocol):
    def publish(self, dead_letters: Sequence[DeadLetterRecord], received_at: datetime) -> None: ...


@dataclass
class _InFlight:
    records: list[KafkaRecord]
    future: Future[DecodedBatch]


@dataclass
class _Prepared:
    """A decoded and scored batch with its rows, ready for the writer (steps 1-2)."""

    batch: DecodedBatch
    received_at: datetime
    turns: list[dict[str, Any]]
    ratings: list[dict[str, Any]]
    started: float


def _first_offsets(records: list[KafkaRecord]) -> dict[tuple[str, int], int]:
    first: dict[tuple[str, int], int] = {}
    for record in records:
        position = (record.topic, record.partition)
        first[position] = min(first.get(position, record.offset), record.offset)
    return first


def rejects_data(error: BaseException) -> bool:
    """Whether ``error`` is the store refusing the rows' *values*, so that retrying the same rows
    can never succeed: a data exception (SQLSTATE class 22: a value out of a type's range, text it
    cannot hold) or an integrity violation (class 23, a CHECK constraint, a trigger's ``ABORT``).

    Kept narrow on purpose, because such an error gets records dead-lettered: connectivity,
    locking and serialization failures (``OperationalError``, ``InterfaceError``, an invalidated
    connection) and schema errors (``ProgrammingError``: a table or column missing) are retried
    like an outage. So are NOT NULL violations: every row ingest builds fills every NOT NULL
    column, so one means the schema and the code disagree, and every record would be refused.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return False
    error = _driver_error(error)
    if isinstance(error, psycopg.Error):
        return isinstance(error, psycopg.DataError | psycopg.IntegrityError) and not isinstance(
            error, psycopg.errors.NotNullViolation)
    if isinstance(error, sqlite3.IntegrityError):
        return getattr(error, "sqlite_errorname", None) != "SQLITE_CONSTRAINT_NOTNULL"
    return isinstance(error, sqlite3.DataError)


def _driver_error(error: BaseException) -> BaseException:
    """The database driver's exception under SQLAlchemy's wrapper, or ``error`` itself."""
    return error.orig if isinstance(error, DBAPIError) and error.orig is not None else error


def describe_store_error(error: BaseException) -> str:
    """One line on a store error: its class, SQLSTATE and primary message, never the statement or
    the database's DETAIL/CONTEXT lines (they can quote a row, i.e. conversation text)."""
    cause = _driver_error(error)
    if isinstance(cause, psycopg.Error):
        message = cause.diag.message_primary or str(cause)
        code = f" (SQLSTATE {cause.sqlstate})" if cause.sqlstate else ""
    else:
        message, code = str(cause), ""
    lines = message.strip().splitlines() or [""]
    return f"{cause.__class__.__name__}{code}: {lines[0]}"


def _position(record: KafkaRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


@dataclass
class _RowsByRecord:
    """A batch's rows keyed by their record's (topic, partition, offset), for writing parts of it."""

    turns: dict[tuple[str, int, int], dict[str, Any]]
    ratings: dict[tuple[str, int, int], dict[str, Any]]
    dead_letters: dict[tuple[str, int, int], DeadLetterRecord]


def _without_rejected(batch: DecodedBatch, rejected: list[DeadLetterRecord]) -> DecodedBatch:
    """``batch`` with the records the store rejected moved to its dead letters."""
    gone = {_position(dead.record) for dead in rejected}
    return dataclasses.replace(
        batch,
        conversations=[item for item in batch.conversations if _position(item[0]) not in gone],
        ratings=[item for item in batch.ratings if _position(item[0]) not in gone],
        dead_letters=[dead for dead in batch.dead_letters if _position(dead.record) not in gone] + rejected,
    )


class BatchFailed(MonitorError):
    def __init__(self, stage: str, cause: Exception, description: str | None = None) -> None:
        super().__init__(f"batch failed at {stage}: {description or f'{cause.__class__.__name__}: {cause}'}")
        self.stage = stage


class IngestLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        source: EventSource,
        sessions: sessionmaker[Session],
        scorer: Scorer,
        dead_letter_sink: DeadLetterSink,
        metrics: Metrics,
        health: HealthState,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
        backlog: Backlog | None = None,
    ) -> None:
        self._settings = settings
        self._backlog = backlog
        self._source = source
        self._sessions = sessions
        self._scorer = scorer
        self._dead_letter_sink = dead_letter_sink
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall_clock = wall_clock
        self._timestamps = TimestampBounds(
            future_tolerance=timedelta(seconds=settings.ingest_future_tolerance_seconds),
            floor=settings.ingest_timestamp_floor,
        )
        self._next_lag_refresh = 0.0
        self._backoff = settings.retry_backoff_seconds
        self._in_flight: _InFlight | None = None
        self._reward_model_shown = scorer.identity
        self._segments = SegmentScheme.from_settings(settings)
        self._reward_by_segment: dict[str, Histogram] = {}  # the histogram's child per segment key
        metrics.set_reward_model(scorer.identity)
        metrics.init_topics(settings.topics + (settings.dlq_topic,))
        metrics.dead_letters.labels(reason=STORE_REJECTED)  # a series from the start, for alerts on it

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in flight is finished first."""
        log.info("ingest loop started", extra={"topics": list(self._settings.topics)})
        # The poller (Kafka fetch + CRC checks) and the writer hand the GIL back and forth at every
        # database round trip; the default 5 ms switch interval makes each hand-off wait. Measured
        # with `monitor bench ingest`: ~10% more events/s at 0.5 ms.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-decoder") as decoder, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
            self._source.set_revoke_hook(self._finish_in_flight)
            try:
                while not stop.is_set():
                    self._refresh_lag_if_due()
                    records = self._source.poll()
                    if self._backlog is not None:
                        self._backlog.note_poll(len(records))
                    # Decoding starts now, beside the write of the batch in flight; if that write
                    # fails, these records are rewound and this decoding goes unused.
                    prepared = decoder.submit(self._prepare, records) if records else None
                    if not self._finish_in_flight(polled_meanwhile=records):
                        stop.wait(self._backoff)
                        self._backoff = min(self._backoff * 2, self._settings.retry_backoff_max_seconds)
                        continue
                    if prepared is not None:
                        self._in_flight = _InFlight(records, writer.submit(self._store, records, prepared))
                self._finish_in_flight()
            finally:
                self._source.set_revoke_hook(None)
                sys.setswitchinterval(switch_interval)
        log.info("ingest loop stopped")

    def _finish_in_flight(self, polled_meanwhile: list[KafkaRecord] | None = None) -> bool:
        """Wait for the batch in flight; commit it to Kafka, or rewind and report failure (False)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return True
        try:
            batch = in_flight.future.result()
        except BatchFailed as exc:
            self._metrics.batch_failures.labels(stage=exc.stage).inc()
            log.warning("batch failed; rewinding and retrying", extra={"error": str(exc)})
            # The records polled meanwhile come after the failed ones: drop and re-read them too.
            self._source.rewind(_first_offsets(in_flight.records + (polled_meanwhile or [])))
            return False
        self._commit(batch)
        self._backoff = self._settings.retry_backoff_seconds
        return True

    def process_batch(self, records: list[KafkaRecord]) -> DecodedBatch:
        """Decode, score and write one polled batch (steps 1-4; what the writer thread runs).

        Return the batch as written (records the store rejected among its dead letters); raise
        :class:`BatchFailed` when nothing of it may be committed to Kafka, nothing else.
        """
        return self._store(records, self._prepare(records))

    def _prepare(self, records: list[KafkaRecord]) -> _Prepared:
        """Steps 1-2: decode and validate, score, build the rows (the decoder thread)."""
        started = time.perf_counter()
        # One reading of the wall clock per batch: it bounds the events' ts and stamps the rows.
        received_at = self._wall_clock()
        batch = decode_batch(
            records,
            conversations_topic=self._settings.conversations_topic,
            ratings_topic=self._settings.ratings_topic,
            now=received_at,
            timestamps=self._timestamps,
        )
        outcomes = self._score([event for _, event in batch.conversations])
        identity = self._scorer.identity
        turns = [
            turn_row(record, event, outcome, identity, received_at)
            for (record, event), outcome in zip(batch.conversations, outcomes, strict=True)
        ]
        ratings = [rating_row(record, event, received_at) for record, event in batch.ratings]
        return _Prepared(batch, received_at, turns, ratings, started)

    def _store(self, records: list[KafkaRecord], prepared: _Prepared | Future[_Prepared]) -> DecodedBatch:
        """Steps 3-4 (the writer thread), once ``prepared`` is ready."""
        if isinstance(prepared, Future):
            prepared = prepared.result()  # raises the decoder's BatchFailed (scoring)
        batch = self._write(records, prepared)
        self._record(batch, time.perf_counter() - prepared.started)
        return batch

    def _commit(self, batch: DecodedBatch) -> None:
        try:
            self._source.commit(batch.next_offsets)
        except Exception as exc:  # noqa: BLE001 - the store holds the offsets; Kafka's are a fallback
            self._metrics.batch_failures.labels(stage="commit").inc()
            log.warning("Kafka offset commit failed (the store has the offsets)", extra={"error": str(exc)})

    def _write(self, records: list[KafkaRecord], prepared: _Prepared) -> DecodedBatch:
        """Write the batch; return it, amended with the records the store rejected (if any)."""
        batch, received_at, turns, ratings = prepared.batch, prepared.received_at, prepared.turns, prepared.ratings
        self._publish(batch.dead_letters, received_at)
        try:
            self._write_rows(turns, ratings, [d.row(received_at) for d in batch.dead_letters], batch.next_offsets)
        except _STORE_ERRORS as exc:
            if not rejects_data(exc):
                raise self._store_failed(exc) from exc
            rows = _RowsByRecord(
                turns={_position(record): row for (record, _), row in zip(batch.conversations, turns, strict=True)},
                ratings={_position(record): row for (record, _), row in zip(batch.ratings, ratings, strict=True)},
                dead_letters={_position(dead.record): dead for dead in batch.dead_letters},
            )
            rejected: list[DeadLetterRecord] = []
            self._bisect(records, exc, rows, received_at, rejected)
            batch = _without_rejected(batch, rejected)
        self._health.mark_store(True)
        self._metrics.store_up.set(1)
        return batch

    def _publish(self, dead_letters: Sequence[DeadLetterRecord], received_at: datetime) -> None:
        try:
            self._dead_letter_sink.publish(dead_letters, received_at)
        except Exception as exc:
            self._health.mark_broker(False, str(exc))
            raise BatchFailed("dead_letter_topic", exc) from exc

    def _write_rows(self, turns: Sequence[dict[str, Any]], ratings: Sequence[dict[str, Any]],
                    dead_letters: Sequence[dict[str, Any]], next_offsets: dict[tuple[str, int], int]) -> None:
        with self._sessions.begin() as session:
            write_ingest_batch(
                session,
                group_id=self._settings.consumer_group,
                turns=turns,
                ratings=ratings,
                dead_letters=dead_letters,
                next_offsets=next_offsets,
            )

    def _store_failed(self, exc: Exception) -> BatchFailed:
        description = describe_store_error(exc)
        self._health.mark_store(False, description)
        self._metrics.store_up.set(0)
        return BatchFailed("store", exc, description)

    def _bisect(self, records: Sequence[KafkaRecord], error: Exception, rows: _RowsByRecord,
                received_at: datetime, rejected: list[DeadLetterRecord]) -> None:
        """Write ``records`` (a run of the batch, in poll order, that the store refused with
        ``error``) in halves, the earlier half first, each with the offsets of its own records.

        Order is what keeps the offsets honest: when a part commits, every record polled before
        it is already stored or dead-lettered, so its offsets skip nothing unwritten. A part that
        fails for a connectivity reason fails the whole batch (the parts already committed are
        replayed harmlessly on the retry).
        """
        if len(records) == 1:
            rejected.append(self._dead_letter_rejected(records[0], error, rows, received_at))
            return
        middle = len(records) // 2
        for part in (records[:middle], records[middle:]):
            keys = [_position(record) for record in part]
            try:
                self._write_rows(
                    [rows.turns[k] for k in keys if k in rows.turns],
                    [rows.ratings[k] for k in keys if k in rows.ratings],
                    [rows.dead_letters[k].row(received_at) for k in keys if k in rows.dead_letters],
                    next_offsets(part),
                )
            except _STORE_ERRORS as exc:
                if not rejects_data(exc):
                    raise self._store_failed(exc) from exc
                self._bisect(part, exc, rows, received_at, rejected)

    def _dead_letter_rejected(self, record: KafkaRecord, error: Exception, rows: _RowsByRecord,
                              received_at: datetime) -> DeadLetterRecord:
        """Publish and store ``record`` as a :data:`STORE_REJECTED` dead letter, with its offset."""
        earlier = rows.dead_letters.get(_position(record))
        what = f"its dead letter ({earlier.reason})" if earlier is not None else "it"
        # The database's message may quote the value: drop what a text column refuses, and cap it
        # as every detail is capped (InvalidEvent), so the dead letter always fits the topic.
        text = f"the store rejected {what}: {describe_store_error(error)}".replace("\x00", "")
        detail = InvalidEvent(STORE_REJECTED, text.encode("utf-8", "replace").decode("utf-8")).detail
        dead = DeadLetterRecord(record, STORE_REJECTED, detail)
        # The log names the error's class and the record's position, never the database's message:
        # it may quote the row.
        log.warning(
            "the store rejected a record; dead-lettered",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "error": _driver_error(error).__class__.__name__},
        )
        self._publish([dead], received_at)
        try:
            self._write_rows([], [], [dead.row(received_at)], next_offsets([record]))
        except _STORE_ERRORS as exc:
            raise self._store_failed(exc) from exc
        return dead

    def _score(self, events: list[WireConversation]) -> list[ScoreOutcome]:
        if not events:
            return []
        started = time.perf_counter()
        try:
            outcomes = self._scorer.score(events)
            if len(outcomes) != len(events):
                raise ScoringError(f"scorer returned {len(outcomes)} outcomes for {len(events)} events")
        except Exception as exc:
            raise BatchFailed("scoring", exc) from exc
        metrics = self._metrics
        metrics.scoring_duration.observe(time.perf_counter() - started)
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome.score is not None and math.isfinite(outcome.score):
                key = self._segments.key(event.segment.domain, event.model_version, event.segment.locale)
                child = self._reward_by_segment.get(key)
                if child is None:
                    child = self._reward_by_segment[key] = metrics.reward.labels(segment=key)
                child.observe(outcome.score)
        metrics.scoring_errors.inc(sum(outcome.error is not None for outcome in outcomes))
        stats = getattr(self._scorer, "stats", None)
        if isinstance(stats, ScoringStats):
            metrics.scored_sequences.inc(stats.sequences)
            metrics.scored_tokens.inc(stats.tokens)
            metrics.scoring_padding.set(stats.padding_ratio)
        if self._scorer.identity != self._reward_model_shown:
            self._reward_model_shown = self._scorer.identity
            metrics.set_reward_model(self._scorer.identity)
        return outcomes

    def _record(self, batch: DecodedBatch, seconds: float) -> None:
        metrics = self._metrics
        for topic, count in batch.consumed_by_topic.items():
            metrics.messages_consumed.labels(topic=topic).inc(count)
        metrics.events_accepted.labels(kind="conversation").inc(len(batch.conversations))
        metrics.events_accepted.labels(kind="rating").inc(len(batch.ratings))
        metrics.duplicate_events.inc(batch.duplicates)
        for dead in batch.dead_letters:
            metrics.dead_letters.labels(reason=dead.reason).inc()
        metrics.batch_duration.observe(seconds)
        self._health.last_batch_at = utcnow()
        self._health.batches += 1
        log.debug(
            "batch committed",
            extra={
                "records": batch.size,
                "turns": len(batch.conversations),
                "ratings": len(batch.ratings),
                "dead_letters": len(batch.dead_letters),
                "seconds": round(seconds, 4),
            },
        )

    def _refresh_lag_if_due(self) -> None:
        now = self._clock()
        if now < self._next_lag_refresh:
            return
        self._next_lag_refresh = now + self._settings.lag_refresh_seconds
        try:
            lag = self._source.lag()
        except BrokerUnavailable as exc:
            self._health.mark_broker(False, str(exc))
            self._metrics.broker_up.set(0)
            return
        self._health.mark_broker(True)
        self._metrics.broker_up.set(1)
        for topic, behind in lag.items():
            self._metrics.consumer_lag.labels(topic=topic).set(behind)
