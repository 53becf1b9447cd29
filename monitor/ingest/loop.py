"""`IngestLoop`: consume → validate → score → write rows and offsets in one transaction → commit.

Per batch, in this order:

1. decode and validate every record (bad ones become dead letters, never exceptions);
2. score the valid conversation turns (the `Scorer` seam);
3. publish dead letters to the dead-letter topic and wait for the acknowledgement;
4. write turns, ratings, dead letters, rating joins and the next offsets in **one** transaction;
5. commit the offsets to Kafka (a failure here costs nothing: the store already has them).

If step 2, 3 or 4 fails, nothing of the batch is committed anywhere: the consumer is rewound to the
batch's first offsets and the batch is retried after a backoff, so a dependency outage delays
ingest but loses nothing. A stop request is honoured between batches; the batch in flight finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.errors import BrokerUnavailable, MonitorError, ScoringError
from monitor.events import ConversationEvent
from monitor.ingest.decode import DecodedBatch, DeadLetterRecord, decode_batch, rating_row, turn_row
from monitor.ingest.health import HealthState
from monitor.ingest.records import KafkaRecord
from monitor.ingest.source import EventSource
from monitor.metrics import Metrics
from monitor.scoring.base import Scorer
from monitor.store.models import utcnow
from monitor.store.writes import write_ingest_batch

log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    def publish(self, dead_letters: list[DeadLetterRecord], received_at: object) -> None: ...


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
    ) -> None:
        self._settings = settings
        self._source = source
        self._sessions = sessions
        self._scorer = scorer
        self._dead_letter_sink = dead_letter_sink
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._next_lag_refresh = 0.0
        self._backoff = settings.retry_backoff_seconds
        metrics.init_topics(settings.topics + (settings.dlq_topic,))

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the batch in flight is finished first."""
        log.info("ingest loop started", extra={"topics": list(self._settings.topics)})
        while not stop.is_set():
            self._refresh_lag_if_due()
            records = self._source.poll()
            if not records:
                continue
            try:
                self.process(records)
            except BatchFailed as exc:
                self._metrics.batch_failures.labels(stage=exc.stage).inc()
                log.warning("batch failed; rewinding and retrying", extra={"error": str(exc)})
                stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, self._settings.retry_backoff_max_seconds)
            else:
                self._backoff = self._settings.retry_backoff_seconds
        log.info("ingest loop stopped")

    def process(self, records: list[KafkaRecord]) -> DecodedBatch:
        """Process one polled batch end to end; raise :class:`BatchFailed` after rewinding."""
        started = time.perf_counter()
        batch = decode_batch(
            records,
            conversations_topic=self._settings.conversations_topic,
            ratings_topic=self._settings.ratings_topic,
        )
        try:
            self._write(batch)
        except BatchFailed:
            self._source.rewind(batch.first_offsets)
            raise
        try:
            self._source.commit(batch.next_offsets)
        except Exception as exc:  # noqa: BLE001 - the store holds the offsets; Kafka's are a fallback
            self._metrics.batch_failures.labels(stage="commit").inc()
            log.warning("Kafka offset commit failed (store has them)", extra={"error": str(exc)})
        self._record(batch, time.perf_counter() - started)
        return batch

    def _write(self, batch: DecodedBatch) -> None:
        received_at = utcnow()
        events: list[ConversationEvent] = [event for _, event in batch.conversations]
        try:
            outcomes = self._scorer.score(events) if events else []
            if len(outcomes) != len(events):
                raise ScoringError(f"scorer returned {len(outcomes)} outcomes for {len(events)} events")
        except Exception as exc:
            raise BatchFailed("scoring", exc) from exc
        turns = [
            turn_row(record, event, outcome.score, self._scorer.identity, outcome.error, received_at)
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
