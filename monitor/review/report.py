"""``GET /v1/review/report``: the review queue's labels against the reward model and the users.

* per segment, over its **control** arm (a uniform sample of its traffic, re-weighted by the
  stored inclusion probabilities): human satisfaction, the RM's calibrated prediction, the users'
  realised satisfaction, the human - RM and human - users gaps, each with a 95% interval, and a
  verdict (:mod:`monitor.review.estimate`);
* per alert, over its **targeted** items (the alert's own turns, each weight 1): the same;
* agreement per rubric item (Krippendorff's alpha, :mod:`monitor.review.agreement`) and each
  annotator's gold accuracy, flagged when far below the pool.

Gold items are left out of the estimates (they were not sampled from traffic).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.review.agreement import Label, agreement, gold_accuracy
from monitor.review.estimate import Unit, summarise
from monitor.review.rubric import Rubric
from monitor.store.models import ReviewAnnotation, ReviewItem, Turn


def build_report(session: Session, rubric: Rubric, *, segment: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, draws: int = 1000) -> dict[str, Any]:
    """The report over items whose turns lie in ``[since, until)`` (event time) and ``segment``."""
    query = (select(ReviewItem, ReviewAnnotation.annotator, ReviewAnnotation.labels, Turn.satisfaction)
             .join(ReviewAnnotation, ReviewAnnotation.item_id == ReviewItem.id)
             .outerjoin(Turn, Turn.id == ReviewItem.turn_id))
    if segment is not None:
        query = query.where(ReviewItem.segment == segment)
    if since is not None:
        query = query.where(ReviewItem.turn_ts >= since)
    if until is not None:
        query = query.where(ReviewItem.turn_ts < until)
    items: dict[int, ReviewItem] = {}
    user: dict[int, float | None] = {}
    humans: dict[int, list[float]] = defaultdict(list)
    labels: list[Label] = []
    for item, annotator, answer, satisfaction in session.execute(query):
        items[item.id] = item
        user[item.id] = satisfaction
        labels.append(Label(item.id, annotator, answer))
        if "overall" in answer:
            humans[item.id].append(rubric.satisfaction(answer))

    def unit(item: ReviewItem, weighted: bool) -> Unit:
        return Unit(item.id, 1.0 / item.inclusion_probability if weighted else 1.0, float(np.mean(humans[item.id])),
                    item.rm_prediction, user[item.id], item.reference_satisfaction)

    sampled = [item for item in items.values() if item.gold is None and humans[item.id]]
    segments = []
    for name in sorted({item.segment for item in sampled}):
        control = [unit(item, True) for item in sampled if item.segment == name and item.arm == "control"]
        segments.append({"segment": name, "arm": "control", **summarise(control)})
    alerts = []
    for alert_id in sorted({item.alert_id for item in sampled if item.alert_id is not None}):
        members = [item for item in sampled if item.alert_id == alert_id and item.arm == "targeted"]
        if members:
            alerts.append({"alert_id": alert_id, "segment": members[0].segment, "mode": members[0].mode,
                           **summarise([unit(item, False) for item in members])})
    gold = {item.id: item.gold for item in items.values() if item.gold is not None}
    return {
        "rubric_version": rubric.version,
        "reviewed_items": len(items), "annotations": len(labels),
        "segments": segments, "alerts": alerts,
        "agreement": agreement(labels, rubric, draws=draws),
        "annotators": gold_accuracy(labels, gold),
    }
