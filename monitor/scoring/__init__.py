"""Scoring responses with the deployed reward model (see :mod:`monitor.scoring.base`)."""

from monitor.scoring.base import ProducerRewardScorer, ScoreOutcome, Scorer

__all__ = ["ProducerRewardScorer", "ScoreOutcome", "Scorer"]
