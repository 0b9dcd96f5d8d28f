"""Calibration of quantized diffusion UNets: observers, weight calibration, activation methods, relaxing."""

from pcr.calibrate.calibration import calibrate, calibrate_weights_only

__all__ = ["calibrate", "calibrate_weights_only"]
