"""`DeadLetterPublisher`: puts each rejected record on the dead-letter topic.

The message carries the raw bytes (base64), the source topic/partition/offset and the reason. It is
published and flushed *before* the batch's database transaction commits, so a crash can repeat a
dead letter on the topic (consumers dedupe on ``source``) but never lose one. Raw payloads over
:data:`MAX_RAW_IN_TOPIC` are cut in the topic message (``raw_truncated``), and so are keys over
:data:`MAX_KEY_IN_TOPIC` (``key_truncated``; the message's own Kafka key too), so that a dead
letter always fits under Kafka's default 1 MiB request limit whatever the record (its detail is
capped where it is made, :data:`monitor.errors.MAX_DETAIL`); the ``dead_letters`` table always
keeps the full bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.errors import BrokerUnavailable
from monitor.events import timestamp
from monitor.ingest.decode import DeadLetterRecord
from monitor.kafka_defaults import BOOTSTRAP_TIMEOUT_MS, send_acknowledged

DEAD_LETTER_SCHEMA = "deadletter/v1"
MAX_RAW_IN_TOPIC = 512 * 1024
MAX_KEY_IN_TOPIC = 1024


def _cut_key(key: bytes | None) -> bytes | None:
    return key if key is None or len(key) <= MAX_KEY_IN_TOPIC else key[:MAX_KEY_IN_TOPIC]


def dead_letter_message(dead: DeadLetterRecord, received_at: datetime) -> bytes:
    raw = dead.record.value or b""
    kept = raw[:MAX_RAW_IN_TOPIC]
    message = {
        "schema": DEAD_LETTER_SCHEMA,
        "source": {
            "topic": dead.record.topic,
            "partition": dead.record.partition,
            "offset": dead.record.offset,
            "timestamp_ms": dead.record.timestamp_ms,
            "key_b64": base64.b64encode(_cut_key(dead.record.key) or b"").decode()
            if dead.record.key is not None else None,
            "key_truncated": _cut_key(dead.record.key) != dead.record.key,
        },
        "reason": dead.reason,
        "detail": dead.detail,
        "raw_b64": base64.b64encode(kept).decode(),
        "raw_bytes": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_truncated": len(kept) < len(raw),
        "received_at": timestamp(received_at),
    }
    return json.dumps(message).encode()


class DeadLetterPublisher:
    def __init__(self, bootstrap_servers: list[str], topic: str) -> None:
        self.topic = topic
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id="monitor-dlq",
                acks="all",
                linger_ms=5,
                retries=5,
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot reach Kafka for the dead-letter topic: {exc}") from exc

    def publish(self, dead_letters: Sequence[DeadLetterRecord], received_at: datetime) -> None:
        """Send and flush; raise :class:`BrokerUnavailable` unless every message was acknowledged."""
        if not dead_letters:
            return
        send_acknowledged(self._producer, self.topic,
                          ((_cut_key(d.record.key), dead_letter_message(d, received_at)) for d in dead_letters))

    def close(self) -> None:
        self._producer.close(timeout=5)
