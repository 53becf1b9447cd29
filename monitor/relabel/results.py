"""What a relabeling cycle found, from its pairwise labels: the reward model against humans on the
cycle's pairs and, beside it, against users on its segments' reference windows; Bradley-Terry
strengths of the responses; how much length and formatting explain the preferences.

* **RM audit** (:func:`monitor.relabel.audit.rm_accuracy`): the RM's pairwise accuracy on the
  cycle's labelled pairs, overall, per segment and per mode, with Wilson intervals; and by the
  modes each pair's answers contrast (:mod:`monitor.relabel.contrast`), a pair counted under each;
  for a cycle with a mode, its accuracy on the pairs contrasting the mode minus on the control
  pairs (:func:`monitor.relabel.audit.mode_effect`).
* **Reference accuracy**: the same question asked of the labels the detectors calibrated on: on
  each segment's reference window (its rated turns at calibration time), the share of pairs of
  turns with different user satisfaction that the RM orders like the users (Harrell's
  concordance; RM ties count half), with a bootstrap interval over turns. A hacked slice shows
  the cycle's accuracy below its reference accuracy.
* **Bradley-Terry** (:mod:`monitor.relabel.bradley_terry`): one item per response shown (a turn,
  or a turn's candidate), one comparison per annotation, ties as half wins; strengths with
  standard errors, and the style-controlled fit on log length and markdown density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import krippendorff
import numpy as np

from monitor.analyze.state import SegmentState
from monitor.relabel.audit import AuditPair, mode_effect, rm_accuracy
from monitor.relabel.bradley_terry import Comparison, fit_strengths, style_effect
from monitor.relabel.contrast import contrasted
from monitor.review.sampling import NO_MODE, signal_values
from monitor.signals import SIGNAL_NAMES, response_signals

#: Resamples of the reference accuracy's bootstrap interval.
BOOTSTRAP = 200
#: Reference turns per segment the concordance uses at most (the latest).
MAX_REFERENCE = 2000
STYLE_FEATURES = ("log_length_tokens", "markdown_density")
_OUTCOME = {"A": "a", "B": "b", "tie": "tie"}


@dataclass(frozen=True)
class Side:
    key: str  # "turn:<id>" or "candidate:<turn id>:0"
    text: str  # as shown (redacted)
    reward: float | None


@dataclass(frozen=True)
class LabelledPair:
    """One annotation of one pair, the sides as the annotator saw them."""

    segment: str
    mode: str | None
    a: Side
    b: Side
    preference: str  # A | B | tie
    prompt: str = ""  # as shown (redacted)
    item: int | None = None  # the pair's review item (annotations of one item judge the same pair)


def audit_pairs(labelled: Sequence[LabelledPair]) -> list[AuditPair]:
    return [AuditPair(p.segment, p.mode, p.a.reward, p.b.reward, p.preference, p.item) for p in labelled]


def cycle_results(labelled: Sequence[LabelledPair], states: Mapping[str, SegmentState], *,
                  mode: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Audit, reference accuracy and Bradley-Terry of a cycle's labels (JSON-ready); ``mode``: the
    cycle's, whose contrast pairs the audit holds against the control pairs."""
    segments = sorted({pair.segment for pair in labelled})
    audited = audit_pairs(labelled)
    return {
        "labels": len(labelled),
        "rm_audit": rm_accuracy(audited),
        "rm_mode_effect": mode_effect(audited, mode),
        # The same, per hacking mode the pair's two answers contrast (a pair in each of its modes'
        # rows): where the RM over-pays a feature, it loses to people on the pairs that feature sets apart.
        "rm_audit_by_contrast": rm_accuracy([
            AuditPair(p.segment, contrasted, p.a.reward, p.b.reward, p.preference, p.item)
            for p, modes in zip(labelled, contrasted_modes(labelled), strict=True) for contrasted in modes])["modes"],
        "reference_accuracy": reference_accuracy(states, segments, seed=seed),
        "bradley_terry": bradley_terry(labelled),
    }


def reference_accuracy(states: Mapping[str, SegmentState], segments: Sequence[str], *,
                       seed: int = 0) -> dict[str, Any]:
    """Per segment (and pooled), the RM's concordance with users on its current reference window."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    for segment in segments:
        state = states.get(segment)
        track = state.track if state is not None else None
        if track is None or track.calibration is None:
            out[segment] = {"turns": 0, "pairs": 0, "accuracy": None, "ci95": None}
            continue
        score, satisfaction = track.reference.score[-MAX_REFERENCE:], track.reference.satisfaction[-MAX_REFERENCE:]
        keep = np.isfinite(score) & np.isfinite(satisfaction)
        pooled.append((score[keep], satisfaction[keep]))
        out[segment] = _concordance_summary(score[keep], satisfaction[keep], rng)
    overall = _concordance_summary(np.concatenate([s for s, _ in pooled]) if pooled else np.empty(0),
                                   np.concatenate([y for _, y in pooled]) if pooled else np.empty(0), rng,
                                   groups=[len(s) for s, _ in pooled])
    return {"overall": overall, "segments": out}


def concordance(score: np.ndarray, satisfaction: np.ndarray) -> tuple[float, int]:
    """Share of pairs with different satisfaction the score orders the same way (score ties: half),
    and how many such pairs."""
    score, satisfaction = np.asarray(score, float), np.asarray(satisfaction, float)
    higher = satisfaction[:, None] > satisfaction[None, :]
    pairs = int(higher.sum())
    if pairs == 0:
        return math.nan, 0
    diff = score[:, None] - score[None, :]
    agree = float(((diff > 0) & higher).sum()) + 0.5 * float(((diff == 0) & higher).sum())
    return agree / pairs, pairs


def _concordance_summary(score: np.ndarray, satisfaction: np.ndarray, rng: np.random.Generator, *,
                         groups: Sequence[int] | None = None) -> dict[str, Any]:
    """Concordance within each group (segment) pooled over the groups' pairs, with a bootstrap
    95% interval that resamples turns within each group."""
    bounds = np.cumsum([0, *(groups if groups is not None else [len(score)])])
    parts = [(score[lo:hi], satisfaction[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def pooled(samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
        agree = total = 0.0
        for s, y in samples:
            value, n = concordance(s, y)
            if n:
                agree, total = agree + value * n, total + n
        return (agree / total if total else math.nan), int(total)

    accuracy, pairs = pooled(parts)
    if not pairs:
        return {"turns": int(len(score)), "pairs": 0, "accuracy": None, "ci95": None}
    draws = []
    for _ in range(BOOTSTRAP):
        resampled = [(s[idx], y[idx]) for s, y in parts
                     for idx in [rng.integers(0, len(s), len(s)) if len(s) else np.empty(0, int)]]
        value, n = pooled(resampled)
        if n:
            draws.append(value)
    ci = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))] if draws else None
    return {"turns": int(len(score)), "pairs": pairs, "accuracy": float(accuracy), "ci95": ci}


def bradley_terry(labelled: Sequence[LabelledPair]) -> dict[str, Any]:
    """Strengths of the responses shown, and the style-controlled fit (see the module)."""
    index: dict[str, int] = {}
    texts: list[str] = []
    comparisons: list[Comparison] = []
    for pair in labelled:
        outcome = _OUTCOME.get(pair.preference)
        if outcome is None:
            continue
        ids = []
        for side in (pair.a, pair.b):
            if side.key not in index:
                index[side.key] = len(index)
                texts.append(side.text)
            ids.append(index[side.key])
        if ids[0] != ids[1]:
            comparisons.append(Comparison(ids[0], ids[1], outcome))
    if not comparisons:
        return {"responses": len(index), "comparisons": 0, "ties": 0, "components": len(index), "strengths": [],
                "style": None}
    fit = fit_strengths(len(index), comparisons)
    keys = list(index)
    strengths = sorted(({"response": key, "strength": round(float(fit.values[i]), 4), "se": round(float(fit.se[i]), 4)}
                        for i, key in enumerate(keys)), key=lambda row: -float(row["strength"]))  # type: ignore[arg-type]
    features = style_features(texts)
    varied = [k for k in range(features.shape[1]) if np.ptp(features[:, k]) > 0]
    style = None
    if varied and {o.outcome for o in comparisons} - {"tie"}:  # a feature all responses share explains nothing
        effect = style_effect(len(index), comparisons, features[:, varied], [STYLE_FEATURES[k] for k in varied])
        style = {"features": list(effect.names), "beta": [round(float(b), 4) for b in effect.beta],
                 "se": [round(float(s), 4) for s in effect.se], "explained": round(effect.explained, 4),
                 "explained_with_strengths": round(effect.explained_with_strengths, 4)}
    return {"responses": len(index), "comparisons": fit.comparisons, "ties": fit.ties, "components": fit.components,
            "strengths": strengths, "style": style}


def contrasted_modes(labelled: Sequence[LabelledPair]) -> list[tuple[str, ...]]:
    """Per pair, the modes its two answers contrast (:mod:`monitor.relabel.contrast`), read from the
    text as shown; ``("none",)`` when they contrast none (the answers differ in substance only)."""
    signals: dict[str, tuple[float, ...]] = {}
    out = []
    for pair in labelled:
        for side in (pair.a, pair.b):
            if side.key not in signals:
                found = response_signals(pair.prompt, side.text)
                signals[side.key] = signal_values({n: getattr(found, n) for n in SIGNAL_NAMES})
        out.append(contrasted(signals[pair.a.key], signals[pair.b.key]) or (NO_MODE,))
    return out


def preference_agreement(labels_by_item: Mapping[int, Sequence[str]]) -> dict[str, Any]:
    """Agreement of annotators on the pairs several labelled: the share of annotation pairs that
    agree, and Krippendorff's alpha (ordinal: A < tie < B)."""
    multi = {item: [_ORDER[v] for v in values if v in _ORDER] for item, values in labels_by_item.items()}
    multi = {item: values for item, values in multi.items() if len(values) >= 2}
    if not multi:
        return {"pairs": 0, "percent": None, "alpha": None}
    agree = total = 0
    for values in multi.values():
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                agree += values[i] == values[j]
                total += 1
    width = max(len(values) for values in multi.values())
    data = np.full((width, len(multi)), np.nan)
    for column, values in enumerate(multi.values()):
        data[:len(values), column] = values
    alpha = None
    if len(np.unique(data[~np.isnan(data)])) >= 2:
        alpha = round(float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                               value_domain=[-1.0, 0.0, 1.0])), 4)
    return {"pairs": len(multi), "percent": round(agree / total, 4), "alpha": alpha}


_ORDER = {"A": -1.0, "tie": 0.0, "B": 1.0}


def style_features(texts: Sequence[str]) -> np.ndarray:
    """Log length in tokens and markdown density of each response (the signals' definitions)."""
    signals = [response_signals("", text) for text in texts]
    return np.array([[math.log1p(s.length_tokens), s.markdown_density] for s in signals], dtype=float).reshape(-1, 2)


__all__ = ["LabelledPair", "Side", "audit_pairs", "bradley_terry", "concordance", "contrasted_modes",
           "cycle_results", "preference_agreement", "reference_accuracy"]
