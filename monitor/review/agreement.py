"""What the annotators agree on, and who is off: Krippendorff's alpha per rubric item with a
bootstrap interval, and each annotator's accuracy on gold items.

Alpha is computed by the ``krippendorff`` package over the items that two or more annotators
labelled (the overlapped share): nominal for categorical items, ordinal for the Likert scales.
Its 95% interval is a percentile bootstrap over items (the unit that was sampled), 1,000 draws.
Alpha needs disagreement to be possible: an item whose every label is the same value has no
alpha (None), not a perfect one.

Gold items have known answers. An annotator's gold accuracy is the share of (item, question)
pairs answered as the gold answer says (the overall score within one point). An annotator with at
least :data:`MIN_GOLD` gold items whose accuracy is below :data:`FLAG_RATIO` of the pool's median
is flagged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import krippendorff
import numpy as np

from monitor.review.rubric import Rubric

BOOTSTRAP_DRAWS = 1000
MIN_GOLD = 5
FLAG_RATIO = 0.75


@dataclass(frozen=True)
class Label:
    item_id: int
    annotator: str
    labels: Mapping[str, Any]


def _matrix(labels: Sequence[Label], name: str, codes: Mapping[Any, float]) -> tuple[np.ndarray, list[int]]:
    """Annotators x items of ``name``'s codes (NaN where not labelled), over items with 2+ labels."""
    by_item: dict[int, dict[str, float]] = defaultdict(dict)
    for label in labels:
        if name in label.labels and label.labels[name] in codes:
            by_item[label.item_id][label.annotator] = codes[label.labels[name]]
    items = sorted(i for i, values in by_item.items() if len(values) >= 2)
    annotators = sorted({a for i in items for a in by_item[i]})
    data = np.full((len(annotators), len(items)), np.nan)
    for column, item in enumerate(items):
        for annotator, value in by_item[item].items():
            data[annotators.index(annotator), column] = value
    return data, items


def _alpha(data: np.ndarray, level: Literal["nominal", "ordinal"], domain: Sequence[float]) -> float | None:
    present = data[~np.isnan(data)]
    if data.shape[1] < 2 or len(np.unique(present)) < 2:
        return None
    value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=list(domain)))
    return value if math.isfinite(value) else None


def agreement(labels: Sequence[Label], rubric: Rubric, *, rng: np.random.Generator | None = None,
              draws: int = BOOTSTRAP_DRAWS) -> dict[str, dict[str, Any]]:
    """Per rubric item: ``alpha``, ``ci95`` (bootstrap over items), ``items`` (with 2+ labels), ``level``."""
    rng = rng or np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for item in rubric.items:
        level: Literal["nominal", "ordinal"] = "ordinal" if item.kind == "ordinal" else "nominal"
        codes = {value: float(code) for code, value in enumerate(item.values)}
        data, items = _matrix(labels, item.name, codes)
        alpha = _alpha(data, level, list(codes.values()))
        ci = None
        if alpha is not None and len(items) >= 10 and draws > 0:
            boot = []
            for _ in range(draws):
                value = _alpha(data[:, rng.integers(0, len(items), len(items))], level, list(codes.values()))
                if value is not None:
                    boot.append(value)
            if len(boot) >= draws // 2:
                ci = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
        out[item.name] = {"alpha": alpha, "ci95": ci, "items": len(items), "level": level}
    return out


def gold_accuracy(labels: Sequence[Label], gold: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per annotator: gold items labelled, accuracy, and whether it is flagged (see the module)."""
    hits: dict[str, list[float]] = defaultdict(list)
    items: dict[str, int] = defaultdict(int)
    for label in labels:
        answer = gold.get(label.item_id)
        if answer is None:
            continue
        items[label.annotator] += 1
        for name, expected in answer.items():
            given = label.labels.get(name)
            if name == "overall" and isinstance(given, int) and isinstance(expected, int):
                hits[label.annotator].append(float(abs(given - expected) <= 1))
            else:
                hits[label.annotator].append(float(given == expected))
    accuracy = {name: float(np.mean(values)) for name, values in hits.items() if values}
    eligible = [value for name, value in accuracy.items() if items[name] >= MIN_GOLD]
    median = float(np.median(eligible)) if eligible else math.nan
    return [{"annotator": name, "gold_items": items[name], "gold_accuracy": accuracy.get(name),
             "flagged": bool(items[name] >= MIN_GOLD and name in accuracy and math.isfinite(median)
                             and accuracy[name] < FLAG_RATIO * median)}
            for name in sorted(items)]
