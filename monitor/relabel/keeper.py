"""The relabeling cycles' share of each analyzer run: the policy opens cycles for firing alerts
(:mod:`monitor.relabel.policy`), cycles that are done or past their deadline end
(:meth:`CycleService.settle`), ended cycles are announced (:mod:`monitor.relabel.announce`), and
the relabel gauges are refreshed. A failure here is logged and retried on the next run; it never
stops the analysis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.analyze.segments import SegmentScheme
from monitor.config import Settings
from monitor.relabel.announce import Announced, CycleAnnouncer, CyclePublisher
from monitor.relabel.cycles import COMPLETE, EXPIRED, CycleService
from monitor.relabel.policy import AutoTrigger
from monitor.store.models import RelabelCycle, utcnow

#: Ended cycles the accuracy gauges look back over (the latest per segment wins).
GAUGE_CYCLES = 50


@dataclass
class Kept:
    opened: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    announced: Announced = field(default_factory=Announced)


class CycleKeeper:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], scheme: SegmentScheme, *,
                 metrics: Any = None, embed: Callable[[list[str]], np.ndarray] | None = None,
                 publisher_factory: Callable[[], CyclePublisher] | None = None, post: Any = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.metrics = metrics
        self.cycles = CycleService(sessions, scheme, embed=embed, clock=clock, max_size=settings.relabel_max_size)
        self.policy = AutoTrigger(settings, sessions, self.cycles, clock=clock)
        self.announcer = CycleAnnouncer(settings, sessions, publisher_factory=publisher_factory, post=post,
                                        clock=clock, metrics=metrics)

    def run(self, *, publish: bool = True) -> Kept:
        kept = Kept(opened=self.policy.run())
        kept.ended = self.cycles.settle()
        kept.announced = self.announcer.announce(publish=publish)
        if self.metrics:
            self._record()
        return kept

    def _record(self) -> None:
        with self.sessions() as session:
            statuses = {status: count for status, count in session.execute(
                select(RelabelCycle.status, func.count()).group_by(RelabelCycle.status))}
            ended = session.execute(select(RelabelCycle.results).where(
                RelabelCycle.status.in_((COMPLETE, EXPIRED)), RelabelCycle.results.is_not(None))
                .order_by(RelabelCycle.finished_at.desc()).limit(GAUGE_CYCLES)).scalars().all()
        accuracy: dict[str, dict[str, dict]] = {}
        for results in ended:  # newest first: a segment's latest cycle sets its gauges
            audit = results.get("rm_audit", {}).get("segments", {})
            reference = results.get("reference_accuracy", {}).get("segments", {})
            for segment, figure in audit.items():
                if segment not in accuracy and figure.get("pairs"):
                    accuracy[segment] = {"cycle": figure, "reference": reference.get(segment) or {}}
        self.metrics.record_relabel(statuses, accuracy)


__all__ = ["CycleKeeper", "Kept"]
