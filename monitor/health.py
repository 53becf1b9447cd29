"""`HealthState`: what the service last saw of its dependencies.

The ingest loop writes it and the API's ``/readyz`` reads it; it lives outside both so that
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class HealthState:
    broker_ok: bool = False
    store_ok: bool = False
    broker_error: str | None = None
    store_error: str | None = None
    last_batch_at: datetime | None = None
    batches: int = 0

    def mark_broker(self, ok: bool, error: str | None = None) -> None:
        self.broker_ok, self.broker_error = ok, error

    def mark_store(self, ok: bool, error: str | None = None) -> None:
        self.store_ok, self.store_error = ok, error

    @property
    def store_writes_failing(self) -> bool:
        """The last store write failed (reads may still work: a full disk, a read-only replica)."""
        return not self.store_ok and self.store_error is not None
