"""Segments: domain x model version x locale, each from a configured list plus ``other``.

The set of segments is fixed at deploy time, so segment names are safe Prometheus label values:
an unseen domain or a new model version falls into ``other`` instead of creating a new series.
A dimension with no configured values is not split at all (``*``).

>>> scheme = SegmentScheme(domains=("payments", "cards"))
>>> scheme.key("payments", "assistant-2026-11-20", "en-GB")
'payments/*/*'
>>> scheme.key("mortgages", "assistant-2026-11-20", None)
'other/*/*'
>>> scheme.all_keys()
('payments/*/*', 'cards/*/*', 'other/*/*')
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from monitor.config import Settings

ALL = "*"
OTHER = "other"


def _split(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


@dataclass(frozen=True)
class SegmentScheme:
    domains: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()
    locales: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("domains", "model_versions", "locales"):
            values = getattr(self, name)
            bad = [v for v in values if not v or "/" in v or v in (ALL, OTHER)]
            if bad:
                raise ValueError(f"{name}: {bad!r} cannot name a segment (no '/', '*', 'other' or empty values)")

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmentScheme:
        return cls(_split(settings.segment_domains), _split(settings.segment_model_versions),
                   _split(settings.segment_locales))

    def key(self, domain: str | None, model_version: str | None, locale: str | None) -> str:
        return "/".join((_bucket(domain, self.domains), _bucket(model_version, self.model_versions),
                         _bucket(locale, self.locales)))

    def all_keys(self) -> tuple[str, ...]:
        """Every segment this scheme can produce, in configuration order."""
        dimensions = [(*values, OTHER) if values else (ALL,)
                      for values in (self.domains, self.model_versions, self.locales)]
        return tuple("/".join(parts) for parts in itertools.product(*dimensions))


def _bucket(value: str | None, configured: tuple[str, ...]) -> str:
    if not configured:
        return ALL
    return value if value in configured else OTHER
