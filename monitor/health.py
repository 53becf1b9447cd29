"""`HealthState`: what the service last saw of its dependencies.

The ingest loop writes it and the API's ``/readyz`` reads it; it lives outside both so that
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class HealthState:
    broker_ok: bool = False
    store_ok: bool = False
    broker_error: str | None = None
    store_error: str | None = None
    last_batch_at: datetime | None = None
    batches: int = 0
    #: ``"topic:partition"`` → why its stored offset keeps it from being consumed: not yet checked
    #: against the partition's log, or outside it under ``MONITOR_OFFSET_RESET=none``. Replaced
    #: whole, never mutated, so the API thread can read it without a lock.
    offset_problems: dict[str, str] = field(default_factory=dict)
    #: The last reset of an out-of-range stored offset (topic, partition, reason, stored offset,
    #: log start and end, policy, where it restarted, when), shown by ``/readyz``.
    last_offset_reset: dict[str, object] | None = None

    def mark_broker(self, ok: bool, error: str | None = None) -> None:
        self.broker_ok, self.broker_error = ok, error

    def mark_store(self, ok: bool, error: str | None = None) -> None:
        self.store_ok, self.store_error = ok, error

    @property
    def store_writes_failing(self) -> bool:
        """The last store write failed (reads may still work: a full disk, a read-only replica)."""
        return not self.store_ok and self.store_error is not None
