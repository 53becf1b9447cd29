"""Every Prometheus metric of `monitor`, named once, registered on a registry passed in.

Labels come only from small fixed sets: ``topic`` (the configured topic names), ``reason``
(:data:`monitor.events.DEAD_LETTER_REASONS`), ``kind`` and ``stage`` (literals below).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor import __version__
from monitor.events import DEAD_LETTER_REASONS
from monitor.signals import SIGNAL_MODES

EVENT_KINDS = ("conversation", "rating")
FAILURE_STAGES = ("scoring", "dead_letter_topic", "store", "commit")
ANALYSIS_DETECTORS = ("cusum", "rank_drop")
RELABEL_STATUSES = ("collecting", "complete", "expired", "cancelled", "insufficient")
RELABEL_WEBHOOK_OUTCOMES = ("delivered", "retrying", "gave_up")
OFFSET_RESET_REASONS = ("past_end", "before_start")
#: (table, action) of the retention prune (monitor.store.retention.ACTIONS) and its outcomes.
RETENTION_ACTIONS = (("dead_letters", "deleted"), ("turns", "deleted"), ("ratings", "deleted"),
                     ("turns", "redacted"), ("ratings", "redacted"))
RETENTION_OUTCOMES = ("complete", "partial", "skipped", "error")


def _value(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _label_sets(gauge: Gauge) -> list[tuple[str, ...]]:
    """The label values of every series a labelled gauge has now."""
    return [tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples]


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "monitor_build_info", "Constant 1, labelled with the running version.", ["version"],
            registry=registry,
        )
        self.build_info.labels(version=__version__).set(1)
        self.messages_consumed = Counter(
            "monitor_messages_consumed_total", "Kafka records consumed, by topic.", ["topic"],
            registry=registry,
        )
        self.events_accepted = Counter(
            "monitor_events_accepted_total",
            "Valid events written to the store (replays included; the store ignores repeats).",
            ["kind"],
            registry=registry,
        )
        self.duplicate_events = Counter(
            "monitor_duplicate_events_total",
            "Events skipped because the same event appeared earlier in the same batch.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "monitor_dead_letters_total", "Records sent to the dead-letter topic, by reason.", ["reason"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "monitor_batch_duration_seconds",
            "Wall time of one ingest batch: validate, score, dead letters, store transaction.",
            # Batches of a few hundred events should take tens of milliseconds; the upper buckets
            # catch a slow database or reward model long before max_poll_interval is at risk.
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.batch_failures = Counter(
            "monitor_batch_failures_total",
            "Batches that failed and will be retried from their first offset, by stage.",
            ["stage"],
            registry=registry,
        )
        self.offset_resets = Counter(
            "monitor_offset_resets_total",
            "Partitions whose stored offset lay outside the log and were reset by MONITOR_OFFSET_RESET, by "
            "topic and reason (past_end: the log was recreated; before_start: retention deleted unread records).",
            ["topic", "reason"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "monitor_consumer_lag_messages",
            "Records not yet consumed (high watermark minus position), summed over partitions.",
            ["topic"],
            registry=registry,
        )
        self.broker_up = Gauge(
            "monitor_broker_up", "1 when the Kafka broker answered the last probe.", registry=registry
        )
        self.store_up = Gauge(
            "monitor_store_up", "1 when the database answered the last write or probe.", registry=registry
        )
        self.scoring_duration = Histogram(
            "monitor_scoring_duration_seconds",
            "Wall time the scorer took for one batch of responses.",
            # A CPU scores ~100 short responses/s with a small RM; the top buckets show a model or
            # remote endpoint too slow for the traffic.
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.scored_sequences = Counter(
            "monitor_scored_sequences_total", "Responses run through the reward model (cache hits excluded).",
            registry=registry,
        )
        self.scored_tokens = Counter(
            "monitor_scored_tokens_total", "Tokens run through the reward model, padding excluded.",
            registry=registry,
        )
        self.scoring_padding = Gauge(
            "monitor_scoring_padding_ratio", "Share of padding tokens in the last scored batch (0..1).",
            registry=registry,
        )
        self.scoring_errors = Counter(
            "monitor_scoring_errors_total", "Responses the scorer could not score (empty text, tokenizer error).",
            registry=registry,
        )
        self.reward = Histogram(
            "monitor_reward", "Reward the RM gave each scored response, by segment (configured segments plus other).",
            ["segment"],
            # Reward models score on their own scale; these cover logits of a few units either side of 0
            # (the demo RM and the simulator's producer rewards) finely around the middle.
            buckets=(-4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4),
            registry=registry,
        )
        self.reward_model = Gauge(
            "monitor_reward_model_info",
            "Constant 1, labelled with the identity of the scorer in use (kind:model@revision).",
            ["identity"],
            registry=registry,
        )
        self.signals_derived = Counter(
            "monitor_signals_derived_total", "Turns whose reward-hacking signals the deriver stored.",
            registry=registry,
        )
        self.signals_derive_duration = Histogram(
            "monitor_signals_derive_duration_seconds",
            "Wall time of one pass of the signal deriver (up to 500 turns: read, classify, write).",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.ratings_swept = Counter(
            "monitor_ratings_swept_total", "Ratings the analyzer's sweep joined to a turn stored beside them "
            "(two workers' transactions wrote the pair without seeing each other; monitor.store.sweep).",
            registry=registry,
        )
        self.analyze_runs = Counter(
            "monitor_analyze_runs_total", "Analyzer runs, by outcome (ok, error, locked).", ["outcome"],
            registry=registry,
        )
        self.analyze_duration = Histogram(
            "monitor_analyze_duration_seconds",
            "Wall time of one analyzer run (read, fit, detect, drift report, write).",
            # A run over a day of traffic takes seconds; the top buckets show it nearing the schedule.
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.analyze_last_success = Gauge(
            "monitor_analyze_last_success_timestamp_seconds", "Wall time the last analyzer run finished.",
            registry=registry,
        )
        self.analyze_watermark = Gauge(
            "monitor_analyze_watermark_timestamp_seconds", "Event time of the latest turn the analyzer saw.",
            registry=registry,
        )
        self.alerts_firing = Gauge(
            "monitor_alerts_firing", "Divergence alerts firing now, by segment, detector and attributed mode "
            "(none: not attributed).", ["segment", "detector", "mode"], registry=registry,
        )
        self.alerts_opened = Counter(
            "monitor_alerts_opened_total", "Divergence alerts opened, by detector and attributed mode.",
            ["detector", "mode"], registry=registry,
        )
        self.flags_published = Counter(
            "monitor_flags_published_total", "flag/v1 events acknowledged by Kafka, by alert state.", ["state"],
            registry=registry,
        )
        self.segment_reward = Gauge(
            "monitor_segment_reward_mean", "Mean reward of the segment's turns in the current window.",
            ["segment"], registry=registry,
        )
        self.segment_satisfaction = Gauge(
            "monitor_segment_satisfaction_ratio",
            "Satisfaction (0..1) in the current window: realised (ratings) or estimated (calibrated RM).",
            ["segment", "source"], registry=registry,
        )
        self.segment_gap = Gauge(
            "monitor_segment_satisfaction_gap_ratio",
            "Realised minus predicted satisfaction of the window's rated turns (negative: RM over-promises).",
            ["segment"], registry=registry,
        )
        self.segment_auc = Gauge(
            "monitor_segment_reward_auc_ratio", "AUC of reward for satisfied vs unsatisfied rated turns.",
            ["segment"], registry=registry,
        )
        # The 95% intervals (monitor.analyze.uncertainty), bound = "lower" or "upper": their own
        # series, so a dashboard draws a band and an alert rule can ask for the whole interval.
        self.segment_gap_bound = Gauge(
            "monitor_segment_satisfaction_gap_bound_ratio",
            "Bound of the 95% interval of the satisfaction gap (reference fit and window errors included).",
            ["segment", "bound"], registry=registry,
        )
        self.segment_estimated_bound = Gauge(
            "monitor_segment_estimated_satisfaction_bound_ratio",
            "Bound of the 95% interval of the window's satisfaction estimated from the calibrated RM.",
            ["segment", "bound"], registry=registry,
        )
        self.segment_auc_bound = Gauge(
            "monitor_segment_reward_auc_bound_ratio", "Bound of the 95% interval of the window's reward AUC.",
            ["segment", "bound"], registry=registry,
        )
        self.segment_signal = Gauge(
            "monitor_segment_signal_mean",
            "Mean of a reward-hacking signal over the segment's turns in the current window; mode: the hacking "
            "mode the signal feeds (monitor.signals).", ["segment", "signal", "mode"], registry=registry,
        )
        self.segment_safety = Gauge(
            "monitor_segment_safety_ratio",
            "over_refusal: refusals among safe prompts; harmful_compliance: answers to harmful prompts.",
            ["segment", "rate"], registry=registry,
        )
        # The review queue (monitor.review): its depth, and what the human labels say per segment
        # (the report's control-arm estimates over the last REVIEW_REPORT_DAYS, verdict as 1/0 series).
        self.review_depth = Gauge(
            "monitor_review_queue_depth", "Open review items (still needing a label), by sampling arm.", ["arm"],
            registry=registry,
        )
        self.review_oldest = Gauge(
            "monitor_review_oldest_open_age_seconds", "Age of the oldest open review item (0: none open).",
            registry=registry,
        )
        self.review_annotations = Gauge(
            "monitor_review_annotations", "Annotations stored so far.", registry=registry,
        )
        self.review_figure = Gauge(
            "monitor_review_satisfaction_ratio",
            "Review report, per segment (control arm, re-weighted): human, rm (its calibrated prediction) or "
            "users (realised) satisfaction on the reviewed items.",
            ["segment", "source"], registry=registry,
        )
        self.review_gap = Gauge(
            "monitor_review_gap_human_rm_ratio", "Human minus RM-predicted satisfaction on reviewed items.",
            ["segment"], registry=registry,
        )
        self.review_gap_bound = Gauge(
            "monitor_review_gap_human_rm_bound_ratio", "Bound of the 95% interval of the human - RM gap.",
            ["segment", "bound"], registry=registry,
        )
        self.review_verdict = Gauge(
            "monitor_review_verdict", "1 for the review report's current verdict of the segment, 0 for the others.",
            ["segment", "verdict"], registry=registry,
        )
        self.review_alpha = Gauge(
            "monitor_review_agreement_alpha", "Krippendorff's alpha of the annotators, per rubric item.", ["item"],
            registry=registry,
        )
        self.review_flagged = Gauge(
            "monitor_review_annotators_flagged", "Annotators whose gold accuracy is far below the pool's.",
            registry=registry,
        )
        self.relabel_cycles = Gauge(
            "monitor_relabel_cycles", "Relabeling cycles, by status.", ["status"], registry=registry,
        )
        self.relabel_accuracy = Gauge(
            "monitor_relabel_rm_accuracy_ratio",
            "The RM's pairwise accuracy against people on a segment, from its latest ended relabeling cycle: "
            "source=cycle (annotators' preferences on the cycle's pairs) or reference (users' ratings on the "
            "segment's reference window).", ["segment", "source"], registry=registry,
        )
        self.relabel_accuracy_bound = Gauge(
            "monitor_relabel_rm_accuracy_bound_ratio", "Bound of the 95% interval of the RM's pairwise accuracy.",
            ["segment", "source", "bound"], registry=registry,
        )
        self.relabel_events_published = Counter(
            "monitor_relabel_events_published_total", "relabel_cycle/v1 events Kafka acknowledged.", registry=registry,
        )
        self.relabel_webhook_deliveries = Counter(
            "monitor_relabel_webhook_deliveries_total", "Webhook deliveries of relabel_cycle/v1 events, by outcome.",
            ["outcome"], registry=registry,
        )
        self.retention_pruned_rows = Counter(
            "monitor_retention_pruned_rows_total", "Rows the retention prune deleted, or whose raw text it "
            "replaced by the redacted form, by table and action (deleted, redacted).", ["table", "action"],
            registry=registry,
        )
        self.retention_prunes = Counter(
            "monitor_retention_prunes_total", "Scheduled retention prunes, by outcome: complete, partial (stopped "
            "after its time slice or waiting for the analyzer lock; carried on after the next run), skipped "
            "(another process was pruning), error (retried next period).", ["outcome"], registry=registry,
        )
        self.retention_last_prune = Gauge(
            "monitor_retention_last_prune_timestamp_seconds",
            "Wall time the last scheduled retention prune finished all that was due.", registry=registry,
        )
        for outcome in RELABEL_WEBHOOK_OUTCOMES:
            self.relabel_webhook_deliveries.labels(outcome=outcome)
        for table, action in RETENTION_ACTIONS:
            self.retention_pruned_rows.labels(table=table, action=action)
        for outcome in RETENTION_OUTCOMES:
            self.retention_prunes.labels(outcome=outcome)
        for kind in EVENT_KINDS:
            self.events_accepted.labels(kind=kind)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for stage in FAILURE_STAGES:
            self.batch_failures.labels(stage=stage)

    def set_reward_model(self, identity: str) -> None:
        """Show exactly one identity: a scorer that changes its model (a remote endpoint swapping
        its RM) replaces the old series instead of adding a second one."""
        self.reward_model.clear()
        self.reward_model.labels(identity=identity).set(1)

    def record_analysis(self, segments: list[dict], firing: dict[tuple[str, str, str], int]) -> None:
        """Replace the per-segment gauges with one run's figures (NaN where a figure is undefined);
        ``firing``: alerts firing per (segment, detector, mode). A series that stopped firing reads 0;
        every segment and detector has at least its ``mode="none"`` series."""
        for labels in _label_sets(self.alerts_firing):
            if labels not in firing:
                self.alerts_firing.labels(*labels).set(0)
        for labels, count in firing.items():
            self.alerts_firing.labels(*labels).set(count)
        for stats in segments:
            segment = stats["segment"]
            self.segment_reward.labels(segment=segment).set(_value(stats["reward_mean"]))
            self.segment_satisfaction.labels(segment=segment, source="realised").set(
                _value(stats["realised_satisfaction"]))
            self.segment_satisfaction.labels(segment=segment, source="estimated").set(
                _value(stats["estimated_satisfaction"]))
            self.segment_gap.labels(segment=segment).set(_value(stats["gap"]))
            self.segment_auc.labels(segment=segment).set(_value(stats["auc"]))
            for gauge, key in ((self.segment_gap_bound, "gap_ci95"),
                               (self.segment_estimated_bound, "estimated_satisfaction_ci95"),
                               (self.segment_auc_bound, "auc_ci95")):
                bounds = stats.get(key) or (None, None)
                gauge.labels(segment=segment, bound="lower").set(_value(bounds[0]))
                gauge.labels(segment=segment, bound="upper").set(_value(bounds[1]))
            for name, value in (stats.get("signals") or {}).items():
                self.segment_signal.labels(segment=segment, signal=name, mode=SIGNAL_MODES[name]).set(_value(value))
            self.segment_safety.labels(segment=segment, rate="over_refusal").set(
                _value(stats["safety"]["over_refusal_rate"]))
            self.segment_safety.labels(segment=segment, rate="harmful_compliance").set(
                _value(stats["safety"]["harmful_compliance_rate"]))
            for detector in ANALYSIS_DETECTORS:
                if not any(key[:2] == (segment, detector) for key in firing):
                    self.alerts_firing.labels(segment=segment, detector=detector, mode="none").set(0)

    def record_review(self, stats: dict, report: dict, verdicts: tuple[str, ...]) -> None:
        """Replace the review gauges with the queue's stats and a report's figures."""
        depth: dict[str, int] = {}
        for group in stats["groups"]:
            depth[group["arm"]] = depth.get(group["arm"], 0) + group["open"]
        for arm in set(depth) | {labels[0] for labels in _label_sets(self.review_depth)}:
            self.review_depth.labels(arm=arm).set(depth.get(arm, 0))
        self.review_oldest.set(stats["oldest_open_age_seconds"] or 0.0)
        self.review_annotations.set(stats["annotations"])
        for segment in report["segments"]:
            name = segment["segment"]
            for source, key in (("human", "human_satisfaction"), ("rm", "rm_prediction"),
                                ("users", "user_satisfaction")):
                self.review_figure.labels(segment=name, source=source).set(_value((segment[key] or {}).get("estimate")))
            gap = segment["gap_human_rm"] or {}
            self.review_gap.labels(segment=name).set(_value(gap.get("estimate")))
            bounds = gap.get("ci95") or (None, None)
            self.review_gap_bound.labels(segment=name, bound="lower").set(_value(bounds[0]))
            self.review_gap_bound.labels(segment=name, bound="upper").set(_value(bounds[1]))
            for verdict in verdicts:
                self.review_verdict.labels(segment=name, verdict=verdict).set(int(segment["verdict"] == verdict))
        for item, figures in report["agreement"].items():
            self.review_alpha.labels(item=item).set(_value(figures["alpha"]))
        self.review_flagged.set(sum(a["flagged"] for a in report["annotators"]))

    def record_relabel(self, statuses: dict[str, int], accuracy: dict[str, dict[str, dict]]) -> None:
        """Cycles per status, and per segment the RM's accuracy from its latest ended cycle
        (``accuracy[segment][source]`` = ``{"accuracy": ..., "ci95": [lo, hi] | None}``)."""
        for status in RELABEL_STATUSES:
            self.relabel_cycles.labels(status=status).set(statuses.get(status, 0))
        for segment, sources in accuracy.items():
            for source, figure in sources.items():
                self.relabel_accuracy.labels(segment=segment, source=source).set(_value(figure.get("accuracy")))
                bounds = figure.get("ci95") or (None, None)
                for bound, value in zip(("lower", "upper"), bounds, strict=True):
                    self.relabel_accuracy_bound.labels(segment=segment, source=source, bound=bound).set(_value(value))

    def init_topics(self, topics: tuple[str, ...]) -> None:
        """Expose zero-valued series for the configured topics before any record arrives."""
        for topic in topics:
            self.messages_consumed.labels(topic=topic)
            self.consumer_lag.labels(topic=topic).set(0)
