"""`OffsetGuard`: stored offsets checked against their partitions' logs before anything is fetched.

A stored offset can lie outside its partition's log: past the end when the log was recreated (a
topic deleted and created again; the embedded broker restarted empty while the database kept the
old run's offsets), before the start when retention deleted records this group never consumed.
:class:`~monitor.ingest.source.KafkaEventSource` pauses each partition it seeks to a stored offset
until the guard has checked it, and the guard resets one outside by ``MONITOR_OFFSET_RESET``
(docs/ingest.md, "Offsets past the log end").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.health import HealthState
from monitor.kafka_defaults import BOOTSTRAP_TIMEOUT_MS
from monitor.metrics import OFFSET_RESET_REASONS, Metrics
from monitor.store.models import utcnow
from monitor.store.writes import reset_offsets

# The source's logger: operators (and the tests) find every word about offsets in one place.
log = logging.getLogger("monitor.ingest.source")

Position = tuple[str, int]
_PROBE_TIMEOUT_MS = 3000

#: Moves stored offsets, ``{position: (stored, reset_to)}``; returns the positions it moved.
OffsetResetter = Callable[[Mapping[Position, tuple[int, int]]], Collection[Position]]

# Reading the tail of a log to find its true end: the broker holds a fetch that finds nothing for
# at most _TAIL_FETCH_WAIT_MS, so a poll of _TAIL_POLL_MS that returns nothing saw that answer.
_TAIL_FETCH_WAIT_MS = 100
_TAIL_POLL_MS = 300
_TAIL_DEADLINE_S = 5.0


def out_of_range(offset: int, log_start: int, log_end: int) -> str | None:
    """Why ``offset`` (the next one to consume) lies outside the log whose first record is at
    ``log_start`` and whose next record will get ``log_end``: one of
    :data:`~monitor.metrics.OFFSET_RESET_REASONS`, or None when it lies inside (``log_end``
    included: a consumer that has read everything sits there).

    >>> out_of_range(10_000, 0, 50), out_of_range(3, 7, 50), out_of_range(50, 0, 50), out_of_range(7, 7, 7)
    ('past_end', 'before_start', None, None)
    """
    if offset < log_start:
        return "before_start"
    if offset > log_end:
        return "past_end"
    return None


def reset_target(policy: str, log_start: int, log_end: int) -> int | None:
    """Where ``MONITOR_OFFSET_RESET`` restarts an out-of-range partition (None: policy ``none``).

    >>> reset_target("earliest", 7, 50), reset_target("latest", 7, 50), reset_target("none", 7, 50)
    (7, 50, None)
    """
    return {"earliest": log_start, "latest": log_end}.get(policy)


def stored_offset_resets(sessions: sessionmaker[Session], group_id: str) -> OffsetResetter:
    """An :data:`OffsetResetter` that moves the offsets in the store (its own transaction)."""

    def reset(resets: Mapping[Position, tuple[int, int]]) -> Collection[Position]:
        with sessions.begin() as session:
            return reset_offsets(session, group_id, resets)

    return reset


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class OffsetGuard:
    """Checks the offsets the consumer was seeked to against the partitions' logs and resets those
    outside by policy: move the stored offset, seek, log, count, tell ``/readyz``.

    A partition waiting for its check is paused, so nothing is fetched from an offset outside its
    log (Tansu answers such a fetch with nothing, forever; Apache Kafka answers OFFSET_OUT_OF_RANGE
    and the client resets to the earliest offset silently, leaving the store's offset ahead). Under
    policy ``none`` an out-of-range partition stays paused and ``/readyz`` says why.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        settings: Settings,
        *,
        reset_stored: OffsetResetter | None,
        metrics: Metrics | None,
        health: HealthState | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._settings = settings
        self._policy = settings.offset_reset
        self._reset_stored = reset_stored
        self._metrics = metrics
        self._health = health if health is not None else HealthState()
        self._clock = clock
        self._tail_reader: KafkaConsumer | None = None
        self._unchecked: dict[TopicPartition, int] = {}  # paused until checked: the offset seeked to
        self._held: dict[TopicPartition, str] = {}  # out of range under policy none: why
        self._inside_at: dict[TopicPartition, int] = {}  # the last position found inside the log
        self._retry_at = 0.0
        self._next_scan = 0.0
        if metrics is not None:
            for topic in settings.topics:
                for reason in OFFSET_RESET_REASONS:
                    metrics.offset_resets.labels(topic=topic, reason=reason)

    # The listener calls these inside the consumer's event loop: local state only, no requests.
    def assigned(self, seeked: Mapping[TopicPartition, int]) -> None:
        if seeked:
            self._consumer.pause(*seeked)
            self._unchecked.update(seeked)
            self._retry_at = 0.0
            self._publish()

    def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self._unchecked.pop(tp, None)
            self._held.pop(tp, None)
            self._inside_at.pop(tp, None)
        self._publish()

    def after_poll(self, received_records: bool) -> None:
        """Check what awaits a check; when a poll brought nothing, look (cheaply) for a position
        that a log recreated under a running consumer left beyond its end."""
        now = self._clock()
        if self._unchecked:
            if now >= self._retry_at:
                self._check(dict(self._unchecked))
        elif not received_records and now >= self._next_scan:
            self._next_scan = now + self._settings.lag_refresh_seconds
            suspects = self._beyond_highwater()
            if suspects:
                self._check(suspects)

    def _beyond_highwater(self) -> dict[TopicPartition, int]:
        # Position and the fetches' high watermark are both known locally. On Apache Kafka a
        # position never passes the watermark; Tansu's watermark undercounts, so there a position
        # past it is only a suspect, checked once per position.
        suspects = {}
        paused = self._consumer.paused()
        for tp in self._consumer.assignment():
            if tp in paused:
                continue
            highwater = self._consumer.highwater(tp)
            position = self._consumer.position(tp, timeout_ms=_PROBE_TIMEOUT_MS)
            if highwater is not None and position is not None and position > highwater \
                    and self._inside_at.get(tp) != position:
                suspects[tp] = position
        return suspects

    def _check(self, offsets: dict[TopicPartition, int]) -> None:
        partitions = sorted(offsets)
        try:
            starts = self._consumer.beginning_offsets(partitions, timeout_ms=_PROBE_TIMEOUT_MS)
            reported = self._consumer.end_offsets(partitions, timeout_ms=_PROBE_TIMEOUT_MS)
            ends = self._true_ends([tp for tp in partitions if offsets[tp] > reported[tp]], starts, reported)
        except KafkaError as exc:
            self._retry_at = self._clock() + self._settings.lag_refresh_seconds
            log.warning("could not check stored offsets against the log; retrying",
                        extra={"partitions": [_name(tp) for tp in partitions], "error": str(exc)})
            self._publish(error=f"the broker did not answer an offsets request: {exc}")
            return
        resets: dict[TopicPartition, tuple[str, int]] = {}
        for tp in partitions:
            reason = out_of_range(offsets[tp], starts[tp], ends[tp])
            target = reset_target(self._policy, starts[tp], ends[tp])
            if reason is None:
                self._inside_at[tp] = offsets[tp]
                self._release(tp)
            elif target is None:
                self._hold(tp, offsets[tp], reason, starts[tp], ends[tp])
            else:
                resets[tp] = (reason, target)
        if resets:
            self._reset(offsets, resets, starts, ends, reported)
        self._publish()

    def _true_ends(
        self, partitions: list[TopicPartition], starts: Mapping[TopicPartition, int],
        reported: Mapping[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """Each partition's end, read from the log: one past the last record a fetch returns from
        the reported end's last record on (or the reported end, if larger).

        Before acting on an offset beyond the end the broker reports, this looks again, at the
        records themselves. The embedded broker (Tansu) reports one past the *first* offset of the
        last record batch, not of its last record (measured: 30 records in batches of 10, then 3,
        read back as offsets 0-32, with end offsets 1, 11, 21, 31); trusting it would reset every
        consumer that had simply read everything. On Apache Kafka the reported end is exact and
        this reads at most one record, and only for an offset that is out of range.
        """
        ends = dict(reported)
        if not partitions:
            return ends
        if self._tail_reader is None:
            self._tail_reader = KafkaConsumer(
                bootstrap_servers=self._settings.bootstrap_servers,
                group_id=None,
                client_id=f"monitor-{self._settings.consumer_group}-offset-check",
                enable_auto_commit=False,
                fetch_max_wait_ms=_TAIL_FETCH_WAIT_MS,
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            )
        reader = self._tail_reader
        reader.assign(partitions)
        try:
            for tp in partitions:
                reader.seek(tp, max(reported[tp] - 1, starts[tp]))
            deadline = self._clock() + _TAIL_DEADLINE_S
            while self._clock() < deadline:
                polled = reader.poll(timeout_ms=_TAIL_POLL_MS)
                for tp, records in polled.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                if not polled and all(reader.highwater(tp) is not None for tp in partitions):
                    break
        finally:
            reader.unsubscribe()
        return ends

    def _reset(
        self, offsets: Mapping[TopicPartition, int], resets: Mapping[TopicPartition, tuple[str, int]],
        starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int],
        reported: Mapping[TopicPartition, int],
    ) -> None:
        # The store first: after the seek, the batches' save_offsets never move it backwards, and a
        # restart would seek to the old offset again, or skip records once the new log reaches it.
        moved: Collection[Position] = [(tp.topic, tp.partition) for tp in resets]
        if self._reset_stored is not None:
            try:
                moved = self._reset_stored(
                    {(tp.topic, tp.partition): (offsets[tp], target) for tp, (_, target) in resets.items()})
            except SQLAlchemyError as exc:
                self._retry_at = self._clock() + self._settings.lag_refresh_seconds
                for tp in resets:  # paused (again) until the store takes the reset
                    self._consumer.pause(tp)
                    self._unchecked[tp] = offsets[tp]
                log.warning("could not move out-of-range stored offsets; retrying",
                            extra={"error": f"{exc.__class__.__name__}: {exc}"})
                self._publish(error=f"the store did not take the offset reset: {exc.__class__.__name__}")
                return
        for tp, (reason, target) in sorted(resets.items()):
            self._consumer.seek(tp, target)
            self._inside_at[tp] = target
            self._release(tp)
            report: dict[str, object] = {
                "topic": tp.topic, "partition": tp.partition, "reason": reason, "stored_offset": offsets[tp],
                "log_start": starts[tp], "log_end": ends[tp], "reported_log_end": reported[tp],
                "policy": self._policy, "reset_to": target, "store_moved": (tp.topic, tp.partition) in moved,
            }
            if reason == "before_start":
                log.error(
                    "DATA LOSS: stored offset %d of %s:%d is before the log start %d: records %d-%d were "
                    "deleted (retention) before this group consumed them; resetting to the %s offset %d",
                    offsets[tp], tp.topic, tp.partition, starts[tp], offsets[tp], starts[tp] - 1, self._policy,
                    target, extra=report)
            else:
                log.warning(
                    "stored offset %d of %s:%d is past the log end %d (log start %d): the log was recreated; "
                    "resetting to the %s offset %d", offsets[tp], tp.topic, tp.partition, ends[tp], starts[tp],
                    self._policy, target, extra=report)
            if self._metrics is not None:
                self._metrics.offset_resets.labels(topic=tp.topic, reason=reason).inc()
            self._health.last_offset_reset = {**report, "at": utcnow().isoformat()}

    def _hold(self, tp: TopicPartition, offset: int, reason: str, start: int, end: int) -> None:
        self._unchecked.pop(tp, None)
        self._consumer.pause(tp)
        where = "past the end" if reason == "past_end" else "before the start"
        why = (f"stored offset {offset} is {where} of the log (offsets {start}-{end}) and "
               "MONITOR_OFFSET_RESET=none: partition paused; move the group's offset in consumer_offsets "
               "or set MONITOR_OFFSET_RESET, then restart")
        if self._held.get(tp) != why:
            log.error("%s: %s", _name(tp), why, extra={
                "topic": tp.topic, "partition": tp.partition, "reason": reason, "stored_offset": offset,
                "log_start": start, "log_end": end, "policy": self._policy})
        self._held[tp] = why

    def _release(self, tp: TopicPartition) -> None:
        self._unchecked.pop(tp, None)
        self._held.pop(tp, None)
        if tp in self._consumer.assignment():
            self._consumer.resume(tp)

    def _publish(self, error: str | None = None) -> None:
        problems = {_name(tp): why for tp, why in sorted(self._held.items())}
        for tp, offset in sorted(self._unchecked.items()):
            problems[_name(tp)] = f"stored offset {offset} not yet checked against the log" + (
                f" ({error})" if error else "")
        self._health.offset_problems = problems  # a new dict: the API thread reads it unlocked

    def close(self) -> None:
        if self._tail_reader is not None:
            self._tail_reader.close(autocommit=False)


