"""Synthetic traffic for demos, tests and benchmarks: see :mod:`monitor.sim.traffic`."""

from monitor.sim.traffic import SimulatedMessage, TrafficSimulator

__all__ = ["SimulatedMessage", "TrafficSimulator"]
