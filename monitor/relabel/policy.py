"""The automatic trigger: a firing divergence alert opens a relabeling cycle for its segment and
mode (``MONITOR_RELABEL_AUTO_ENABLED``, off by default).

Rate-limited twice: at most one policy cycle per (segment, mode) in
``MONITOR_RELABEL_AUTO_INTERVAL_HOURS``, and at most ``MONITOR_RELABEL_AUTO_MAX_PER_DAY`` policy
cycles in any 24 hours. Each alert opens at most one cycle, whatever the replicas: the cycle's
``Idempotency-Key`` is ``policy:alert:<alert key>``, so two analyzers that meet on one alert make
one cycle. The cycle carries the alert's id, which is how the alert links to it
(``relabel_cycles`` in ``/v1/alerts``). An alert whose slice has no scored turn is not retried
until the interval has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings
from monitor.errors import InvalidInput, NotFound
from monitor.relabel.cycles import CycleRequest, CycleService
from monitor.signals import MODES
from monitor.store.models import Alert, RelabelCycle, utcnow

log = logging.getLogger(__name__)

ACTOR = "policy"


class AutoTrigger:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], cycles: CycleService, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cycles = cycles
        self.clock = clock
        self._declined: dict[str, datetime] = {}  # alert key -> when its slice was empty

    def run(self) -> list[int]:
        """Open the cycles the policy calls for now; their ids."""
        if not self.settings.relabel_auto_enabled:
            return []
        now = self.clock()
        interval = timedelta(hours=self.settings.relabel_auto_interval_hours)
        with self.sessions() as session:
            firing = list(session.scalars(
                select(Alert).where(Alert.state == "firing", Alert.mode.in_(MODES)).order_by(Alert.started_at)))
            linked = set(session.scalars(select(RelabelCycle.alert_id).where(
                RelabelCycle.alert_id.in_([alert.id for alert in firing]))))
            alerts = [alert for alert in firing if alert.id not in linked]
            opened_today = session.scalar(select(func.count()).select_from(RelabelCycle).where(
                RelabelCycle.created_by == ACTOR, RelabelCycle.created_at > now - timedelta(days=1))) or 0
            recent = {(segment, c.request.get("mode")) for c in session.scalars(
                select(RelabelCycle).where(RelabelCycle.created_by == ACTOR, RelabelCycle.created_at > now - interval))
                for segment in c.request.get("segments") or []}
            wanted = [(a.id, a.key, a.segment, a.mode) for a in alerts]
        opened: list[int] = []
        for alert_id, key, segment, mode in wanted:
            if opened_today + len(opened) >= self.settings.relabel_auto_max_per_day:
                log.info("relabel policy: daily limit reached", extra={"limit": self.settings.relabel_auto_max_per_day})
                break
            declined = self._declined.get(key)
            if (segment, mode) in recent or (declined is not None and now - declined < interval):
                continue
            request = CycleRequest(alert_id=alert_id, size=min(self.settings.relabel_auto_size, self.cycles.max_size),
                                   strategy=self.settings.relabel_auto_strategy)
            try:
                cycle, created = self.cycles.create(request, ACTOR, f"policy:alert:{key}")
            except (InvalidInput, NotFound) as exc:
                self._declined[key] = now
                log.info("relabel policy: no cycle for alert", extra={"alert": alert_id, "reason": str(exc)})
                continue
            recent.add((segment, mode))
            if created:
                opened.append(cycle["id"])
                log.info("relabel policy opened a cycle", extra={"alert": alert_id, "cycle": cycle["id"],
                                                                 "segment": segment, "mode": mode})
        return opened


__all__ = ["ACTOR", "AutoTrigger"]
