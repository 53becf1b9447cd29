"""`KafkaEventSource`: the consumer side of ingest, behind a narrow seam.

On every partition assignment it seeks to the offsets stored in the database (written in the same
transaction as the rows), so a restarted or rebalanced worker resumes exactly after the last
committed batch. Kafka's own committed offsets trail the database's and are only a fallback.

A stored offset can lie outside its partition's log: past the end when the log was recreated (a
topic deleted and created again; the embedded broker restarted empty while the database kept the
old run's offsets), before the start when retention deleted records this group never consumed.
A consumer seeked past the end stays silent, so every stored offset is checked against the log
before its partition is fetched (:class:`~monitor.ingest.offset_guard.OffsetGuard`), and one
outside is reset by ``MONITOR_OFFSET_RESET`` (docs/ingest.md, "Offsets past the log end").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from monitor.config import Settings
from monitor.errors import BrokerUnavailable
from monitor.health import HealthState
from monitor.ingest.offset_guard import OffsetGuard, OffsetResetter, Position, stored_offset_resets
from monitor.ingest.records import KafkaRecord
from monitor.kafka_defaults import BOOTSTRAP_TIMEOUT_MS, FETCH_MAX_WAIT_MS
from monitor.metrics import Metrics

log = logging.getLogger(__name__)

OffsetLoader = Callable[[list[Position]], Mapping[Position, int]]

__all__ = ["EventSource", "KafkaEventSource", "OffsetLoader", "Position", "stored_offset_resets"]

_PROBE_TIMEOUT_MS = 3000


class EventSource(Protocol):
    def poll(self) -> list[KafkaRecord]: ...
    def commit(self, next_offsets: Mapping[Position, int]) -> None: ...
    def rewind(self, first_offsets: Mapping[Position, int]) -> None: ...
    def lag(self) -> dict[str, int]: ...
    def set_revoke_hook(self, hook: Callable[[], object] | None) -> None: ...
    def close(self) -> None: ...


class _ResumeFromStore(ConsumerRebalanceListener):
    def __init__(self, consumer: KafkaConsumer, load_offsets: OffsetLoader, guard: OffsetGuard) -> None:
        self._consumer = consumer
        self._load_offsets = load_offsets
        self._guard = guard
        self.before_revoke: Callable[[], object] | None = None

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Finish (and commit) the batch in flight while these partitions are still ours.
        if self.before_revoke is not None:
            self.before_revoke()
        self._guard.revoked(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        positions = sorted((tp.topic, tp.partition) for tp in assigned)
        stored = self._load_offsets(positions)
        seeked = {}
        for topic, partition in positions:
            if (topic, partition) in stored:
                tp = TopicPartition(topic, partition)
                self._consumer.seek(tp, stored[(topic, partition)])
                seeked[tp] = stored[(topic, partition)]
        # Checked against the log after this poll: the listener runs inside the consumer's event
        # loop, where it cannot ask the broker anything.
        self._guard.assigned(seeked)
        log.info(
            "partitions assigned",
            extra={"assigned": [f"{t}:{p}" for t, p in positions], "from_store": len(stored)},
        )


class KafkaEventSource:
    def __init__(
        self,
        settings: Settings,
        load_offsets: OffsetLoader,
        *,
        reset_stored: OffsetResetter | None = None,
        metrics: Metrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        """``reset_stored``, ``metrics`` and ``health`` receive the resets of out-of-range offsets
        (none given: the consumer is still reset, and the reset logged)."""
        self._settings = settings
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers,
                group_id=settings.consumer_group,
                client_id=f"monitor-{settings.consumer_group}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.batch_size,
                max_poll_interval_ms=settings.max_poll_interval_ms,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(settings.session_timeout_ms // 5, 100),
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
        self._guard = OffsetGuard(self._consumer, settings, reset_stored=reset_stored, metrics=metrics,
                                   health=health)
        self._listener = _ResumeFromStore(self._consumer, load_offsets, self._guard)
        self._consumer.subscribe(topics=list(settings.topics), listener=self._listener)

    def set_revoke_hook(self, hook: Callable[[], object] | None) -> None:
        """Call ``hook`` (inside ``poll``) before partitions are taken away in a rebalance."""
        self._listener.before_revoke = hook

    def poll(self) -> list[KafkaRecord]:
        polled = self._consumer.poll(
            timeout_ms=self._settings.poll_timeout_ms, max_records=self._settings.batch_size
        )
        self._guard.after_poll(received_records=bool(polled))
        return [
            KafkaRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
            for records in polled.values()
            for r in records
        ]

    def commit(self, next_offsets: Mapping[Position, int]) -> None:
        self._consumer.commit(
            {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in next_offsets.items()}
        )

    def rewind(self, first_offsets: Mapping[Position, int]) -> None:
        assigned = self._consumer.assignment()
        for (topic, partition), offset in first_offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def lag(self) -> dict[str, int]:
        """Records behind the high watermark per topic; raise :class:`BrokerUnavailable`."""
        assigned = sorted(self._consumer.assignment())
        lag = {topic: 0 for topic in self._settings.topics}
        try:
            if not assigned:
                self._consumer.bootstrap(timeout_ms=_PROBE_TIMEOUT_MS, refresh=True)
                return lag
            ends = self._consumer.end_offsets(assigned, timeout_ms=_PROBE_TIMEOUT_MS)
            for tp in assigned:
                behind = ends.get(tp, 0) - self._consumer.position(tp, timeout_ms=_PROBE_TIMEOUT_MS)
                # Some brokers' watermarks trail what they already served; lag is never negative.
                lag[tp.topic] = lag.get(tp.topic, 0) + max(behind, 0)
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka did not answer an offsets request: {exc}") from exc
        return lag

    def close(self) -> None:
        self._guard.close()
        self._consumer.close(autocommit=False)
