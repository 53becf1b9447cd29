"""The analysis itself, incremental: stream entries in, episode changes out; pure (no I/O, no clock).

**Entries.** Each rating of a turn enters the detectors once, as one label of that response, at its
*entry time*: the rating's ``ts`` (the turn's own ``ts`` when the rating came first). Entries are
fed in entry-time order (ties by conversation, turn and rating id). A rating later than
``rating_horizon_seconds`` after its turn never enters: by then the turn has settled. An entry is
final, so a late rating adds an entry but never rewrites the past, and an alert is never withdrawn;
a user's considered verdict half an hour after a quick thumb enters as a label of its own. Feeding the same entries
in one batch or in a thousand gives bit-identical state (tested), which is what makes the service's
minute-by-minute runs agree with a from-scratch recompute.

Per segment and reward-model identity (a :class:`~monitor.analyze.state.Track`):

1. **Reference**: the first ``reference_labels`` entries fit a :class:`Calibration` (reward ->
   P(satisfied)), frozen afterwards. A new identity gathers its own reference.
2. **Residual stream**: each later entry gives ``z = (satisfaction - P) / residual_sd``.
3. **CUSUM** (two-sided, threshold calibrated to the false-alarm budget on the reference residuals).
   A detection opens an episode (or extends the open one in its direction); the episode resolves
   when the last ``resolve_labels`` entries, all after its latest detection, show a mean shift under
   a quarter of the design shift.
4. **Rank agreement**: every ``rank_window`` entries test whether the Spearman correlation of
   reward and satisfaction dropped below the reference's, at level ``rank_fdr / rank_family``
   (Bonferroni over the configured segments: a family that never waits for other segments).
5. **Attribution** of an episode to reward-hacking modes over the ``rank_window`` entries up to its
   latest detection, with the top examples by per-sample divergence.

Alerts are keyed ``segment|detector|direction|number`` with episodes numbered per segment, so the
key is known the moment an episode opens and never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from monitor.analyze.attribution import attribute
from monitor.analyze.calibration import fit_calibration
from monitor.analyze.frame import TurnFrame
from monitor.analyze.rank_agreement import spearman_drop
from monitor.analyze.segments import SegmentScheme
from monitor.analyze.state import N_SIGNALS, Moments, OpenEpisode, Rows, SegmentState, Track
from monitor.analyze.uncertainty import bounds, gap_interval
from monitor.config import Settings
from monitor.events import timestamp
from monitor.signals import SIGNAL_NAMES

DETECTORS = ("cusum", "rank_drop")
PRODUCER = "producer"
#: Below this many rows a track's top examples are not ranked by its own divergence regressions.
TRACK_MOMENTS = 200
#: Per-sample divergence shrinks a track's regressions towards every track's pooled ones with the
#: weight of this many pooled rows: a young track (a new segment, a new RM) borrows the others'
#: view; an old one speaks for itself. Measured on S1 (as the schedule scores each turn): track
#: alone AUROC 0.881, pooled alone 0.911.
PRIOR_ROWS = 2000.0
#: Below this many pooled rows there is nothing to learn the users' view from.
MIN_MOMENTS = 50
_RIDGE = 1.0


@dataclass(frozen=True)
class AnalysisConfig:
    reference_labels: int = 500
    shift_sd: float = 0.5
    false_alarm_labels: int = 10_000
    rank_window: int = 300
    rank_fdr: float = 0.001
    rank_family: int = 1  # tests sharing the rank_fdr level: the number of configured segments
    resolve_labels: int = 300
    window_seconds: float = 3600.0
    rating_horizon_seconds: float = 3600.0
    settle_seconds: float = 120.0
    top_examples: int = 5
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, scheme: SegmentScheme | None = None) -> AnalysisConfig:
        scheme = scheme or SegmentScheme.from_settings(settings)
        return cls(
            reference_labels=settings.analyze_reference_labels, shift_sd=settings.analyze_shift_sd,
            false_alarm_labels=settings.analyze_false_alarm_labels, rank_window=settings.analyze_rank_window,
            rank_fdr=settings.analyze_rank_fdr, rank_family=len(scheme.all_keys()),
            resolve_labels=settings.analyze_resolve_labels, window_seconds=settings.analyze_window_minutes * 60.0,
            rating_horizon_seconds=settings.analyze_rating_horizon_minutes * 60.0,
            settle_seconds=settings.analyze_settle_seconds,
        )

    @property
    def ring_size(self) -> int:
        return max(self.rank_window, self.resolve_labels)


@dataclass
class Episode:
    """The latest view of one divergence episode: what an alert row stores."""

    segment: str
    detector: str
    direction: str  # "down": users less satisfied than the RM predicts (the reward-hacking side)
    number: int
    started_at: float  # entry time of the first detection
    resolved_at: float | None
    detections: int
    identity: str  # the reward model the episode was detected under
    mode: str | None = None  # None: unchanged since the last snapshot (a resolution only)
    modes: tuple[str, ...] = ()
    evidence: dict | None = None

    @property
    def state(self) -> str:
        return "firing" if self.resolved_at is None else "resolved"

    @property
    def key(self) -> str:
        return episode_key(self.segment, self.detector, self.direction, self.number)

    def merge(self, newer: Episode) -> Episode:
        """``newer`` with what it left unchanged taken from this older snapshot."""
        if newer.mode is None:
            newer.mode, newer.modes = self.mode, self.modes
        if newer.evidence is None:
            newer.evidence = self.evidence
        elif self.evidence is not None:
            newer.evidence = {**self.evidence, **newer.evidence}
        return newer


def episode_key(segment: str, detector: str, direction: str, number: int) -> str:
    return f"{segment}|{detector}|{direction}|{number}"


def identity_of(scorer: str, model_version: str) -> str:
    """The reward model a score came from: the monitor's scorer, or the producer's per model version."""
    return scorer if scorer and scorer != PRODUCER else f"{PRODUCER}@{model_version}"


@dataclass
class Advance:
    """What one call of :func:`advance` changed."""

    episodes: dict[str, Episode] = field(default_factory=dict)  # by key: the latest snapshot
    fitted: list[str] = field(default_factory=list)  # "segment @ identity" of calibrations fitted
    entered: int = 0
    changed: set[str] = field(default_factory=set)  # segments whose state changed

    def touch(self, episode: Episode) -> None:
        previous = self.episodes.get(episode.key)
        self.episodes[episode.key] = previous.merge(episode) if previous else episode

    def extend(self, other: Advance) -> None:
        for episode in other.episodes.values():
            self.touch(episode)
        self.fitted += other.fitted
        self.entered += other.entered
        self.changed |= other.changed


def entry_times(frame: TurnFrame) -> np.ndarray:
    """Entry time of each entry row: its rating's time, never before the turn itself (NaN if unrated)."""
    with np.errstate(invalid="ignore"):
        return np.where(frame.rated, np.fmax(frame.rated_ts, frame.ts), np.nan)


def entry_order(frame: TurnFrame, config: AnalysisConfig) -> np.ndarray:
    """Entry rows that enter the detectors (rated within the horizon), in entry order."""
    entry = entry_times(frame)
    within = frame.rated & (entry - frame.ts <= config.rating_horizon_seconds)
    rows = np.flatnonzero(within)
    return rows[np.lexsort((frame.rating_id[rows].astype(str), frame.turn[rows],
                            frame.conversation_id[rows].astype(str), entry[rows]))]


def advance(states: dict[str, SegmentState], entries: TurnFrame, config: AnalysisConfig) -> Advance:
    """Feed ``entries`` (already in entry order, every row rated and scored) to the segments' states,
    creating states and tracks as needed; ``states`` is updated in place."""
    result = Advance()
    result.entered = len(entries)
    identities = np.array([identity_of(s, m) for s, m in zip(entries.scorer, entries.model_version, strict=True)],
                          dtype=object)
    entry = entry_times(entries)
    for segment in dict.fromkeys(entries.segment):
        rows = np.flatnonzero(entries.segment == segment)
        state = states.setdefault(segment, SegmentState(segment))
        result.changed.add(segment)
        state.labelled += len(rows)
        # Runs of consecutive entries under one identity keep the entry order across tracks.
        breaks = np.flatnonzero(identities[rows][1:] != identities[rows][:-1]) + 1
        for run in np.split(rows, breaks):
            identity = identities[run[0]]
            track = state.tracks.get(identity)
            if track is None:
                track = state.tracks[identity] = Track(identity, first_seen=float(entry[run[0]]))
                state.changes.append({"identity": identity, "previous": state.current, "at": iso(entry[run[0]])})
            state.current = identity
            track.last_seen = float(entry[run[-1]])
            _feed(state, track, _rows(entries, run, entry), config, result)
    return result


def _rows(frame: TurnFrame, index: np.ndarray, entry: np.ndarray) -> Rows:
    n = len(index)
    return Rows(frame.score[index], frame.satisfaction[index], frame.judged_signals(index), entry[index],
                [[str(frame.event_id[i]), str(frame.conversation_id[i]), int(frame.turn[i])] for i in index],
                np.full(n, np.nan), np.full(n, np.nan))


def _feed(state: SegmentState, track: Track, rows: Rows, config: AnalysisConfig, result: Advance) -> None:
    if track.calibration is None:
        needed = config.reference_labels - len(track.reference)
        track.reference = track.reference.concat(rows.slice(0, needed))
        rows = rows.slice(needed)
        if len(track.reference) < config.reference_labels:
            return
        _calibrate(state, track, config, result)
    if not len(rows):
        return
    calibration = track.calibration
    assert calibration is not None
    promise = calibration.predict(rows.score)
    rows.residual = rows.satisfaction - promise
    rows.z = rows.residual / calibration.residual_sd
    track.moments.add(rows.signals, promise, rows.satisfaction)
    _detect(state, track, rows, config, result)


def _calibrate(state: SegmentState, track: Track, config: AnalysisConfig, result: Advance) -> None:
    reference = track.reference
    calibration = fit_calibration(reference.score, reference.satisfaction, reference.signals, reference.ts,
                                  shift_sd=config.shift_sd, false_alarm_labels=config.false_alarm_labels,
                                  seed=config.seed, groups=_conversations(reference))
    track.calibration = calibration
    promise = calibration.predict(reference.score)
    reference.residual = reference.satisfaction - promise
    reference.z = reference.residual / calibration.residual_sd
    track.moments.add(reference.signals, promise, reference.satisfaction)
    result.fitted.append(f"{state.segment} @ {track.identity}")
    # Episodes of the reward model this one replaces end here: their stream has stopped.
    for other in state.tracks.values():
        if other is track:
            continue
        for name, episode in list(other.open.items()):
            result.touch(Episode(state.segment, episode.detector, episode.direction, _number(episode.key),
                                 episode.started_at, calibration.reference_to, episode.detections, other.identity,
                                 evidence={"superseded_by": track.identity}))
            del other.open[name]


def _detect(state: SegmentState, track: Track, rows: Rows, config: AnalysisConfig, result: Advance) -> None:
    calibration = track.calibration
    assert calibration is not None
    window = config.rank_window
    resolve = config.resolve_labels
    history = track.ring.concat(rows)
    base = len(track.ring)
    running = np.concatenate([[0.0], np.cumsum(history.z)])
    k, h = calibration.cusum_k, calibration.cusum_h
    upper, lower, n = track.upper, track.lower, track.cusum_n
    # Episodes detected in this call, explained once (at their latest detection) when they close or
    # when the call ends: the same window, so the same attribution, however the entries were batched.
    pending: dict[str, tuple[OpenEpisode, int, dict]] = {}

    def explain(episode: OpenEpisode) -> None:
        if episode.key in pending:
            _, j, extra = pending.pop(episode.key)
            result.touch(_snapshot(state, track, episode, history, j, config, extra))

    def close(episode: OpenEpisode, ts: float, extra: dict | None = None) -> None:
        del track.open[f"{episode.detector}|{episode.direction}"]
        explain(episode)
        result.touch(Episode(state.segment, episode.detector, episode.direction, _number(episode.key),
                             episode.started_at, ts, episode.detections, track.identity, evidence=extra))

    for j, z in enumerate(history.z[base:].tolist(), start=base):
        position = track.position
        ts = float(history.ts[j])
        # The same expressions, in the same order, as Cusum.update: identical floats.
        upper = upper + z - k
        lower = lower - z - k
        if upper < 0.0:
            upper = 0.0
        if lower < 0.0:
            lower = 0.0
        n += 1
        direction = "up" if upper > h else "down" if lower > h else None
        if direction is not None:
            upper = lower = 0.0
            n = 0
            episode = _open(state, track, "cusum", direction, ts, position)
            pending[episode.key] = (episode, j, {})
        for episode in list(track.open.values()):
            if episode.detector != "cusum" or position - episode.last_position < resolve:
                continue
            trailing = (running[j + 1] - running[j + 1 - resolve]) / resolve
            if (trailing if episode.direction == "up" else -trailing) < k / 2:
                close(episode, ts)
        if (position + 1) % window == 0:
            level = config.rank_fdr / max(1, config.rank_family)
            drop = spearman_drop(track.reference.score, track.reference.satisfaction,
                                 history.score[j + 1 - window:j + 1], history.satisfaction[j + 1 - window:j + 1])
            stats = {"rank": {"rho_reference": _num(drop.reference), "rho_window": _num(drop.window),
                              "z": _num(drop.z), "p_value": _num(drop.p_value), "labels": window, "level": level}}
            current = track.open.get("rank_drop|down")
            if drop.p_value <= level:
                episode = _open(state, track, "rank_drop", "down", ts, position)
                pending[episode.key] = (episode, j, stats)
            elif current is not None:
                close(current, ts, stats)
        track.position += 1
    track.upper, track.lower, track.cusum_n = upper, lower, n
    for episode, _, _ in list(pending.values()):
        explain(episode)
    track.ring = history.slice(max(0, len(history) - config.ring_size))


def _open(state: SegmentState, track: Track, detector: str, direction: str, ts: float, position: int) -> OpenEpisode:
    name = f"{detector}|{direction}"
    episode = track.open.get(name)
    if episode is None:
        number = state.episodes.get(name, 0) + 1
        state.episodes[name] = number
        episode = track.open[name] = OpenEpisode(episode_key(state.segment, detector, direction, number), detector,
                                                 direction, ts, 0, position)
    episode.detections += 1
    episode.last_position = position
    return episode


def _conversations(rows: Rows) -> np.ndarray:
    """Each row's conversation id: ratings of one conversation move together (uncertainty)."""
    return np.array([str(row[1]) for row in rows.ids], dtype=object)


def _number(key: str) -> int:
    return int(key.rsplit("|", 1)[1])


def _snapshot(state: SegmentState, track: Track, episode: OpenEpisode, history: Rows, j: int,
              config: AnalysisConfig, extra: dict | None = None) -> Episode:
    """The episode explained over the ``rank_window`` entries up to history row ``j``."""
    calibration = track.calibration
    assert calibration is not None
    window = history.slice(max(0, j + 1 - config.rank_window), j + 1)
    reference = track.reference
    attribution = attribute(reference.signals, reference.residual, window.signals, window.residual,
                            names=SIGNAL_NAMES)
    divergence = track_divergence(track, window.signals)
    top = np.argsort(-np.nan_to_num(divergence, nan=-np.inf), kind="stable")[: config.top_examples]
    predicted = calibration.predict(window.score)
    evidence = {
        "identity": track.identity,
        "cusum": {"k": calibration.cusum_k, "h": calibration.cusum_h},
        "window": {
            "labels": len(window), "from": iso(window.ts[0]), "to": iso(window.ts[-1]),
            "mean_residual": float(window.residual.mean()),
            # The same mean as the satisfaction gap, with its 95% interval (reference error included).
            "gap_ci95": bounds(gap_interval(window.score, window.satisfaction, calibration.intercept,
                                           calibration.slope, calibration.centre, calibration.scale,
                                           calibration.covariance_matrix, calibration.covariance_dof,
                                           groups=_conversations(window))),
            "z": float(window.residual.mean() / calibration.residual_sd * math.sqrt(len(window))),
            "reward_mean": float(window.score.mean()),
            "satisfaction_mean": float(window.satisfaction.mean()),
            "predicted_satisfaction_mean": float(predicted.mean()),
            "signal_means": dict(zip(SIGNAL_NAMES, map(float, window.signals.mean(axis=0)), strict=True)),
        },
        "reference": {"labels": calibration.labels, "from": iso(calibration.reference_from),
                      "to": iso(calibration.reference_to), "reward_mean": calibration.reward_mean,
                      "satisfaction_mean": calibration.satisfaction_mean, "auc": _num(calibration.auc),
                      "spearman": _num(calibration.spearman)},
        "attribution": attribution.as_dict(),
        "top_examples": [{"event_id": window.ids[i][0], "conversation_id": window.ids[i][1],
                          "turn": int(window.ids[i][2]), "score": float(window.score[i]),
                          "satisfaction": float(window.satisfaction[i]), "divergence": _num(divergence[i])}
                         for i in top],
        **(extra or {}),
    }
    return Episode(state.segment, episode.detector, episode.direction, _number(episode.key), episode.started_at,
                   None, episode.detections, track.identity, attribution.mode, attribution.modes, evidence)


def refit(state: SegmentState, recent: TurnFrame, config: AnalysisConfig) -> Advance:
    """Start the current reward model's track of ``state`` again, its reference gathered from the
    latest of ``recent`` (rated turns of this segment, in entry order): after a relabeling cycle, or
    when an operator decides the old reference no longer stands. Open episodes of the old track end."""
    result = Advance()
    identity = state.current
    if identity is None:
        return result
    old = state.tracks.get(identity)
    mine = np.array([identity_of(s, m) == identity for s, m in zip(recent.scorer, recent.model_version, strict=True)],
                    dtype=bool)
    rows = np.flatnonzero(mine)[-config.reference_labels:]
    entry = entry_times(recent)
    ended = float(entry[rows[-1]]) if len(rows) else (old.last_seen if old else 0.0)
    if old is not None:
        for episode in old.open.values():
            result.touch(Episode(state.segment, episode.detector, episode.direction, _number(episode.key),
                                 episode.started_at, ended, episode.detections, identity, evidence={"refit": True}))
    track = state.tracks[identity] = Track(identity, first_seen=float(entry[rows[0]]) if len(rows) else ended,
                                           last_seen=ended)
    state.changes.append({"identity": identity, "previous": identity, "at": iso(ended), "refit": True})
    result.changed.add(state.segment)
    if len(rows):
        _feed(state, track, _rows(recent, rows, entry), config, result)
    return result


# --- per-sample divergence -------------------------------------------------------------------------


def over_reward(moments: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(over_reward, mean, sd)``: per standardised signal, the RM's slope (its calibrated promise
    regressed on the signals) minus the users' slope (satisfaction on the signals); ridge
    regressions from the moments alone. None below :data:`MIN_MOMENTS` rows."""
    if moments.n < MIN_MOMENTS:
        return None
    n = moments.n
    mean = moments.x / n
    centred = moments.xx - n * np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(centred) / n, 0.0, None))
    sd = np.where(sd > 1e-9, sd, 1.0)
    scaled = centred / np.outer(sd, sd) + _RIDGE * np.eye(N_SIGNALS)
    targets = (moments.xy - np.outer(mean, moments.y)) / sd[:, None]
    slopes = np.linalg.solve(scaled, targets)
    return slopes[:, 0] - slopes[:, 1], mean, sd


def divergence_from(fit: tuple[np.ndarray, np.ndarray, np.ndarray] | None, signals: np.ndarray,
                    centre: np.ndarray | None = None) -> np.ndarray:
    """A response's over-rewarded parts, ``sum_j max(0, over_reward_j * z_j)``: no rating needed.
    ``z`` is measured from ``centre``, the reference's signal means where the caller has them: what
    the segment's responses looked like when its reward model was calibrated. Measured from the
    moments' own mean instead, a hack that took over most of the traffic would become the new
    normal and its responses would score ever lower (B2 on S1-S4, S7: 0.972 against 0.981)."""
    if fit is None:
        return np.full(len(signals), np.nan)
    over, mean, sd = fit
    return np.maximum((signals - (mean if centre is None else centre)) / sd * over, 0.0).sum(axis=1)


def _centre(track: Track) -> np.ndarray | None:
    return None if track.calibration is None else np.asarray(track.calibration.signal_means, dtype=float)


def track_divergence(track: Track, signals: np.ndarray) -> np.ndarray:
    return divergence_from(over_reward(track.moments) if track.moments.n >= TRACK_MOMENTS else None, signals,
                           _centre(track))


def divergence_scores(states: Mapping[str, SegmentState], frame: TurnFrame) -> np.ndarray:
    """Per-sample divergence of each row of ``frame`` (NaN where the row has no score, or its
    segment's reward model has no calibration yet). Segment-aware: a track's own moments plus
    every track's pooled moments weighted as :data:`PRIOR_ROWS` rows."""
    out = np.full(len(frame), np.nan)
    pooled = Moments()
    for state in states.values():
        for track in state.tracks.values():
            if track.calibration is not None:
                pooled = pooled.merged(track.moments)
    prior = pooled.scaled(PRIOR_ROWS / pooled.n) if pooled.n > PRIOR_ROWS else pooled
    scored = ~np.isnan(frame.score)
    groups: dict[tuple[str, str], list[int]] = {}
    for i in np.flatnonzero(scored).tolist():
        groups.setdefault((frame.segment[i], identity_of(frame.scorer[i], frame.model_version[i])), []).append(i)
    for (segment, identity), rows in groups.items():
        owner = states.get(segment)
        scored_by = owner.tracks.get(identity) if owner is not None else None
        if scored_by is None or scored_by.calibration is None:
            continue
        index = np.array(rows)
        out[index] = divergence_from(over_reward(scored_by.moments.merged(prior)), frame.judged_signals(index),
                                     _centre(scored_by))
    return out


# --- replaying a frame as the schedule would see it ------------------------------------------------


@dataclass
class Replay:
    states: dict[str, SegmentState]
    episodes: dict[str, Episode]
    divergence: np.ndarray  # per row of the frame, as the run after its arrival scored it
    fitted: list[str]
    runs: int


def replay(frame: TurnFrame, config: AnalysisConfig, *, entries: TurnFrame | None = None,
           step_seconds: float | None = 60.0, on_run: Callable[[float, Advance], None] | None = None) -> Replay:
    """Run the engine over the turns of ``frame`` and their rating ``entries`` (default: ``frame``
    itself, one rating per rated turn at ``rated_ts``) as a schedule every ``step_seconds`` of event
    time would, each run seeing the turns and ratings up to its tick; ``None``: one from-scratch
    run at the end. The benchmark and the tests use it; the service does the same against the store.
    """
    entries = frame if entries is None else entries
    order = entry_order(entries, config)
    entry = entry_times(entries)[order]
    states: dict[str, SegmentState] = {}
    total = Advance()
    divergence = np.full(len(frame), np.nan)
    if not len(frame):
        return Replay(states, {}, divergence, [], 0)
    end = float(np.nanmax(np.concatenate([frame.ts, entry]))) + config.settle_seconds
    checkpoint = -math.inf
    seen = -math.inf
    runs = 0
    for tick in _ticks(float(frame.ts.min()), end, step_seconds):
        settled = tick - config.settle_seconds
        start, stop = np.searchsorted(entry, checkpoint, side="right"), np.searchsorted(entry, settled, side="right")
        step = advance(states, entries.take(order[start:stop]), config)
        checkpoint = settled
        arrived = np.flatnonzero((frame.ts > seen) & (frame.ts <= tick))
        divergence[arrived] = divergence_scores(states, frame.take(arrived))
        seen = tick
        total.extend(step)
        runs += 1
        if on_run:
            on_run(tick, step)
    return Replay(states, total.episodes, divergence, total.fitted, runs)


def _ticks(start: float, end: float, step: float | None) -> Iterator[float]:
    if step is None:
        yield end
        return
    tick = start + step
    while tick < end:
        yield tick
        tick += step
    yield end


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def iso(seconds: float) -> str:
    """Event time (seconds since the epoch) in the wire format of ``ts``."""
    return timestamp(datetime.fromtimestamp(float(seconds), UTC))
