"""Calibration of quantized diffusion UNets: observers, weight calibration, activation methods, relaxing."""

from pcr.calibrate.calibration import calibrate

__all__ = ["calibrate"]
