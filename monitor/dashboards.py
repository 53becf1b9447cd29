"""Grafana dashboards as code: the one source of truth for ``grafana/dashboards/*.json``.

Each dashboard is a list of :class:`PanelSpec` (title, description, queries, unit, kind); this
module turns them into Grafana dashboard JSON with the Grafana Foundation SDK
(``grafana-foundation-sdk``, in the ``dev`` extra: only generating needs it). Regenerate after a
change and commit the result::

    python -m monitor.dashboards grafana/dashboards

``tests/test_dashboards.py`` fails when the committed JSON differs from what this module
generates, when a panel has no description, and (through a real Prometheus scraping a running
monitor) when a query returns no data. Every panel's description says what it shows and what
to do when it looks wrong. Panels about alerts link to the monitor's own alert pages through the
``monitor_url`` variable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The Prometheus data source every panel queries (grafana/provisioning/datasources).
DATASOURCE_UID = "monitor-prometheus"
#: What ``$segment`` stands for when the queries are run outside Grafana (tests).
SEGMENT_VARIABLE = "segment"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | table
    unit: str = "short"
    width: int = 12
    link: tuple[str, str] | None = None  # (title, url) of a data link; may use ${__field.labels.X}
    min_val: float | None = None
    max_val: float | None = None


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]
    segment_variable: bool = False
    tags: tuple[str, ...] = field(default=("monitor",))


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


ALERT_LINK = ("Open the monitor's alerts for this segment",
              "${monitor_url}/alerts?state=firing&segment=${__field.labels.segment}")
SEG = '{segment="$segment"}'

OVERVIEW = DashboardSpec(
    "monitor-overview", "Reward model monitor: overview",
    "Is the reward model still telling good answers from bad, segment by segment?",
    (
        PanelSpec("Firing divergence alerts",
                  "Divergence episodes open now, by segment, attributed mode and detector. Empty is good. "
                  "When a row appears: click it to open the monitor's alert page, check the evidence and open a "
                  "relabeling cycle (deploy/RUNBOOK.md#monitordivergencealertfiring).",
                  (_q("max by (segment, mode, detector) (monitor_alerts_firing) > 0", "{{segment}} {{mode}}"),),
                  kind="table", width=24, link=ALERT_LINK),
        PanelSpec("Mean reward by segment",
                  "Mean RM reward of each segment's turns in the analyzer's window. Reward climbing while "
                  "satisfaction (next panel) falls is reward hacking; open the Segment dashboard for that segment.",
                  (_q("monitor_segment_reward_mean", "{{segment}}"),)),
        PanelSpec("Satisfaction by segment",
                  "Users' realised satisfaction (ratings, 0-1) per segment. A fall with flat or rising reward "
                  "(previous panel) is what the detectors alert on; a fall in every segment at once is more "
                  "likely a product or rating-UI change than the RM.",
                  (_q('monitor_segment_satisfaction_ratio{source="realised"}', "{{segment}}"),),
                  unit="percentunit", min_val=0, max_val=1),
        PanelSpec("Satisfaction gap with its 95% interval",
                  "Realised minus RM-predicted satisfaction, with the bounds of its 95% interval. Around 0 is "
                  "healthy. A band entirely below -0.05 means users like the answers less than the RM says "
                  "(alert MonitorSatisfactionGapBeyondThreshold).",
                  (_q("monitor_segment_satisfaction_gap_ratio", "{{segment}}"),
                   _q("monitor_segment_satisfaction_gap_bound_ratio", "{{segment}} {{bound}}")),
                  unit="percentunit"),
        PanelSpec("Reward AUC with its 95% interval",
                  "How well reward separates satisfied from unsatisfied turns (0.5: a coin flip). A drop "
                  "below 0.6 means the RM no longer ranks answers like users do (alert MonitorRewardAUCDrop); "
                  "check whether the RM identity changed.",
                  (_q("monitor_segment_reward_auc_ratio", "{{segment}}"),
                   _q("monitor_segment_reward_auc_bound_ratio", "{{segment}} {{bound}}")),
                  min_val=0, max_val=1),
        PanelSpec("Alerts opened by mode (per hour)",
                  "Divergence alerts opened per hour by the hacking mode they are attributed to. A mode that "
                  "keeps reopening is the RM's weak spot: a relabeling cycle with that mode measures it.",
                  (_q("sum by (mode) (increase(monitor_alerts_opened_total[1h]))", "{{mode}}"),)),
    ),
)

SEGMENT = DashboardSpec(
    "monitor-segment", "Reward model monitor: segment",
    "One segment (pick it above): reward distribution, satisfaction, intervals, signals, safety.",
    (
        PanelSpec("Reward quantiles",
                  "The 10th, 50th and 90th percentile of the reward the RM gave this segment's responses "
                  "(histogram monitor_reward). A rising median with flat satisfaction is the typical hacking "
                  "signature; a jump of every quantile at once usually means a new RM (check its identity).",
                  tuple(_q(f"histogram_quantile({q}, sum by (le) (rate(monitor_reward_bucket{SEG}[5m])))",
                           f"p{int(q * 100)}") for q in (0.1, 0.5, 0.9))),
        PanelSpec("Satisfaction: realised and estimated",
                  "Realised (ratings) and estimated (calibrated RM, CBPE-style) satisfaction with the estimate's "
                  "95% interval. Realised below the estimate's interval means the RM over-promises; estimated "
                  "alone (no ratings yet) is all you have on unrated traffic.",
                  (_q(f"monitor_segment_satisfaction_ratio{SEG}", "{{source}}"),
                   _q(f"monitor_segment_estimated_satisfaction_bound_ratio{SEG}", "estimated {{bound}}")),
                  unit="percentunit", min_val=0, max_val=1),
        PanelSpec("Satisfaction gap with its 95% interval",
                  "Realised minus predicted satisfaction with its interval; see the Overview panel of the same "
                  "name. Act when the whole band is below -0.05.",
                  (_q(f"monitor_segment_satisfaction_gap_ratio{SEG}", "gap"),
                   _q(f"monitor_segment_satisfaction_gap_bound_ratio{SEG}", "{{bound}}")),
                  unit="percentunit"),
        PanelSpec("Reward AUC with its 95% interval",
                  "Reward's AUC for satisfied vs unsatisfied turns with its interval; below 0.6 the RM barely "
                  "ranks answers like users.",
                  (_q(f"monitor_segment_reward_auc_ratio{SEG}", "AUC"),
                   _q(f"monitor_segment_reward_auc_bound_ratio{SEG}", "{{bound}}")),
                  min_val=0, max_val=1),
        PanelSpec("Signal means by mode",
                  "Mean of each reward-hacking signal over the window, labelled with the mode it feeds. A signal "
                  "that climbs while satisfaction falls names the mode to relabel; overpromise or "
                  "compliance_missing climbing is a compliance matter (alert MonitorOverpromiseRise).",
                  (_q(f"monitor_segment_signal_mean{SEG}", "{{signal}} ({{mode}})"),)),
        PanelSpec("Safety rates",
                  "over_refusal: refusals among safe prompts; harmful_compliance: answers to harmful prompts. "
                  "Over-refusal doubling is alert MonitorOverRefusalRise; harmful compliance above zero goes to "
                  "the safety team.",
                  (_q(f"monitor_segment_safety_ratio{SEG}", "{{rate}}"),), unit="percentunit", min_val=0),
        PanelSpec("Firing alerts on this segment",
                  "This segment's open divergence episodes by detector and mode; click to open them in the "
                  "monitor.",
                  (_q(f"max by (segment, mode, detector) (monitor_alerts_firing{SEG})", "{{detector}} {{mode}}"),),
                  kind="table", width=24, link=ALERT_LINK),
    ),
    segment_variable=True,
)

REVIEW = DashboardSpec(
    "monitor-review", "Reward model monitor: human review and relabeling",
    "What people say about the answers: the shadow review queue, its agreement, relabeling cycles, "
    "and the RM against people.",
    (
        PanelSpec("Review queue depth by arm",
                  "Open review items by sampling arm (control, targeted, overlap, relabel). A growing queue "
                  "means annotators are not keeping up: add annotators or lower MONITOR_REVIEW_* budgets.",
                  (_q("sum by (arm) (monitor_review_queue_depth)", "{{arm}}"),)),
        PanelSpec("Oldest open review item",
                  "Age of the oldest open item. Over a day fires MonitorReviewBacklogOld; alerts then wait "
                  "unconfirmed.",
                  (_q("max(monitor_review_oldest_open_age_seconds)", "oldest"),), kind="stat", unit="s", width=6),
        PanelSpec("Annotations stored",
                  "Annotations collected so far. Flat while items are open means nobody is labelling.",
                  (_q("max(monitor_review_annotations)", "annotations"),), kind="stat", width=6),
        PanelSpec("Human, RM and users' satisfaction on reviewed items",
                  "Per segment, on the control arm (re-weighted to the traffic): what annotators, the RM's "
                  "calibrated prediction and users say. The RM well above the humans is the RM lying.",
                  (_q("monitor_review_satisfaction_ratio", "{{segment}} {{source}}"),),
                  unit="percentunit", min_val=0, max_val=1),
        PanelSpec("Human minus RM gap with its 95% interval",
                  "Annotators' satisfaction minus the RM's prediction on reviewed items, with its interval. "
                  "Entirely below 0: people confirm the RM over-rates the segment; open a relabeling cycle.",
                  (_q("monitor_review_gap_human_rm_ratio", "{{segment}}"),
                   _q("monitor_review_gap_human_rm_bound_ratio", "{{segment}} {{bound}}")),
                  unit="percentunit"),
        PanelSpec("Annotator agreement (Krippendorff's alpha)",
                  "Agreement per rubric item. Below about 0.4 the labels are too noisy to trust: clarify the "
                  "rubric or retrain annotators before acting on them.",
                  (_q("monitor_review_agreement_alpha", "{{item}}"),), min_val=-1, max_val=1),
        PanelSpec("Annotators flagged",
                  "Annotators whose gold accuracy is far below the pool's. Above zero: review their labels.",
                  (_q("max(monitor_review_annotators_flagged)", "flagged"),), kind="stat", width=6),
        PanelSpec("Relabeling cycles by status",
                  "Cycles collecting, complete, expired, cancelled or insufficient. Expired or insufficient "
                  "cycles mean labels did not come or the slice had no pairs; see /cycles in the monitor.",
                  (_q("sum by (status) (monitor_relabel_cycles)", "{{status}}"),), width=18),
        PanelSpec("RM accuracy against people",
                  "Per segment, from its latest ended cycle: the RM's pairwise accuracy against annotators "
                  "(cycle) and against users' ratings on the reference window (reference), with 95% bounds. "
                  "Cycle accuracy below 0.5 fires MonitorRMLosesToHumans: hand the cycle's export to the RM team.",
                  (_q("monitor_relabel_rm_accuracy_ratio", "{{segment}} {{source}}"),
                   _q("monitor_relabel_rm_accuracy_bound_ratio", "{{segment}} {{source}} {{bound}}")),
                  min_val=0, max_val=1, width=24),
        PanelSpec("Relabel events and webhook deliveries",
                  "relabel_cycle/v1 events acknowledged by Kafka and webhook deliveries by outcome, per hour. "
                  "gave_up above zero: the training pipeline missed a cycle; see its announced.webhook_error.",
                  (_q("sum(increase(monitor_relabel_events_published_total[1h]))", "events"),
                   _q("sum by (outcome) (increase(monitor_relabel_webhook_deliveries_total[1h]))",
                      "webhook {{outcome}}")),
                  width=24),
    ),
)

SERVICE = DashboardSpec(
    "monitor-service", "Reward model monitor: service health",
    "Is the monitor itself keeping up: ingest, scoring, the analyzer, the store and the broker.",
    (
        PanelSpec("Records consumed per second",
                  "Kafka records consumed by topic. Zero while the assistant has traffic: the broker is "
                  "unreachable or the consumer group is stuck.",
                  (_q("sum by (topic) (rate(monitor_messages_consumed_total[5m]))", "{{topic}}"),), unit="reqps"),
        PanelSpec("Consumer lag",
                  "Records waiting per topic, summed over replicas. Rising: add worker replicas (up to the "
                  "partition count) or speed up scoring. Above 10,000 for 10 minutes fires MonitorConsumerLag.",
                  (_q("sum by (topic) (monitor_consumer_lag_messages)", "{{topic}}"),)),
        PanelSpec("Batch duration (p50, p99)",
                  "Wall time of an ingest batch (validate, score, store). A rising p99 with flat scoring "
                  "latency points at the database.",
                  (_q("histogram_quantile(0.5, sum by (le) (rate(monitor_batch_duration_seconds_bucket[5m])))", "p50"),
                   _q("histogram_quantile(0.99, sum by (le) (rate(monitor_batch_duration_seconds_bucket[5m])))",
                      "p99")), unit="s"),
        PanelSpec("Scoring latency (p50, p99)",
                  "Wall time of one scoring batch. A rising p99 means the RM (or its endpoint) is the "
                  "bottleneck: give it a GPU or more replicas.",
                  (_q("histogram_quantile(0.5, sum by (le) (rate(monitor_scoring_duration_seconds_bucket[5m])))",
                      "p50"),
                   _q("histogram_quantile(0.99, sum by (le) (rate(monitor_scoring_duration_seconds_bucket[5m])))",
                      "p99")), unit="s"),
        PanelSpec("Dead letters by reason (per second)",
                  "Records rejected to the dead-letter topic, by reason. A spike after a producer release "
                  "means the producer changed its schema (alert MonitorDeadLetterSpike).",
                  (_q("sum by (reason) (rate(monitor_dead_letters_total[5m]))", "{{reason}}"),), unit="reqps"),
        PanelSpec("Batch failures by stage (per hour)",
                  "Ingest batches that failed and were retried, by stage. Scoring failures fire "
                  "MonitorScoringErrors; store failures mean the database is down.",
                  (_q("sum by (stage) (increase(monitor_batch_failures_total[1h]))", "{{stage}}"),)),
        PanelSpec("Store and broker up",
                  "1 when the database and Kafka answered the last probe. 0 for minutes fires "
                  "MonitorStoreDown or MonitorBrokerDown.",
                  (_q("min(monitor_store_up)", "store"), _q("min(monitor_broker_up)", "broker")),
                  kind="stat", width=6),
        PanelSpec("Analyzer lag",
                  "How far the analyzer's watermark (the event time of the latest turn it saw) is behind now. "
                  "Minutes are normal (ratings arrive late); growing without bound means the analyzer stalled "
                  "or ingest fell behind.",
                  (_q("time() - max(monitor_analyze_watermark_timestamp_seconds)", "lag"),), kind="stat", unit="s",
                  width=6),
        PanelSpec("Analyzer runs by outcome (per hour)",
                  "ok, error or locked (another replica holds the analysis lock). Only errors, or no ok at all, "
                  "need action (alert MonitorAnalyzerStalled).",
                  (_q("sum by (outcome) (increase(monitor_analyze_runs_total[1h]))", "{{outcome}}"),), width=6),
        PanelSpec("Analyzer duration (p50, p99)",
                  "Wall time of one analyzer run. Nearing the one-minute schedule: raise "
                  "MONITOR_ANALYZE_INTERVAL_SECONDS or give the database more resources.",
                  (_q("histogram_quantile(0.5, sum by (le) (rate(monitor_analyze_duration_seconds_bucket[15m])))",
                      "p50"),
                   _q("histogram_quantile(0.99, sum by (le) (rate(monitor_analyze_duration_seconds_bucket[15m])))",
                      "p99")), unit="s", width=6),
        PanelSpec("Reward model in use",
                  "The scorer identity (kind:model@revision). A change not planned by the RM team needs "
                  "explaining (alert MonitorRewardModelChanged).",
                  (_q("max by (identity) (monitor_reward_model_info)", "{{identity}}"),), kind="table", width=24),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (OVERVIEW, SEGMENT, REVIEW, SERVICE)


def queries(spec: DashboardSpec, segment: str | None = None) -> list[str]:
    """The dashboard's PromQL, with ``$segment`` replaced by ``segment`` when given."""
    out = [q.expr for panel in spec.panels for q in panel.queries]
    return [expr.replace("$segment", segment) for expr in out] if segment is not None else out


def build(spec: DashboardSpec) -> dict[str, Any]:
    """The Grafana dashboard JSON (a dict) of ``spec``."""
    from grafana_foundation_sdk.builders import dashboard, prometheus
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

    datasource = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    board = (dashboard.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(list(spec.tags))
             .refresh("1m").time("now-6h", "now").editable()
             .with_variable(dashboard.TextBoxVariable("monitor_url").label("Monitor URL")
                            .description("Where the monitor's API and operator pages answer (alert links).")
                            .default_value("http://localhost:8000")))
    if spec.segment_variable:
        board = board.with_variable(
            dashboard.QueryVariable(SEGMENT_VARIABLE).label("Segment").datasource(datasource)
            .description("A segment key (domain/model version/locale).")
            .query("label_values(monitor_segment_reward_mean, segment)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
    x = y = 0
    for number, panel in enumerate(spec.panels):
        builder: Any = _panel(panel.kind)
        builder = builder.id(number + 1).title(panel.title).description(panel.description).datasource(datasource)
        builder = builder.unit(panel.unit).height(8).span(panel.width)
        if panel.min_val is not None:
            builder = builder.min(panel.min_val)
        if panel.max_val is not None:
            builder = builder.max(panel.max_val)
        for ref, query in enumerate(panel.queries):
            target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend or "__auto")
                      .ref_id(chr(ord("A") + ref)).datasource(datasource))
            if panel.kind == "table":
                target = target.instant().format(_table_format())
            builder = builder.with_target(target)
        if panel.link is not None:
            builder = builder.data_links([dashboard.DashboardLink(panel.link[0]).url(panel.link[1])])
        if x + panel.width > 24:
            x, y = 0, y + 8
        builder = builder.grid_pos(_grid(x, y, panel.width))
        x += panel.width
        board = board.with_panel(builder)
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(board.build())
    return dict(json.loads(encoded))


def _panel(kind: str) -> Any:
    """A panel builder of ``kind`` with its display options set (Grafana gets no null ``options``)."""
    from grafana_foundation_sdk.builders import common, stat, table, timeseries
    from grafana_foundation_sdk.models import common as models

    if kind == "timeseries":
        return (timeseries.Panel()
                .legend(common.VizLegendOptions().display_mode(models.LegendDisplayMode.LIST)
                        .placement(models.LegendPlacement.BOTTOM).show_legend(True))
                .tooltip(common.VizTooltipOptions().mode(models.TooltipDisplayMode.MULTI)
                         .sort(models.SortOrder.DESCENDING)))
    if kind == "stat":
        return (stat.Panel().reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                .graph_mode(models.BigValueGraphMode.AREA).color_mode(models.BigValueColorMode.VALUE))
    if kind == "table":
        return table.Panel().show_header(True)
    raise ValueError(f"unknown panel kind {kind!r}")


def _table_format() -> Any:
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

    return PromQueryFormat.TABLE


def _grid(x: int, y: int, width: int) -> Any:
    from grafana_foundation_sdk.models.dashboard import GridPos

    return GridPos(h=8, w=width, x=x, y=y)


def render(spec: DashboardSpec) -> str:
    """The file content of ``spec``'s dashboard (stable: keys sorted, two-space indent, final newline)."""
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"


def write(directory: Path, specs: Sequence[DashboardSpec] = DASHBOARDS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        path = directory / f"{spec.uid}.json"
        path.write_text(render(spec), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m monitor.dashboards grafana/dashboards
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "grafana/dashboards")):
        print(path)
