"""Tell a training pipeline that a relabeling cycle ended: a ``relabel_cycle/v1`` event on the
relabel topic (key = cycle id) and, when configured, the same JSON POSTed to a webhook.

**Kafka**, at least once: a cycle is marked published only after Kafka acknowledged its event; an
unreachable broker means it is sent again on the next analyzer run. ``event_id`` is stable per
cycle, so consumers drop duplicates.

**Webhook**, signed and retried: the body is the event; headers ``X-Monitor-Event``,
``X-Monitor-Timestamp`` (Unix seconds) and ``X-Monitor-Signature: sha256=<hex>``, the HMAC-SHA256
of ``"<timestamp>." + body`` under ``MONITOR_RELABEL_WEBHOOK_SECRET`` (a receiver checks it, and
rejects old timestamps against replays). A 2xx answer delivers it; anything else (an error
status, a timeout, a refused connection) is retried after ``backoff x 2^(tries - 1)`` seconds
(at most an hour), up to ``MONITOR_RELABEL_WEBHOOK_ATTEMPTS`` tries; then the cycle records that
the webhook gave up, and why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.errors import BrokerUnavailable
from monitor.events import RELABEL_CYCLE_SCHEMA, RelabelCycleEvent, to_wire
from monitor.kafka_defaults import AcknowledgedProducer
from monitor.relabel.cycles import ANNOUNCED, cycle_view
from monitor.store.models import RelabelCycle, utcnow

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("8a0c2f4e-5b1d-4c3e-9f7a-72656c616265")
MAX_BACKOFF = 3600.0
WEBHOOK_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Monitor-Signature"
TIMESTAMP_HEADER = "X-Monitor-Timestamp"


def cycle_event(view: dict[str, Any], now: datetime) -> RelabelCycleEvent:
    """The ``relabel_cycle/v1`` event of an ended cycle's view (:func:`cycle_view`)."""
    request, results = view["request"], view.get("results") or {}
    audit = (results.get("rm_audit") or view["rm_audit"])["overall"]
    reference = (results.get("reference_accuracy") or {}).get("overall") or {}
    return RelabelCycleEvent.model_validate({
        "schema": RELABEL_CYCLE_SCHEMA, "event_id": uuid.uuid5(_NAMESPACE, str(view["id"])),
        "cycle_id": view["id"], "status": view["status"], "detail": view["detail"],
        "segments": list(request.get("segments") or []), "mode": request.get("mode"),
        "strategy": request.get("strategy", "divergence"), "alert_id": view["alert_id"],
        "pairs": view["progress"]["pairs"], "labelled": view["progress"]["labelled"],
        "preferences": view["preferences"],
        "rm_accuracy": audit.get("accuracy"), "rm_accuracy_ci95": audit.get("ci95"),
        "reference_accuracy": reference.get("accuracy"), "created_by": view["created_by"],
        "created_at": datetime.fromisoformat(view["created_at"]),
        "finished_at": datetime.fromisoformat(view["finished_at"]), "emitted_at": now,
        "export": view["export"],
    })


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class CyclePublisher(AcknowledgedProducer):
    """The relabel topic's producer (key = cycle id)."""

    def __init__(self, bootstrap_servers: list[str], topic: str) -> None:
        super().__init__(bootstrap_servers, topic, client_id="monitor-relabel", what="the relabel topic")

    def publish(self, events: Sequence[RelabelCycleEvent]) -> None:
        self.send((str(e.cycle_id).encode(), to_wire(e)) for e in events)


@dataclass
class Announced:
    published: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    publish_error: str | None = None


class CycleAnnouncer:
    """Publishes the events of ended cycles and delivers their webhooks (see the module)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *,
                 publisher_factory: Callable[[], CyclePublisher] | None = None,
                 post: Callable[..., httpx.Response] | None = None,
                 clock: Callable[[], datetime] = utcnow, metrics: Any = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self._publisher_factory = publisher_factory or (
            lambda: CyclePublisher(settings.bootstrap_servers, settings.relabel_topic))
        self._post = post or httpx.post
        self.clock = clock
        self.metrics = metrics

    def announce(self, *, publish: bool = True) -> Announced:
        out = Announced()
        if publish:
            self._publish(out)
        if self.settings.relabel_webhook_url:
            self._deliver(out)
        return out

    def _publish(self, out: Announced) -> None:
        with self.sessions.begin() as session:
            pending = list(session.scalars(select(RelabelCycle).where(
                RelabelCycle.status.in_(ANNOUNCED), RelabelCycle.event_published_at.is_(None))
                .order_by(RelabelCycle.id).with_for_update(skip_locked=True)))
            if not pending:
                return
            now = self.clock()
            events = [cycle_event(cycle_view(session, cycle), now) for cycle in pending]
            try:
                publisher = self._publisher_factory()
                try:
                    publisher.publish(events)
                finally:
                    publisher.close()
            except BrokerUnavailable as exc:
                out.publish_error = str(exc)
                log.warning("relabel cycle events not published; retrying on the next run",
                            extra={"pending": len(pending), "error": str(exc)})
                return
            for cycle in pending:
                cycle.event_published_at = now
                out.published.append(cycle.id)
            if self.metrics:
                self.metrics.relabel_events_published.inc(len(pending))

    def _deliver(self, out: Announced) -> None:
        url = self.settings.relabel_webhook_url
        secret = self.settings.relabel_webhook_secret
        assert url is not None and secret is not None  # the settings insist on both
        now = self.clock()
        with self.sessions.begin() as session:
            due = list(session.scalars(select(RelabelCycle.id).where(
                RelabelCycle.status.in_(ANNOUNCED), RelabelCycle.webhook_delivered_at.is_(None),
                RelabelCycle.webhook_attempts < self.settings.relabel_webhook_attempts,
                (RelabelCycle.webhook_next_at.is_(None)) | (RelabelCycle.webhook_next_at <= now))
                .order_by(RelabelCycle.id)))
        for cycle_id in due:  # one transaction each: a slow receiver holds one row, not the table
            with self.sessions.begin() as session:
                cycle = session.get(RelabelCycle, cycle_id, with_for_update={"skip_locked": True})
                if cycle is None or cycle.webhook_delivered_at is not None:
                    continue  # another replica has it
                outcome = self._deliver_one(cycle, cycle_view(session, cycle), url, secret.get_secret_value(), now)
                getattr(out, outcome).append(cycle.id)
            if self.metrics:
                self.metrics.relabel_webhook_deliveries.labels(outcome=outcome).inc()

    def _deliver_one(self, cycle: RelabelCycle, view: dict[str, Any], url: str, secret: str, now: datetime) -> str:
        body = to_wire(cycle_event(view, now))
        stamp = str(int(time.time()))
        error = self._send(url, body, {
            "Content-Type": "application/json", "X-Monitor-Event": RELABEL_CYCLE_SCHEMA,
            TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)})
        cycle.webhook_attempts += 1
        if error is None:
            cycle.webhook_delivered_at, cycle.webhook_next_at, cycle.webhook_error = now, None, None
            return "delivered"
        if cycle.webhook_attempts >= self.settings.relabel_webhook_attempts:
            cycle.webhook_next_at = None
            cycle.webhook_error = f"gave up after {cycle.webhook_attempts} tries: {error}"
            log.error("relabel webhook gave up", extra={"cycle": cycle.id, "error": error})
            return "gave_up"
        wait = min(MAX_BACKOFF, self.settings.relabel_webhook_backoff_seconds * 2 ** (cycle.webhook_attempts - 1))
        cycle.webhook_next_at, cycle.webhook_error = now + timedelta(seconds=wait), error
        log.warning("relabel webhook failed; retrying", extra={"cycle": cycle.id, "error": error, "retry_in_s": wait})
        return "retrying"

    def _send(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None when delivered, else why not."""
        try:
            response = self._post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"


__all__ = ["Announced", "CycleAnnouncer", "CyclePublisher", "cycle_event", "signature"]
