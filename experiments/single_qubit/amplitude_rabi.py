"""Amplitude Rabi: sweep the gain of a qubit pulse and fit the oscillation; the gain at
half a period is the pi-pulse gain. Gains are DAC units (integers, full scale 32766) as in
the predecessor, or a fraction of full scale with ``gain_unit="fraction"``."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from qick.asm_v2 import QickSweep1D

from experiments.base import CalibrationUpdate
from experiments.fitting import fit_rabi, signal_axis

from .common import (FULL_SCALE_DAC, QubitProgram, SingleQubitExperiment, SweepConfig,
                     dac_to_fraction, readout_iq)

_GAIN = "pulse gain, in gain_unit (DAC: 0..32766; fraction: 0..1)"


class AmplitudeRabiConfig(SweepConfig):
    start: float = Field(0, ge=0, description="first " + _GAIN,
                         json_schema_extra={"unit": "DAC"})
    step: float = Field(100, gt=0, description=_GAIN + " step",
                        json_schema_extra={"unit": "DAC"})
    stop: float | None = Field(None, gt=0, description="last " + _GAIN + "; instead of step",
                               json_schema_extra={"unit": "DAC"})
    expts: int = Field(50, ge=3, le=2000)
    gain_unit: Literal["DAC", "fraction"] = Field(
        "DAC", description="unit of start/step/stop and of the fitted pi_gain")
    sigma_test: float | None = Field(None, gt=0, le=5, description="pulse sigma; default: "
                                     "the pi pulse's", json_schema_extra={"unit": "us"})
    pulse_type: Literal["gauss", "const"] = "gauss"

    @model_validator(mode="after")
    def _gain_range(self) -> "AmplitudeRabiConfig":
        full = FULL_SCALE_DAC if self.gain_unit == "DAC" else 1.0
        unit = self.gain_unit
        if unit == "DAC" and not (float(self.start).is_integer()
                                  and float(self.step).is_integer()):
            raise ValueError(
                f"start {self.start:g} / step {self.step:g}: DAC gains are whole numbers "
                f"(full scale {FULL_SCALE_DAC}); for a fraction of full scale set "
                "gain_unit='fraction'")
        last = self.start + self.step * (self.expts - 1)
        if last > full + 1e-9:
            raise ValueError(f"the gain sweep ends at {last:g} {unit}, above full scale "
                             f"({full:g} {unit}): lower start, step or expts")
        return self

    def fraction(self, gain: float) -> float:
        return dac_to_fraction(gain) if self.gain_unit == "DAC" else gain


class AmplitudeRabiProgram(QubitProgram):
    def _pulses(self, cfg):
        self.add_qubit_pulse(cfg, "qubit_pulse", cfg["gain"], cfg["sigma"], cfg["pulse_type"])

    def _sequence(self, cfg):
        self.pulse(ch=cfg["q"]["qubit_ch"], name="qubit_pulse", t=0)


class AmplitudeRabiExperiment(SingleQubitExperiment):
    config_model = AmplitudeRabiConfig
    # the pi pulse's gain, in DAC units as the config holds it (whatever gain_unit)
    calibrates = (CalibrationUpdate("device.qubit.pulses.pi_ge.gain[{qubit}]",
                                    result="pi_gain_dac", error="pi_gain_dac_err",
                                    bounds=(1, FULL_SCALE_DAC), kind="int",
                                    max_rel_error=0.1),)

    def expt_units(self):
        units = super().expt_units()
        for key in ("start", "step", "stop"):
            units[key] = self.cfg.gain_unit
        return units

    def acquire(self):
        c = self.cfg
        sigma = c.sigma_test or self.qubit()["pi_sigma"]
        xpts = c.points()
        frac = np.array([c.fraction(x) for x in xpts])
        area = 1.0 if c.pulse_type == "gauss" else 2.5  # const pulses rotate faster

        def model(truth):  # truth["pi_gain"] (DAC) makes a pi pulse at truth["pi_sigma"]
            rotation = frac * FULL_SCALE_DAC * sigma * area / truth["pi_sigma"]
            return readout_iq(np.sin(np.pi * rotation / truth["pi_gain"] / 2) ** 2, truth)
        return self.run_sweep(AmplitudeRabiProgram, xpts, model, seq_us=4 * sigma,
                              gain=QickSweep1D("sweep", frac[0], frac[-1]), sigma=sigma,
                              pulse_type=c.pulse_type)

    def analyze(self, data):
        """pi_gain comes out in the sweep's unit (gain_unit), like xpts."""
        fit = fit_rabi(data["xpts"], signal_axis(data["avgi"] + 1j * data["avgq"]))
        dac = FULL_SCALE_DAC if self.cfg.gain_unit == "fraction" else 1.0
        return {"pi_gain": fit["pi_gain"], "pi_gain_err": fit["pi_gain_err"],
                "pi_gain_dac": fit["pi_gain"] * dac, "pi_gain_dac_err": fit["pi_gain_err"] * dac,
                "fit_params": np.array([fit["amp"], fit["pi_gain"], fit["offset"]])}
