"""Simulated traffic with a known divergence, and a direct path into the store, for analyzer tests."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from monitor.analyze.state import SegmentState
from monitor.ingest.decode import decode_batch, rating_row, turn_row
from monitor.ingest.records import KafkaRecord
from monitor.scoring.base import ScoreOutcome
from monitor.sim.scenarios import Scenario
from monitor.sim.traffic import SimulatedMessage, TrafficSimulator
from monitor.store.models import utcnow
from monitor.store.writes import write_ingest_batch

REFERENCE = 200
RATING_RATE = 0.5
# Every segment has its reference well before the onset: 5 segments x 200 labels at 50% ratings.
ONSET_S = 1.6 * REFERENCE * 5 / RATING_RATE / 10


def s1_traffic(seed: int = 3) -> list[SimulatedMessage]:
    """Length hacking from ONSET_S on, at 10 turns per second."""
    simulator = TrafficSimulator(seed, rating_rate=RATING_RATE, scenario=Scenario("S1", onset_s=ONSET_S))
    return list(simulator.messages(10.0, ONSET_S + 500))


def write(sessions, messages: Iterable[SimulatedMessage], chunk: int = 1000) -> None:
    """Write messages through the ingest decoder into the store, ``chunk`` records per batch."""
    messages = list(messages)
    for start in range(0, len(messages), chunk):
        write_records(sessions, [KafkaRecord(m.kind + "s", 0, start + i, m.key.encode(), m.value)
                                 for i, m in enumerate(messages[start:start + chunk])])


def write_records(sessions, records: list[KafkaRecord], *, group_id: str = "g",
                  next_offsets: dict[tuple[str, int], int] | None = None) -> None:
    """One ingest batch of ``records`` (topics ``conversations`` and ``ratings``), offsets as given."""
    batch = decode_batch(records, conversations_topic="conversations", ratings_topic="ratings")
    now = utcnow()
    with sessions.begin() as session:
        write_ingest_batch(session, group_id=group_id,
                           turns=[turn_row(r, e, ScoreOutcome(e.reward), "producer", now)
                                  for r, e in batch.conversations],
                           ratings=[rating_row(r, e, now) for r, e in batch.ratings],
                           dead_letters=[], next_offsets=next_offsets or {})


def assert_same_states(first: dict[str, SegmentState], second: dict[str, SegmentState]) -> None:
    """Equal states: exactly, but for the divergence moments, sums whose float rounding follows
    the batching (they feed only the per-sample divergence, never an alert)."""
    assert first.keys() == second.keys()
    for name in first:
        a, b = first[name].to_json(), second[name].to_json()
        for state in (a, b):
            for track in state["tracks"].values():
                track["moments"] = SegmentState.from_json(state).tracks[track["identity"]].moments
        moments = [(x["moments"], y["moments"]) for x, y in zip(a["tracks"].values(), b["tracks"].values(),
                                                                strict=True)]
        for x, y in moments:
            assert x.n == y.n and np.allclose(x.xx, y.xx, rtol=1e-12) and np.allclose(x.xy, y.xy, rtol=1e-12)
        for state in (a, b):
            for track in state["tracks"].values():
                del track["moments"]
        assert a == b
