"""T2 Ramsey: two pi/2 pulses separated by a growing wait, the second one's phase advanced
at ``ramsey_freq``; the fringes decay with T2* and oscillate at ramsey_freq plus the qubit
detuning, which corrects f_ge."""
from __future__ import annotations

import numpy as np
from pydantic import Field
from qick.asm_v2 import QickSweep1D

from experiments.base import CalibrationUpdate
from experiments.fitting import fit_decaying_cos, signal_axis

from .common import QubitProgram, SingleQubitExperiment, SweepConfig, readout_iq


class T2RamseyConfig(SweepConfig):
    start: float = Field(0.0, ge=0, description="first wait", json_schema_extra={"unit": "us"})
    step: float = Field(0.1, gt=0, description="wait step", json_schema_extra={"unit": "us"})
    stop: float | None = Field(None, gt=0, description="last wait; instead of step",
                               json_schema_extra={"unit": "us"})
    expts: int = Field(100, ge=5, le=2000)
    ramsey_freq: float = Field(0.5, ge=0, le=100, description="virtual detuning",
                               json_schema_extra={"unit": "MHz"})


class T2RamseyProgram(QubitProgram):
    def _pulses(self, cfg):
        q = cfg["q"]
        self.add_qubit_pulse(cfg, "half_pi", q["pi_gain"] / 2, q["pi_sigma"])
        self.add_qubit_pulse(cfg, "half_pi_2", q["pi_gain"] / 2, q["pi_sigma"],
                             phase=cfg["phase"])

    def _sequence(self, cfg):
        ch = cfg["q"]["qubit_ch"]
        self.pulse(ch=ch, name="half_pi", t=0)
        self.delay_auto(cfg["wait"], tag="wait")
        self.pulse(ch=ch, name="half_pi_2", t=0)


class T2RamseyExperiment(SingleQubitExperiment):
    config_model = T2RamseyConfig
    # f_ge corrected by the measured detuning (fringes at ramsey_freq + f_ge - true f_ge)
    calibrates = (CalibrationUpdate("device.qubit.f_ge[{qubit}]", result="detuning",
                                    error="detuning_err", mode="subtract",
                                    bounds=(100.0, 20_000.0), ndigits=5,
                                    max_rel_error=None, max_abs_error=0.05),)  # MHz

    def acquire(self):
        c = self.cfg
        xpts = c.points()
        f_ge = self.qubit()["f_ge"]

        def model(truth):
            detuning = c.ramsey_freq + (f_ge - truth["f_ge"])
            p = 0.5 * (1 - np.exp(-xpts / truth["T2R"]) * np.cos(2 * np.pi * detuning * xpts))
            return readout_iq(p, truth)
        return self.run_sweep(
            T2RamseyProgram, xpts, model, seq_us=xpts + 8 * self.qubit()["pi_sigma"],
            wait=QickSweep1D("sweep", c.start, xpts[-1]),
            phase=QickSweep1D("sweep", 360 * c.ramsey_freq * c.start,
                              360 * c.ramsey_freq * xpts[-1]))

    def analyze(self, data):
        fit = fit_decaying_cos(data["xpts"], signal_axis(data["avgi"] + 1j * data["avgq"]))
        f_ge = self.qubit()["f_ge"]
        detuning = fit["freq"] - self.cfg.ramsey_freq
        return {"T2R": fit["tau"], "T2R_err": fit["tau_err"], "fringe_freq": fit["freq"],
                "detuning": detuning, "detuning_err": fit["freq_err"],
                "f_ge_corrected": [f_ge - detuning, f_ge + detuning],
                "fit_params": np.array([fit[k] for k in ("amp", "freq", "phase", "tau",
                                                         "offset")])}
