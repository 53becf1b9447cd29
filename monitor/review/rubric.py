"""The review rubric: versioned questions with their allowed answers (``monitor/data/rubric.json``,
guidelines in docs/rubric.md), and the checks an annotation must pass against it.

An annotation is a mapping of item name to value. Every required item of the task must be there,
no unknown item, every value one of the item's ``values``. Ordinal items are Likert scales
(integers); nominal items are labels. A *rating* task (one response) has every item but
``preference``; a *pairwise* task (two responses, A and B) has ``preference`` alone.

>>> rubric = load_rubric()
>>> rubric.version
'fintech-2026.1'
>>> labels = {"overall": 4, "helpfulness": 4, "honesty": 5, "harmless": "yes", "compliance": "yes",
...           "overpromise": "no", "length": "about_right", "tone": "appropriate"}
>>> rubric.check(labels, pairwise=False) == labels
True
>>> rubric.satisfaction(labels)
0.75
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from monitor.errors import InvalidInput

#: The longest annotator comment stored (characters).
MAX_COMMENT = 2000


@dataclass(frozen=True)
class RubricItem:
    name: str
    kind: str  # ordinal | nominal
    values: tuple[Any, ...]
    required: bool
    question: str
    pairwise: bool = False

    def accepts(self, value: Any) -> bool:
        if self.kind == "ordinal":  # bool is an int; a Likert answer is not a bool
            return isinstance(value, int) and not isinstance(value, bool) and value in self.values
        return isinstance(value, str) and value in self.values


@dataclass(frozen=True)
class Rubric:
    version: str
    items: tuple[RubricItem, ...]
    document: dict[str, Any]

    def item(self, name: str) -> RubricItem:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(name)

    def task_items(self, *, pairwise: bool) -> tuple[RubricItem, ...]:
        """The items of a task: the rating items, or on a pairwise task the pairwise ones."""
        return tuple(item for item in self.items if item.pairwise == pairwise)

    def check(self, labels: Any, *, pairwise: bool) -> dict[str, Any]:
        """``labels`` if it fits this rubric for the task; :class:`InvalidInput` naming what does not."""
        if not isinstance(labels, dict):
            raise InvalidInput(f"labels must be an object of rubric item to value (rubric {self.version})")
        items = {item.name: item for item in self.task_items(pairwise=pairwise)}
        hint = " (a pairwise task asks for the preference alone)" if pairwise else \
            " (a single response has no preference)"
        problems = [f"unknown item {name!r}" + (hint if name == "preference" or pairwise else "")
                    for name in labels if name not in items]
        for name, item in items.items():
            if name not in labels:
                if item.required:
                    problems.append(f"{name!r} is required")
            elif not item.accepts(labels[name]):
                problems.append(f"{name!r} must be one of {list(item.values)}, got {labels[name]!r}")
        if problems:
            raise InvalidInput(f"the labels do not fit rubric {self.version}: " + "; ".join(problems[:8]))
        return dict(labels)

    def satisfaction(self, labels: dict[str, Any]) -> float:
        """The annotator's overall judgement on the monitor's satisfaction scale, [0, 1]: like a
        user's 1-5 stars, ``(overall - 1) / 4``."""
        return (float(labels["overall"]) - 1.0) / 4.0


def check_comment(comment: str | None) -> str | None:
    if comment is not None and len(comment) > MAX_COMMENT:
        raise InvalidInput(f"the comment is {len(comment)} characters; at most {MAX_COMMENT} are stored")
    return comment or None


@cache
def load_rubric() -> Rubric:
    document = json.loads(resources.files("monitor.data").joinpath("rubric.json").read_text(encoding="utf-8"))
    items = tuple(RubricItem(name=raw["name"], kind=raw["kind"], values=tuple(raw["values"]),
                             required=bool(raw.get("required", True)), question=raw["question"],
                             pairwise=bool(raw.get("pairwise", False))) for raw in document["items"])
    return Rubric(version=document["version"], items=items, document=document)
