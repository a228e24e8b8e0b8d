"""Resonator spectroscopy: sweep the readout frequency and fit the transmission dip."""
from __future__ import annotations

import numpy as np
from pydantic import Field
from qick.asm_v2 import QickSweep1D

from experiments.base import CalibrationUpdate
from experiments.fitting import fit_lorentzian_dip

from .common import (FULL_SCALE_DAC, QubitProgram, SingleQubitExperiment, SweepConfig,
                     dac_to_fraction)


class ResonatorSpectroscopyConfig(SweepConfig):
    start: float = Field(7000.0, gt=0, description="first readout frequency",
                         json_schema_extra={"unit": "MHz"})
    step: float = Field(1.0, gt=0, description="frequency step",
                        json_schema_extra={"unit": "MHz"})
    stop: float | None = Field(None, gt=0, description="last frequency; instead of step",
                               json_schema_extra={"unit": "MHz"})
    expts: int = Field(101, ge=5, le=5000)
    gain: float | None = Field(None, gt=0, le=FULL_SCALE_DAC,
                               description="readout gain; default: the configured one",
                               json_schema_extra={"unit": "DAC"})
    reps: int = Field(500, ge=1, le=10_000_000)
    relax_delay: float = Field(10.0, ge=0, le=1e6, description="wait between shots",
                               json_schema_extra={"unit": "us"})


class ResonatorSpectroscopyProgram(QubitProgram):
    pass  # readout pulse only; its frequency is the sweep


class ResonatorSpectroscopyExperiment(SingleQubitExperiment):
    config_model = ResonatorSpectroscopyConfig
    calibrates = (CalibrationUpdate("device.readout.frequency[{qubit}]", result="f_res",
                                    error="f_res_err", bounds=(100.0, 20_000.0), ndigits=4,
                                    max_rel_error=None, max_abs_error=1.0),)  # MHz

    def acquire(self):
        c = self.cfg
        xpts = c.points()

        def model(truth):
            half = truth["kappa"] / 2
            s21 = 1 - 0.8 * half / (half - 1j * (xpts - truth["f_res"]))
            return truth["signal"] * s21 * np.exp(-2j * np.pi * 0.05 * (xpts - xpts[0]))
        params = {"ro_freq": QickSweep1D("sweep", c.start, xpts[-1])}
        if c.gain is not None:
            params["ro_gain"] = dac_to_fraction(c.gain)
        return self.run_sweep(ResonatorSpectroscopyProgram, xpts, model, **params)

    def analyze(self, data):
        # |S21|^2 (not |S21|) of a notch resonator is a Lorentzian with FWHM = kappa
        fit = fit_lorentzian_dip(data["xpts"], data["amps"] ** 2)
        return {"f_res": fit["f0"], "f_res_err": fit["f0_err"], "kappa": fit["fwhm"],
                "fit_params": np.array([fit[k] for k in ("amp", "f0", "fwhm", "offset")])}
