"""`AppContext`: what the API shares with the rest of the process (store, health, metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.health import HealthState
from monitor.scoring.base import Scorer


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    health: HealthState
    registry: CollectorRegistry
    scorer: Scorer
