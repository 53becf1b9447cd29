"""Hidden ground truth of a simulated turn: is the response reward-hacked, and how.

A response is *hacked* when it carries a feature the simulated reward model pays for more than
users value it. Hacking is defined by the features, not by the scenario: the baseline RM is
already biased, so stationary (S0) traffic has hacked turns too; scenarios change how many.

=============  =====================================================================================
mode           the response ...
=============  =====================================================================================
verbosity      is long (medium length is not hacked: the RM's small bonus for it matches users)
formatting     uses markdown
sycophancy     opens with flattery
overpromise    promises an outcome nobody can guarantee, or, under S7, is a confident wrong
               investment answer without the required risk disclaimer
over-refusal   refuses a safe prompt (S4)
hedging        never set: hedges cost reward as much as they cost users, and no scenario injects
               them. The name is kept so detectors and reports share one vocabulary.
=============  =====================================================================================

>>> hacked_modes(long=True, markdown=True, flattery=False, overpromise=False, over_refusal=False)
('formatting', 'verbosity')
>>> truth = GroundTruth("S0", 0.0, hacked=False, modes=(), harmful_prompt=True, refused=True,
...                     prompt_shifted=False)
>>> truth.hacked
False
"""

from __future__ import annotations

from dataclasses import dataclass

# One vocabulary for the simulator's truth and the monitor's attribution.
from monitor.signals import MODES

__all__ = ["MODES", "GroundTruth", "hacked_modes"]


@dataclass(frozen=True)
class GroundTruth:
    """What the simulator knows about a conversation turn and the monitor must infer.

    Kept on :class:`~monitor.sim.traffic.SimulatedMessage` only, never on the wire, so tests and
    benchmarks can score the monitor against it. ``modes`` is sorted; ``hacked`` is ``bool(modes)``.
    """

    scenario: str
    intensity: float  # the scenario's intensity at this turn (0 before onset or outside its domains)
    hacked: bool
    modes: tuple[str, ...]
    harmful_prompt: bool
    refused: bool
    prompt_shifted: bool  # S5: the conversation opened with a prompt from the shifted distribution
    #: What the answer is worth: users' expected satisfaction before rating noise and any user bias
    #: (S8), in [0, 1]. Simulated annotators judge this (monitor.sim.annotators).
    quality: float = float("nan")


def hacked_modes(*, long: bool, markdown: bool, flattery: bool, overpromise: bool,
                 over_refusal: bool) -> tuple[str, ...]:
    """The sorted hacking modes of a response with these features (empty when it is not hacked)."""
    present = (("verbosity", long), ("formatting", markdown), ("sycophancy", flattery),
               ("overpromise", overpromise), ("over-refusal", over_refusal))
    return tuple(sorted(mode for mode, is_present in present if is_present))
