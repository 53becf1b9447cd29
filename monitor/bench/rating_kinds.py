"""Stationary (reward, satisfaction) streams per rating kind, written apart from the simulator.

The false-alarm budget must hold for every way users rate, not only for the simulator's ratings
(whose satisfaction is the hidden quality plus Gaussian noise, read through the same few rules).
Each stream here is one segment in one *world*: a reward distribution, a true calibration curve
and a way of rating, drawn at random per stream from families that real traffic shows and that a
two-parameter logistic map does not fit exactly:

* **rewards**: Gaussian, skewed (gamma), heavy-tailed (Student t, 3 d.f.) or bimodal, in the RM's
  own units (any offset and scale);
* **curves** P(satisfied | reward): logistic, probit, complementary log-log (asymmetric), a
  logistic with a floor and a ceiling (some users are never happy, some always), or a kinked,
  piecewise-linear one (the RM does not discriminate below its median);
* **dependence**: users rate runs of consecutive turns (mean 1 to 4), with a per-user bias on
  the latent scale and a per-user topic that moves the reward of their whole run;
* **thumbs**: 0/1 through a logistic or probit link of the latent utility;
* **stars**: a latent satisfaction plus rater noise, cut into 1-5 at the user's own cut points
  (lenient or strict raters), with a share of "polar" users who only give 1 or 5 (the J-shaped,
  heaped distributions of review sites); satisfaction ``(stars - 1) / 4``;
* **score**: Beta noise around the latent satisfaction, or Gaussian noise clipped to [0, 1]
  (point masses at 0 and 1), rounded to two decimals.

The streams are stationary by construction: a world never changes within its stream, so every
CUSUM alarm on one is a false alarm. :func:`false_alarm_trial` runs the production pieces on a
stream (``fit_calibration`` on the first rated turns, ``Calibration.standardised_residuals``,
``cusum_alarms``) without the analysis engine.

>>> rng = np.random.default_rng(3)
>>> world = draw_world("stars", rng)
>>> reward, satisfaction = world.stream(1_000, rng)
>>> sorted(set(np.round(satisfaction * 4).astype(int).tolist())) == [0, 1, 2, 3, 4]
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from monitor.analyze.calibration import Calibration, fit_calibration
from monitor.analyze.cusum import cusum_alarms

RATING_KINDS = ("thumbs", "stars", "score")
REWARD_SHAPES = ("normal", "skewed", "heavy", "bimodal")
CURVES = ("logistic", "probit", "cloglog", "plateau", "kinked")


def _check_kind(kind: str) -> None:
    if kind not in RATING_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RATING_KINDS)}, got {kind!r}")


@dataclass(frozen=True)
class World:
    """How one segment's users rate: fixed for the whole (stationary) stream."""

    kind: str
    reward_shape: str
    reward_offset: float  # RM units: reward = offset + scale * standardised reward
    reward_scale: float
    curve: str
    intercept: float  # of the curve, on the standardised reward
    slope: float
    floor: float  # the plateau curve runs from floor to ceiling
    ceiling: float
    run_mean: float  # consecutive rated turns per user
    user_sd: float  # per-user bias, latent (probability) scale
    topic_share: float  # share of the reward's variance shared by a user's run
    link: str  # thumbs: "logistic" or "probit"
    rater_sd: float  # stars: rater noise on the satisfaction scale
    cut_sd: float  # stars: SD of a user's shift of the cut points (leniency)
    polar_share: float  # stars: users who only give 1 or 5
    score_noise: str  # score: "beta" or "clipped"
    score_spread: float  # score: Beta concentration, or the clipped noise's SD

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if self.reward_shape not in REWARD_SHAPES:
            raise ValueError(f"reward_shape must be one of {', '.join(REWARD_SHAPES)}, got {self.reward_shape!r}")
        if self.curve not in CURVES:
            raise ValueError(f"curve must be one of {', '.join(CURVES)}, got {self.curve!r}")

    def quality(self, u: np.ndarray) -> np.ndarray:
        """The true P(satisfied) at standardised reward ``u``: the curve the logistic map approximates."""
        x = self.intercept + self.slope * u
        if self.curve == "logistic":
            return special.expit(x)
        if self.curve == "probit":
            return special.ndtr(x)
        if self.curve == "cloglog":
            return -np.expm1(-np.exp(np.clip(x, -30, 5)))
        if self.curve == "plateau":
            return self.floor + (self.ceiling - self.floor) * special.expit(1.7 * x)
        # kinked: flat below the median reward, then linear up to the ceiling
        return np.clip(self.floor + self.slope * 0.3 * np.maximum(u, 0.0), 0.0, self.ceiling)

    def _rewards(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Standardised rewards (mean ~0, SD ~1) of the chosen shape."""
        if self.reward_shape == "normal":
            return rng.normal(size=n)
        if self.reward_shape == "skewed":
            shape = 2.0
            return (rng.gamma(shape, size=n) - shape) / math.sqrt(shape)
        if self.reward_shape == "heavy":
            return rng.standard_t(3, size=n) / math.sqrt(3.0)
        side = rng.random(n) < 0.35
        return np.where(side, rng.normal(-1.3, 0.5, n), rng.normal(0.7, 0.5, n))

    def stream(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rated turns in serving order: (reward in RM units, satisfaction in [0, 1])."""
        reward, satisfaction, _ = self.stream_users(n, rng)
        return reward, satisfaction

    def stream_users(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`stream` (the same draws) with each turn's user: the run it belongs to, what a
        conversation id is in production."""
        runs = 1 + rng.poisson(self.run_mean - 1.0, size=n)
        users = np.repeat(np.arange(n), runs)[:n]
        # Per user: a bias on the latent scale, a topic shared by the run's rewards, a leniency.
        bias = rng.normal(0.0, self.user_sd, n)[users]
        topic = rng.normal(size=n)[users]
        u = math.sqrt(self.topic_share) * topic + math.sqrt(1.0 - self.topic_share) * self._rewards(n, rng)
        reward = self.reward_offset + self.reward_scale * u
        quality = self.quality(u)
        if self.kind == "thumbs":
            q = np.clip(quality, 1e-4, 1 - 1e-4)
            if self.link == "probit":
                p = special.ndtr(special.ndtri(q) + 2.5 * bias)
            else:
                p = special.expit(special.logit(q) + 4.0 * bias)
            return reward, (rng.random(n) < p).astype(float), users
        if self.kind == "stars":
            latent = quality + bias + rng.normal(0.0, self.rater_sd, n)
            leniency = rng.normal(0.0, self.cut_sd, n)[users]
            cuts = np.array([0.2, 0.4, 0.6, 0.8])
            stars = 1 + np.sum((latent + leniency)[:, None] > cuts[None, :], axis=1)
            polar = (rng.random(n) < self.polar_share)[users]
            stars = np.where(polar, np.where(latent > 0.5, 5, 1), stars)
            return reward, (stars - 1) / 4.0, users
        mean = np.clip(quality + bias, 0.02, 0.98)
        if self.score_noise == "beta":
            score = rng.beta(mean * self.score_spread, (1 - mean) * self.score_spread)
        else:
            score = np.clip(mean + rng.normal(0.0, self.score_spread, n), 0.0, 1.0)
        return reward, np.round(score, 2), users


def draw_world(kind: str, rng: np.random.Generator) -> World:
    """A random world for ``kind``, spanning the families in the module docstring."""
    _check_kind(kind)
    curve = CURVES[int(rng.integers(len(CURVES)))]
    score_noise = "beta" if rng.random() < 0.5 else "clipped"
    return World(
        kind=kind,
        reward_shape=REWARD_SHAPES[int(rng.integers(len(REWARD_SHAPES)))],
        reward_offset=float(rng.uniform(-3.0, 3.0)),
        reward_scale=float(np.exp(rng.uniform(-1.5, 1.5))),
        curve=curve,
        intercept=float(rng.uniform(-0.5, 1.5)),  # most users satisfied, as in most products
        slope=float(rng.uniform(0.4, 2.0)),
        floor=float(rng.uniform(0.0, 0.25)) if curve != "kinked" else float(rng.uniform(0.2, 0.5)),
        ceiling=float(rng.uniform(0.75, 1.0)),
        run_mean=float(rng.uniform(1.0, 4.0)),
        user_sd=float(rng.uniform(0.0, 0.12)),
        topic_share=float(rng.uniform(0.0, 0.3)),
        link="probit" if rng.random() < 0.5 else "logistic",
        rater_sd=float(rng.uniform(0.05, 0.25)),
        cut_sd=float(rng.uniform(0.0, 0.1)),
        polar_share=float(rng.uniform(0.0, 0.3)),
        score_noise=score_noise,
        score_spread=float(rng.uniform(3.0, 20.0)) if score_noise == "beta" else float(rng.uniform(0.1, 0.3)),
    )


@dataclass(frozen=True)
class FalseAlarmTrial:
    """One stationary stream through the production pieces."""

    world: World
    calibration: Calibration
    z: np.ndarray  # standardised residuals after the reference, in serving order
    alarms: int


def false_alarm_trial(world: World, *, reference_labels: int, labels: int, rng: np.random.Generator,
                      false_alarm_labels: int = 10_000, shift_sd: float = 0.5, seed: int = 0) -> FalseAlarmTrial:
    """Fit the reference on the first ``reference_labels`` rated turns, then run the CUSUM on the next
    ``labels``; ``false_alarm_labels``, ``shift_sd`` and ``seed`` go to ``fit_calibration``."""
    reward, satisfaction = world.stream(reference_labels + labels, rng)
    reference = slice(0, reference_labels)
    calibration = fit_calibration(reward[reference], satisfaction[reference], np.zeros((reference_labels, 1)),
                                  np.arange(reference_labels, dtype=float), shift_sd=shift_sd,
                                  false_alarm_labels=false_alarm_labels, seed=seed)
    z = calibration.standardised_residuals(reward[reference_labels:], satisfaction[reference_labels:])
    alarms = len(cusum_alarms(z, k=calibration.cusum_k, h=calibration.cusum_h))
    return FalseAlarmTrial(world, calibration, z, alarms)
