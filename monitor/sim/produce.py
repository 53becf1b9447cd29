"""Put simulated traffic on Kafka, paced in real time (or as fast as possible)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.errors import BrokerUnavailable
from monitor.kafka_defaults import BOOTSTRAP_TIMEOUT_MS
from monitor.sim.traffic import SimulatedMessage


@dataclass
class ProduceCounts:
    conversations: int = 0
    ratings: int = 0

    @property
    def total(self) -> int:
        return self.conversations + self.ratings


def produce(
    messages: Iterable[SimulatedMessage],
    *,
    bootstrap_servers: list[str],
    conversations_topic: str,
    ratings_topic: str,
    realtime: bool = True,
    stop: threading.Event | None = None,
    on_progress: Callable[[ProduceCounts], None] | None = None,
) -> ProduceCounts:
    """Send each message to its topic (key = conversation id); with ``realtime`` wait until its
    emit time. Returns how many were sent; raise :class:`BrokerUnavailable` on a send failure."""
    stop = stop or threading.Event()
    counts = ProduceCounts()
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, client_id="monitor-sim", linger_ms=10, acks="all",
                                 bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}") from exc
    started = time.monotonic()
    try:
        for message in messages:
            if realtime:
                delay = message.at - (time.monotonic() - started)
                if delay > 0 and stop.wait(delay):
                    break
            if stop.is_set():
                break
            if message.kind == "conversation":
                producer.send(conversations_topic, key=message.key.encode(), value=message.value)
                counts.conversations += 1
            else:
                producer.send(ratings_topic, key=message.key.encode(), value=message.value)
                counts.ratings += 1
            if on_progress:  # each message: a display of these counts must never trail the store's
                on_progress(counts)
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise BrokerUnavailable(f"producing simulated traffic failed: {exc}") from exc
    finally:
        producer.close(timeout=10)
    if on_progress:
        on_progress(counts)
    return counts
