"""Divergence analysis: calibration, detectors, attribution, drift reports, alerts."""
