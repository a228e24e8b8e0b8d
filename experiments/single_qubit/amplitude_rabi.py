"""Amplitude Rabi: sweep the gain of a qubit pulse and fit the oscillation; the gain at
half a period is the pi-pulse gain."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from qick.asm_v2 import QickSweep1D

from experiments.fitting import fit_rabi, signal_axis

from .common import QubitProgram, SingleQubitExperiment, SweepConfig, readout_iq


class AmplitudeRabiConfig(SweepConfig):
    start: float = Field(0.0, ge=0, le=1)
    step: float = Field(0.02, gt=0, le=1)
    expts: int = Field(51, ge=3, le=2000)
    sigma_test: float | None = Field(None, gt=0, le=5, description="us; default: pi pulse")
    pulse_type: Literal["gauss", "const"] = "gauss"


class AmplitudeRabiProgram(QubitProgram):
    def _pulses(self, cfg):
        self.add_qubit_pulse(cfg, "qubit_pulse", cfg["gain"], cfg["sigma"], cfg["pulse_type"])

    def _sequence(self, cfg):
        self.pulse(ch=cfg["q"]["qubit_ch"], name="qubit_pulse", t=0)


class AmplitudeRabiExperiment(SingleQubitExperiment):
    config_model = AmplitudeRabiConfig

    def acquire(self):
        c = self.cfg
        stop = c.start + c.step * (c.expts - 1)
        if stop > 1.0:
            raise ValueError(f"gain sweep ends at {stop:g}; the maximum gain is 1 "
                             "(lower step or expts)")
        sigma = c.sigma_test or self.qubit()["pi_sigma"]
        xpts = c.points()
        area = 1.0 if c.pulse_type == "gauss" else 2.5  # const pulses rotate faster

        def model(truth):
            theta = np.pi * xpts * sigma * area / (truth["pi_gain"] * 0.05)
            return readout_iq(np.sin(theta / 2) ** 2, truth)
        return self.run_sweep(AmplitudeRabiProgram, xpts, model,
                              gain=QickSweep1D("sweep", c.start, stop), sigma=sigma,
                              pulse_type=c.pulse_type)

    def analyze(self, data):
        fit = fit_rabi(data["xpts"], signal_axis(data["avgi"] + 1j * data["avgq"]))
        return {"pi_gain": fit["pi_gain"], "pi_gain_err": fit["pi_gain_err"],
                "fit_params": np.array([fit["amp"], fit["pi_gain"], fit["offset"]])}
