"""Client settings, and the acknowledged send, shared by every Kafka client `monitor` creates."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.errors import BrokerUnavailable

#: How long a client constructor waits for the first broker answer. kafka-python's default (30 s)
#: would keep a stop request waiting; the service retries with its own backoff instead.
BOOTSTRAP_TIMEOUT_MS = 5000
#: Longest the broker holds a fetch while no records are waiting (kafka-python's default: 500 ms).
#: Freshness (produced to queryable) is budgeted at 2 s p99 (`monitor bench soak`); the embedded
#: broker added p50 0.14 / p99 0.27 s at 500 ms against 0.03 / 0.08 s at 50 ms. An idle consumer
#: asks ten times a second per broker: nothing next to ingest's own work.
FETCH_MAX_WAIT_MS = 100
#: How long one acknowledged send may wait for the broker.
FLUSH_TIMEOUT_S = 30.0


def send_acknowledged(producer: KafkaProducer, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) pairs and wait until Kafka acknowledged every one of them; raise
    :class:`BrokerUnavailable` otherwise (the caller then keeps them for a retry)."""
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(timeout=FLUSH_TIMEOUT_S)
        for future in futures:
            future.get(timeout=FLUSH_TIMEOUT_S)
    except KafkaError as exc:
        raise BrokerUnavailable(f"topic {topic!r} did not acknowledge: {exc}") from exc


class AcknowledgedProducer:
    """A producer of one topic that waits for every acknowledgement (acks=all): the base of the
    publishers of flags and of relabeling cycles. Raises :class:`BrokerUnavailable` when Kafka
    cannot be reached or does not acknowledge."""

    def __init__(self, bootstrap_servers: list[str], topic: str, *, client_id: str, what: str) -> None:
        self.topic = topic
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, client_id=client_id,
                                           acks="all", retries=5, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach Kafka for {what}: {exc}") from exc

    def send(self, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
        send_acknowledged(self._producer, self.topic, messages)

    def close(self) -> None:
        self._producer.close(timeout=5)
