"""Publish alert state changes to the flags topic as ``flag/v1`` events (key = segment).

At least once: an alert is marked published only after Kafka acknowledged its event, so a crash or
an unreachable broker means it is sent again on the next run, never lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from monitor.events import FLAG_SCHEMA, FlagEvent, to_wire
from monitor.kafka_defaults import AcknowledgedProducer
from monitor.store.models import Alert, utcnow

_FLAG_NAMESPACE = uuid.UUID("4f1d7c4e-0d0b-4a55-9b7e-6d6f6e69746f")
_WINDOW_FIELDS = ("labels", "from", "to", "mean_residual", "z", "reward_mean", "satisfaction_mean",
                  "predicted_satisfaction_mean")


def flag_event(alert: Alert, state: str | None = None) -> FlagEvent:
    """The ``flag/v1`` event of ``alert`` in ``state`` (default: its current state)."""
    state = state or alert.state
    window = alert.evidence.get("window", {})
    return FlagEvent.model_validate({
        "schema": FLAG_SCHEMA,
        "flag_id": uuid.uuid5(_FLAG_NAMESPACE, f"{alert.key}|{state}"),
        "alert_key": alert.key, "segment": alert.segment, "detector": alert.detector,
        "direction": alert.direction, "mode": alert.mode,
        "modes": list(alert.evidence.get("attribution", {}).get("modes", [])),
        "state": state, "started_at": alert.started_at,
        "resolved_at": alert.resolved_at if state == "resolved" else None,
        "emitted_at": utcnow(),
        "window": {name: window.get(name) for name in _WINDOW_FIELDS},
        "top_event_ids": [example["event_id"] for example in alert.evidence.get("top_examples", [])],
    })


class FlagPublisher(AcknowledgedProducer):
    def __init__(self, bootstrap_servers: list[str], topic: str) -> None:
        super().__init__(bootstrap_servers, topic, client_id="monitor-flags", what="the flags topic")

    def publish(self, alerts: Sequence[Alert]) -> None:
        """Send each alert's state change and wait for every acknowledgement; raise :class:`BrokerUnavailable`.

        An alert never published that is already resolved (opened and closed between two runs)
        gets its ``firing`` event first: consumers see every episode open before it closes."""
        self.send((alert.segment.encode(), to_wire(flag_event(alert, state)))
                  for alert in alerts
                  for state in (("firing", "resolved") if alert.published_state is None and alert.state == "resolved"
                                else (alert.state,)))
