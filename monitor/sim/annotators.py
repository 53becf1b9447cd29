"""A simulated pool of human annotators with known noise, judging turns from the simulator's hidden
ground truth (:class:`monitor.sim.truth.GroundTruth`), for tests and ``monitor bench review``.

An annotator sees what the answer is worth (``quality``, before any user bias) through its own
bias and noise: ``s = clamp(quality + bias + N(0, noise))``, ``overall = round(1 + 4 s)``, the
same 1-5 mapping users' stars follow. Careless annotators answer at random with probability
``careless``. The other rubric items follow the turn's known features: a long answer is
``too_long``, a flattering one ``flattering``, an overpromise is one, a harmful prompt answered
is not harmless.

:meth:`Annotator.expected_satisfaction` is the exact mean of ``(overall - 1) / 4`` for a quality
(the normal's mass in each rounding bin), so benchmarks know the truth their intervals should cover.

>>> pool = AnnotatorPool.build(4, seed=1)
>>> len(pool.annotators), pool.annotators[0].name
(4, 'sim-annotator-0')
>>> round(float(pool.annotators[0].expected_satisfaction(0.7)), 1)
0.7
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from monitor.sim.truth import GroundTruth

#: Every rating item's answers (rubric fintech-2026.1), for careless answers.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "overall": (1, 2, 3, 4, 5), "helpfulness": (1, 2, 3, 4, 5), "honesty": (1, 2, 3, 4, 5), "harmless": ("yes", "no"),
    "compliance": ("yes", "no", "not_applicable"), "overpromise": ("yes", "no"),
    "length": ("too_short", "about_right", "too_long"), "tone": ("appropriate", "flattering", "cold"),
}
#: Bin edges of s for overall 1..5: round(1 + 4 s) = k for s in [(k - 1.5) / 4, (k - 0.5) / 4).
#: Two answers an annotator sees within this much quality of each other are a tie.
TIE = 0.05
_EDGES = np.array([-np.inf, 0.125, 0.375, 0.625, 0.875, np.inf])


@dataclass(frozen=True)
class Annotator:
    name: str
    bias: float = 0.0
    noise: float = 0.1
    careless: float = 0.0

    def overall(self, quality: float, rng: np.random.Generator) -> int:
        if rng.random() < self.careless:
            return int(rng.integers(1, 6))
        return self._careful_overall(quality, rng)

    def _careful_overall(self, quality: float, rng: np.random.Generator) -> int:
        """The 1-5 judgement of an attentive moment: quality seen through bias and noise."""
        s = min(1.0, max(0.0, quality + self.bias + rng.normal(0.0, self.noise)))
        return int(min(5, max(1, round(1 + 4 * s))))

    def expected_satisfaction(self, quality: float | np.ndarray) -> np.ndarray:
        """E[(overall - 1) / 4] at ``quality`` (vectorised)."""
        q = np.asarray(quality, dtype=float)[..., None] + self.bias
        mass = np.diff(stats.norm.cdf((_EDGES - q) / self.noise), axis=-1)
        careful = mass @ (np.arange(5) / 4.0)
        return (1 - self.careless) * careful + self.careless * 0.5

    def prefer(self, quality_a: float, quality_b: float, rng: np.random.Generator, *, tie: float = TIE) -> str:
        """A pairwise judgement (``A``, ``B`` or ``tie``): each answer's quality seen through this
        annotator's noise (a Thurstone model); a tie when the two look within ``tie`` of each other."""
        if rng.random() < self.careless:
            return ("A", "B", "tie")[int(rng.integers(3))]
        seen_a, seen_b = quality_a + rng.normal(0.0, self.noise), quality_b + rng.normal(0.0, self.noise)
        if abs(seen_a - seen_b) < tie:
            return "tie"
        return "A" if seen_a > seen_b else "B"

    def label(self, truth: GroundTruth, rng: np.random.Generator) -> dict[str, Any]:
        """A full rubric annotation of a turn with this ground truth (at random when careless)."""
        if rng.random() < self.careless:
            return {name: values[int(rng.integers(len(values)))] for name, values in _CHOICES.items()}
        overall = self._careful_overall(truth.quality, rng)
        modes = set(truth.modes)

        def near(value: int) -> int:  # within a point of it
            return min(5, max(1, value + int(rng.integers(-1, 2))))

        return {
            "overall": overall,
            "helpfulness": near(overall),
            "honesty": near(2 if "overpromise" in modes else 4),
            "harmless": "no" if truth.harmful_prompt and not truth.refused else "yes",
            "compliance": "no" if "overpromise" in modes else "yes",
            "overpromise": "yes" if "overpromise" in modes else "no",
            "length": "too_long" if "verbosity" in modes else "about_right",
            "tone": "flattering" if "sycophancy" in modes else "appropriate",
        }


@dataclass(frozen=True)
class AnnotatorPool:
    annotators: tuple[Annotator, ...]

    @classmethod
    def build(cls, size: int, *, seed: int = 0, bias_sd: float = 0.03, noise: float = 0.1,
              careless: dict[int, float] | None = None) -> AnnotatorPool:
        """``size`` annotators with biases drawn N(0, ``bias_sd``), the same ``noise``; ``careless``:
        {index: share of random answers}."""
        rng = np.random.default_rng(seed)
        careless = careless or {}
        return cls(tuple(Annotator(f"sim-annotator-{i}", float(rng.normal(0.0, bias_sd)), noise,
                                   careless.get(i, 0.0)) for i in range(size)))

    def expected_satisfaction(self, quality: float | np.ndarray) -> np.ndarray:
        """The pool's mean judgement at ``quality`` (each annotator equally likely to label an item)."""
        return np.mean([a.expected_satisfaction(quality) for a in self.annotators], axis=0)
