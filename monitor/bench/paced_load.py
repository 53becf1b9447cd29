"""The load side of `monitor bench soak`: simulated traffic handed out on a schedule, and a probe
that times when sampled events become queryable in the store.

:class:`PacedTraffic` is the iterable :func:`monitor.sim.produce.produce` sends from: the *i*-th
message is handed out ``i / rate`` seconds after the first, and every :data:`SAMPLE_EVERY`-th one
is reported with the moment it was handed out. :class:`FreshnessProbe` polls PostgreSQL for those
event ids; freshness is the time from hand-out to the start of the first poll whose snapshot held
the row, so it includes the producer's linger, the broker, ingest and the commit. Each row's
``ingested_at`` (the wall clock when serve began decoding its batch) splits it in two: produced to
received (producer, broker, fetch, waiting to be polled) and received to queryable (decode, the
wait for the batch ahead, the write and its commit).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg

from monitor.errors import MonitorError
from monitor.sim.traffic import SimulatedMessage, TrafficSimulator

SAMPLE_EVERY = 20
PROBE_INTERVAL_S = 0.05
MAX_LAG_S = 10.0
#: Events per assistant turn in the simulator's stationary traffic: the turn, and a rating for
#: 35% of turns. The simulator runs at rate / this many turns per second, so event time keeps
#: step with the wall clock.
EVENTS_PER_TURN = 1.35


class ProducerBehind(MonitorError):
    """The producer cannot keep the requested rate on this machine."""


def simulated_traffic(events: int, rate: float, *, seed: int = 2026,
                      progress: Callable[[int], None] | None = None) -> list[SimulatedMessage]:
    """The first ``events`` messages of stationary simulated traffic (turns with producer-side rewards
    and their ratings) at ``rate`` events per second, event time starting now. Generated up front:
    the simulator costs about 200 µs per event, which paced alongside would take a core's fifth
    from serve at 2,000 events/s and, on a busy machine, keep the producer from its schedule."""
    turn_rate = rate / EVENTS_PER_TURN
    stream = TrafficSimulator(seed, start=datetime.now(UTC)).messages(turn_rate, 2 * events / turn_rate + 3600)
    messages = []
    for message in itertools.islice(stream, events):
        messages.append(SimulatedMessage(message.kind, message.key, message.value, message.at))  # no truth kept
        if progress is not None and len(messages) % 100_000 == 0:
            progress(len(messages))
    if len(messages) < events:
        raise MonitorError(f"the simulator ran out after {len(messages):,} events")
    return messages


class PacedTraffic:
    """``messages``, each handed out when due: the *i*-th ``i / rate`` seconds after the first.
    ``on_sample(message, handed_at)`` sees every ``sample_every``-th one just before it is handed
    out; :class:`ProducerBehind` is raised once a message is due ``max_lag_s`` ago."""

    def __init__(self, messages: Sequence[SimulatedMessage], rate: float, *, sample_every: int = SAMPLE_EVERY,
                 on_sample: Callable[[SimulatedMessage, float], None] | None = None, max_lag_s: float = MAX_LAG_S,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.messages, self.rate, self.sample_every = messages, rate, sample_every
        self.on_sample, self.max_lag_s, self._clock, self._sleep = on_sample, max_lag_s, clock, sleep
        self.handed_out = 0
        self.max_lag = 0.0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def __iter__(self) -> Iterator[SimulatedMessage]:
        started = self._clock()
        self.first_at = started
        for index, message in enumerate(self.messages):
            due = started + index / self.rate
            now = self._clock()
            if now < due:
                self._sleep(due - now)
                now = self._clock()
            elif now - due > self.max_lag_s:
                raise ProducerBehind(
                    f"the producer fell {now - due:.1f} s behind its schedule after {index:,} events: this machine "
                    f"cannot send {self.rate:,.0f} events/s (try a lower --rate)")
            self.max_lag = max(self.max_lag, now - due)
            if self.on_sample is not None and index % self.sample_every == 0:
                self.on_sample(message, now)
            self.handed_out, self.last_at = index + 1, now
            yield message

    @property
    def achieved_rate(self) -> float:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.handed_out - 1) / (self.last_at - self.first_at)


class FreshnessProbe(threading.Thread):
    """Polls the store for the sampled events every ``interval`` seconds and records, for each, the
    seconds from its produce time to the start of the first poll that saw it."""

    _QUERY = ("SELECT event_id, ingested_at FROM turns WHERE event_id = ANY(%s::uuid[]) "
              "UNION ALL SELECT event_id, ingested_at FROM ratings WHERE event_id = ANY(%s::uuid[])")

    def __init__(self, database_url: str, interval: float = PROBE_INTERVAL_S) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self._url, self.interval = database_url, interval
        self._lock = threading.Lock()
        # event id -> (is a turn, produced at: monotonic, wall clock)
        self._pending: dict[uuid.UUID, tuple[bool, float, float]] = {}
        self.seconds: list[float] = []  # produced to queryable
        self.received: list[float] = []  # produced to received by serve, of each entry of seconds
        self.produced_at: list[float] = []  # of each entry of seconds (monotonic)
        self.poll_starts: list[float] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def expect(self, message: SimulatedMessage, produced_at: float) -> None:
        event_id = uuid.UUID(json.loads(message.value)["event_id"])
        with self._lock:
            self._pending[event_id] = (message.kind == "conversation", produced_at, time.time())

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True) as connection:
                next_poll = time.monotonic()
                while not self.stop_event.wait(max(0.0, next_poll - time.monotonic())):
                    next_poll += self.interval
                    self._poll(connection)
        except BaseException as exc:  # noqa: BLE001 - handed to the bench's main thread, which raises it
            self.error = exc

    def _poll(self, connection: psycopg.Connection) -> None:
        with self._lock:
            turns = [event_id for event_id, (is_turn, _, _) in self._pending.items() if is_turn]
            ratings = [event_id for event_id, (is_turn, _, _) in self._pending.items() if not is_turn]
        started = time.monotonic()
        self.poll_starts.append(started)
        if not turns and not ratings:
            return
        visible = connection.execute(self._QUERY, (turns, ratings)).fetchall()
        with self._lock:
            for event_id, ingested_at in visible:
                _, produced_at, produced_wall = self._pending.pop(event_id)
                self.seconds.append(started - produced_at)
                self.received.append(ingested_at.timestamp() - produced_wall)
                self.produced_at.append(produced_at)

    def resolution(self) -> float:
        """The mean time between poll starts: how finely visibility is timed."""
        starts = self.poll_starts
        return (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else self.interval


@dataclass(frozen=True)
class Freshness:
    samples: int
    unobserved: int  # sampled events the prober never saw (should be 0: every event is stored)
    resolution_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    received_p50_s: float  # produced to received by serve (its rows' ingested_at)
    received_p99_s: float
    #: Per minute of traffic (by produce time): {"minute", "samples", "p50_s", "p99_s", "max_s", "received_p99_s"}.
    by_minute: list[dict[str, float]] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, probe: FreshnessProbe, origin: float) -> Freshness:
        """The figures of what ``probe`` saw; minutes count from ``origin`` (the first event)."""
        seconds, received = np.asarray(probe.seconds), np.asarray(probe.received)
        resolution, unobserved = probe.resolution(), probe.pending
        if not len(seconds):
            return cls(0, unobserved, resolution, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        minutes = ((np.asarray(probe.produced_at) - origin) // 60).astype(int)
        by_minute = []
        for minute in np.unique(minutes):
            of_minute = seconds[minutes == minute]
            p50, p99 = np.percentile(of_minute, [50, 99])
            by_minute.append({"minute": int(minute), "samples": len(of_minute), "p50_s": float(p50),
                              "p99_s": float(p99), "max_s": float(of_minute.max()),
                              "received_p99_s": float(np.percentile(received[minutes == minute], 99))})
        p50, p95, p99 = np.percentile(seconds, [50, 95, 99])
        received_p50, received_p99 = np.percentile(received, [50, 99])
        return cls(len(seconds), unobserved, resolution, float(p50), float(p95), float(p99), float(seconds.max()),
                   float(received_p50), float(received_p99), by_minute)
