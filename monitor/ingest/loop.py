"""`IngestLoop`: consume → validate → score → write rows and offsets in one transaction → commit.

Per batch, in this order:

1. decode and validate every record (bad ones become dead letters, never exceptions);
2. score the valid conversation turns (the `Scorer` seam);
3. publish dead letters to the dead-letter topic and wait for the acknowledgement;
4. write turns, ratings, dead letters, rating joins and the next offsets in **one** transaction;
5. commit the offsets to Kafka (a failure here costs nothing: the store already has them).

Steps 1-4 run on a writer thread while the main thread polls the next batch, so fetching from
Kafka overlaps with writing to the store (one batch in flight, never more; batches are written in
order). The consumer is only touched from the main thread.

If step 2, 3 or 4 fails, nothing of the batch is committed anywhere: the consumer is rewound to the
first offsets of the failed batch (and of the one polled meanwhile, which is dropped), and ingest
resumes after a backoff, so a dependency outage delays ingest but loses nothing. A stop request is
honoured between batches; the batch in flight finishes. On a rebalance, the batch in flight is
finished before the partitions are given up.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from prometheus_client import Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.errors import BrokerUnavailable, MonitorError, ScoringError
from monitor.events import ConversationEvent
from monitor.health import HealthState
from monitor.ingest.decode import (
    DeadLetterRecord,
    DecodedBatch,
    TimestampBounds,
    decode_batch,
    rating_row,
    turn_row,
)
from monitor.ingest.records import KafkaRecord
from monitor.ingest.source import EventSource
from monitor.metrics import Metrics
from monitor.scoring.base import ScoreOutcome, Scorer, ScoringStats
from monitor.store.models import utcnow
from monitor.store.writes import write_ingest_batch

log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    def publish(self, dead_letters: Sequence[DeadLetterRecord], received_at: datetime) -> None: ...


@dataclass
class _InFlight:
    records: list[KafkaRecord]
    future: Future[DecodedBatch]


def _first_offsets(records: list[KafkaRecord]) -> dict[tuple[str, int], int]:
    first: dict[tuple[str, int], int] = {}
    for record in records:
        position = (record.topic, record.partition)
        first[position] = min(first.get(position, record.offset), record.offset)
    return first


class BatchFailed(MonitorError):
    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(f"batch failed at {stage}: {cause.__class__.__name__}: {cause}")
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
    ) -> None:
        self._settings = settings
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

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in flight is finished first."""
        log.info("ingest loop started", extra={"topics": list(self._settings.topics)})
        # The poller (Kafka fetch + CRC checks) and the writer hand the GIL back and forth at every
        # database round trip; the default 5 ms switch interval makes each hand-off wait. Measured
        # with `monitor bench ingest`: ~10% more events/s at 0.5 ms.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0005))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
            self._source.set_revoke_hook(self._finish_in_flight)
            try:
                while not stop.is_set():
                    self._refresh_lag_if_due()
                    records = self._source.poll()
                    if not self._finish_in_flight(polled_meanwhile=records):
                        stop.wait(self._backoff)
                        self._backoff = min(self._backoff * 2, self._settings.retry_backoff_max_seconds)
                        continue
                    if records:
                        self._in_flight = _InFlight(records, writer.submit(self._decode_and_write, records))
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

    def _decode_and_write(self, records: list[KafkaRecord]) -> DecodedBatch:
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
        self._write(batch, received_at)
        self._record(batch, time.perf_counter() - started)
        return batch

    def _commit(self, batch: DecodedBatch) -> None:
        try:
            self._source.commit(batch.next_offsets)
        except Exception as exc:  # noqa: BLE001 - the store holds the offsets; Kafka's are a fallback
            self._metrics.batch_failures.labels(stage="commit").inc()
            log.warning("Kafka offset commit failed (the store has the offsets)", extra={"error": str(exc)})

    def _write(self, batch: DecodedBatch, received_at: datetime) -> None:
        events: list[ConversationEvent] = [event for _, event in batch.conversations]
        outcomes = self._score(events)
        identity = self._scorer.identity
        turns = [
            turn_row(record, event, outcome, identity, received_at)
            for (record, event), outcome in zip(batch.conversations, outcomes, strict=True)
        ]
        ratings = [rating_row(record, event, received_at) for record, event in batch.ratings]
        try:
            self._dead_letter_sink.publish(batch.dead_letters, received_at)
        except Exception as exc:
            self._health.mark_broker(False, str(exc))
            raise BatchFailed("dead_letter_topic", exc) from exc
        try:
            with self._sessions.begin() as session:
                write_ingest_batch(
                    session,
                    group_id=self._settings.consumer_group,
                    turns=turns,
                    ratings=ratings,
                    dead_letters=[d.row(received_at) for d in batch.dead_letters],
                    next_offsets=batch.next_offsets,
                )
        except SQLAlchemyError as exc:
            self._health.mark_store(False, f"{exc.__class__.__name__}: {exc}")
            self._metrics.store_up.set(0)
            raise BatchFailed("store", exc) from exc
        self._health.mark_store(True)
        self._metrics.store_up.set(1)

    def _score(self, events: list[ConversationEvent]) -> list[ScoreOutcome]:
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
