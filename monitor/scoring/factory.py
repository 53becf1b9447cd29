"""`build_scorer`: the scorer the settings ask for.

``MONITOR_RM_URL`` → :class:`~monitor.scoring.remote.RemoteScorer`; ``MONITOR_RM_MODEL`` →
:class:`~monitor.scoring.transformers_scorer.TransformersScorer`; neither → the producer-side
``reward`` of each event (:class:`~monitor.scoring.base.ProducerRewardScorer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.scoring.base import ProducerRewardScorer, Scorer

if TYPE_CHECKING:
    from monitor.scoring.transformers_scorer import TransformersScorer


def build_scorer(settings: Settings) -> Scorer:
    """Raise :class:`ConfigError` for settings the scorer rejects, :class:`ScoringError` for a
    model that cannot be loaded."""
    try:
        return _build(settings)
    except ValueError as exc:
        raise ConfigError(f"invalid reward-model setting: {exc}") from exc


def _build(settings: Settings) -> Scorer:
    if settings.rm_url and settings.rm_model:
        raise ConfigError("set MONITOR_RM_MODEL (score here) or MONITOR_RM_URL (score remotely), not both")
    if settings.rm_url:
        from monitor.scoring.remote import RemoteScorer

        return RemoteScorer(settings.rm_url, timeout_s=settings.rm_timeout_seconds, retries=settings.rm_retries,
                            max_concurrency=settings.rm_max_concurrency)
    if settings.rm_model:
        return transformers_scorer(settings)
    return ProducerRewardScorer()


def transformers_scorer(settings: Settings) -> TransformersScorer:
    """The ``MONITOR_RM_*`` model loaded in this process (also what `monitor rm serve` serves)."""
    from monitor.scoring.transformers_scorer import TransformersScorer

    if not settings.rm_model:
        raise ConfigError("set MONITOR_RM_MODEL to a reward model directory or hub id")
    return TransformersScorer(
        settings.rm_model, revision=settings.rm_revision, label_index=settings.rm_label_index,
        device=settings.rm_device, dtype=settings.rm_dtype, max_length=settings.rm_max_length,
        max_batch_tokens=settings.rm_max_batch_tokens, strategy=settings.rm_strategy,
        cache_size=settings.rm_cache_size,
    )
