"""What the alert page (``/alerts/{id}``) shows, built from the store: the segment's reward and
satisfaction over time around the alert (an SVG line chart), the attribution (SVG bars), the top
examples with their text redacted, the latest drift verdict and the cycles opened on the alert.

Text of turns only ever leaves here through :func:`monitor.redaction.redact_many`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session

from monitor.analyze.segments import ALL, OTHER, SegmentScheme
from monitor.api.charts import Axis, Series, bar_chart, fmt, line_chart, padded_range
from monitor.redaction import redact_many
from monitor.relabel.cycles import cycle_view
from monitor.store.evidence import alert_cycles, binned_turns, example_texts, latest_drift, time_span
from monitor.store.models import Alert

#: Time bins of the reward / satisfaction chart.
BINS = 24


@dataclass(frozen=True)
class Bin:
    start: datetime
    end: datetime
    reward: float | None  # mean RM reward of the bin's scored turns
    rewards: int
    satisfaction: float | None  # mean satisfaction of the bin's rated turns
    ratings: int


def timeline(session: Session, scheme: SegmentScheme, segment: str, started_at: datetime,
             half_width: timedelta, bins: int = BINS) -> list[Bin]:
    """``segment``'s turns in ``bins`` bins of event time over ``started_at`` +- ``half_width``
    (clipped to the stored turns)."""
    first, last = time_span(session)
    since, until = started_at - half_width, started_at + half_width
    if first is not None and first > since:
        since = min(first, started_at)
    if last is not None and started_at < last < until:
        until = last + timedelta(microseconds=1)
    width = (until - since) / bins
    edges = [since + width * i for i in range(bins)] + [until]
    domain = segment.split("/")[0]
    sums = [[0.0, 0, 0.0, 0] for _ in range(bins)]
    for group in binned_turns(session, edges, domain=None if domain in (ALL, OTHER) else domain):
        if scheme.key(group.domain, group.model_version, group.locale) == segment:
            total = sums[group.bin]
            total[0] += group.reward_sum
            total[1] += group.rewards
            total[2] += group.satisfaction_sum
            total[3] += group.ratings
    return [Bin(edges[i], edges[i + 1], rs / rn if rn else None, int(rn), ss / sn if sn else None, int(sn))
            for i, (rs, rn, ss, sn) in enumerate(sums)]


def timeline_chart(bins: list[Bin], markers: list[tuple[datetime, str]]) -> Markup:
    """Reward (left axis) and satisfaction (right axis, 0-1) at the bins' midpoints."""
    origin = bins[0].start
    end = (bins[-1].end - origin).total_seconds()

    def x_of(at: datetime) -> float:
        return (at - origin).total_seconds()

    middles = [x_of(b.start + (b.end - b.start) / 2) for b in bins]
    rewards = [b.reward for b in bins]
    low, high = padded_range([r for r in rewards if r is not None])
    clock = "%H:%M" if end < 86400 else "%m-%d %H:%M"
    ticks = [(end * k / 5, (origin + timedelta(seconds=end * k / 5)).strftime(clock)) for k in range(6)]
    shown = [(x_of(at), label) for at, label in markers if 0 <= x_of(at) <= end]
    return Markup(line_chart(
        [Series("reward", "mean RM reward", list(zip(middles, rewards, strict=True)), "left", "#2458c6",
                [f"{fmt(b.reward)} over {b.rewards} turns" if b.reward is not None else "" for b in bins]),
         Series("satisfaction", "mean user satisfaction (rated turns)",
                list(zip(middles, [b.satisfaction for b in bins], strict=True)), "right", "#d68910",
                [f"{fmt(b.satisfaction)} over {b.ratings} ratings" if b.satisfaction is not None else ""
                 for b in bins])],
        x_range=(0.0, end), left=Axis("RM reward", low, high), right=Axis("satisfaction (0-1)", 0.0, 1.0),
        x_ticks=ticks, markers=shown, title="Reward vs satisfaction over time"))


def attribution_charts(attribution: dict[str, Any]) -> list[tuple[str, str, Markup]]:
    """``(id, caption, svg)``: contributions by mode and by signal, largest first."""
    charts = []
    by_mode = sorted(attribution.get("by_mode", {}).items(), key=lambda kv: -abs(kv[1]))
    if by_mode:
        charts.append(("attribution-modes", "Contribution of each hacking mode to the residual shift "
                       "(satisfaction units; negative: users less satisfied than the reward promised)",
                       Markup(bar_chart(by_mode, title="Attribution by mode"))))
    by_signal = sorted(((name, float(values.get("contribution", 0.0)))
                        for name, values in attribution.get("by_signal", {}).items()), key=lambda kv: -abs(kv[1]))
    if by_signal:
        charts.append(("attribution-signals", "Contribution of each signal: the reward model's over-pricing of it "
                       "times how much more common it is than in the reference",
                       Markup(bar_chart(by_signal, title="Attribution by signal"))))
    return charts


def examples(session: Session, top: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top examples with their prompt and response redacted (one conversation per call)."""
    texts = example_texts(session, [str(example.get("event_id")) for example in top])
    shown = []
    for example in top:
        found = texts.get(str(example.get("event_id")))
        prompt, response = redact_many(found) if found else (None, None)
        shown.append({**example, "prompt": prompt, "response": response})
    return shown


def drift_verdict(session: Session) -> dict[str, Any] | None:
    found = latest_drift(session)
    if found is None:
        return None
    run_id, at, summary = found
    embeddings = summary.get("embeddings") or None
    return {"run_id": run_id, "at": at, "drifted": bool(summary.get("drifted")),
            "columns": list(summary.get("drifted_columns", [])), "share": summary.get("share_drifted"),
            "reference_rows": summary.get("reference_rows"), "current_rows": summary.get("current_rows"),
            "embeddings": None if embeddings is None else bool(embeddings.get("drifted"))}


def alert_page(session: Session, scheme: SegmentScheme, alert: Alert, window: timedelta) -> dict[str, Any]:
    """Everything the alert template shows."""
    evidence = alert.evidence or {}
    reference_end = _parse((evidence.get("reference") or {}).get("to"))
    markers = [(alert.started_at, "alert")] + ([(reference_end, "reference ends")] if reference_end else [])
    bins = timeline(session, scheme, alert.segment, alert.started_at, window)
    return {
        "alert": alert, "evidence": evidence, "window": evidence.get("window") or {},
        "reference": evidence.get("reference") or {}, "attribution": evidence.get("attribution") or {},
        "bins": bins, "timeline": timeline_chart(bins, markers),
        "attribution_charts": attribution_charts(evidence.get("attribution") or {}),
        "examples": examples(session, list(evidence.get("top_examples") or [])),
        "drift": drift_verdict(session),
        "cycles": [cycle_view(session, cycle) for cycle in alert_cycles(session, alert.id)],
    }


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
