"""`AppContext`: what the API shares with the rest of the process (store, health, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.health import HealthState
from monitor.relabel.cycles import CycleService
from monitor.review.queue import ReviewQueue
from monitor.scoring.base import Scorer


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    health: HealthState
    registry: CollectorRegistry
    scorer: Scorer
    review: ReviewQueue = field(init=False)
    cycles: CycleService = field(init=False)

    def __post_init__(self) -> None:
        scheme = SegmentScheme.from_settings(self.settings)
        self.review = ReviewQueue(self.sessions, scheme, lease_seconds=self.settings.review_lease_seconds)
        self.cycles = CycleService(self.sessions, scheme, max_size=self.settings.relabel_max_size)
