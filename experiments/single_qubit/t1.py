"""T1: excite with a pi pulse, wait, measure; the excited population decays as exp(-t/T1)."""
from __future__ import annotations

import numpy as np
from pydantic import Field
from qick.asm_v2 import QickSweep1D

from experiments.base import CalibrationUpdate
from experiments.fitting import fit_exp, signal_axis

from .common import QubitProgram, SingleQubitExperiment, SweepConfig, readout_iq


class T1Config(SweepConfig):
    start: float = Field(0.0, ge=0, description="first wait", json_schema_extra={"unit": "us"})
    step: float = Field(2.0, gt=0, description="wait step", json_schema_extra={"unit": "us"})
    stop: float | None = Field(None, gt=0, description="last wait; instead of step",
                               json_schema_extra={"unit": "us"})
    expts: int = Field(51, ge=3, le=2000)


class T1Program(QubitProgram):
    def _pulses(self, cfg):
        q = cfg["q"]
        self.add_qubit_pulse(cfg, "pi", q["pi_gain"], q["pi_sigma"])

    def _sequence(self, cfg):
        self.pulse(ch=cfg["q"]["qubit_ch"], name="pi", t=0)
        self.delay_auto(cfg["wait"], tag="wait")


class T1Experiment(SingleQubitExperiment):
    config_model = T1Config
    calibrates = (CalibrationUpdate("device.qubit.T1[{qubit}]", result="T1", error="T1_err",
                                    bounds=(0.1, 100_000.0), ndigits=3, max_rel_error=0.2),)

    def acquire(self):
        c = self.cfg
        xpts = c.points()

        def model(truth):
            return readout_iq(np.exp(-xpts / truth["T1"]), truth)
        return self.run_sweep(T1Program, xpts, model,
                              seq_us=xpts + 4 * self.qubit()["pi_sigma"],
                              wait=QickSweep1D("sweep", c.start, xpts[-1]))

    def analyze(self, data):
        y = signal_axis(data["avgi"] + 1j * data["avgq"])
        fit = fit_exp(data["xpts"], y if y[0] > y[-1] else -y)
        return {"T1": fit["tau"], "T1_err": fit["tau_err"],
                "fit_params": np.array([fit["amp"], fit["tau"], fit["offset"]])}
