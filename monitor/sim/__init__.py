"""Synthetic traffic for demos, tests and benchmarks: see :mod:`monitor.sim.traffic` and, for the
labelled scenarios with hidden ground truth, :mod:`monitor.sim.scenarios`."""

from monitor.sim.scenarios import SCENARIO_NAMES, Scenario, scenario_sweep
from monitor.sim.traffic import SimulatedMessage, TrafficSimulator
from monitor.sim.truth import MODES, GroundTruth

__all__ = ["MODES", "SCENARIO_NAMES", "GroundTruth", "Scenario", "SimulatedMessage", "TrafficSimulator",
           "scenario_sweep"]
