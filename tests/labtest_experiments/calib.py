"""Calibrations with fits the test decides (issue #13): the fitted value and its error come
from the expt config, so bounds, error limits and merges are tested deterministically;
``gate`` (a directory) lets a test act while the job runs: the job writes ``started`` there
and waits (bounded) for ``go``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from experiments.base import CalibrationUpdate, Experiment


class FakeFitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float = 30.0
    err: float = 0.1
    fail: bool = False
    gate: str | None = None
    qubits: list[int] = Field(default_factory=lambda: [0])


class _Fake(Experiment):
    config_model = FakeFitConfig

    def acquire(self):
        if self.cfg.fail:
            raise RuntimeError("the qubit is gone")
        if self.cfg.gate:
            gate = Path(self.cfg.gate)
            (gate / "started").write_text(self.ctx.job_id)
            end = time.monotonic() + 30
            while not (gate / "go").exists() and time.monotonic() < end:
                self.ctx.check_stop()
                time.sleep(0.01)
        return {"xpts": np.arange(3.0), "avgi": np.zeros(3)}

    def analyze(self, data):
        return {"T1": self.cfg.value, "T1_err": self.cfg.err}


class FakeT1Calibration(_Fake):
    calibrates = (CalibrationUpdate("device.qubit.T1[{qubit}]", result="T1", error="T1_err",
                                    bounds=(1.0, 1000.0), ndigits=3, max_rel_error=0.2),)


class StringKeyCalibration(_Fake):
    """Declares an update of a key that holds text (aliases.soc): refused at submit."""
    calibrates = (CalibrationUpdate("aliases.soc", result="T1", error="T1_err",
                                    bounds=(1.0, 1000.0)),)


class MissingKeyCalibration(_Fake):
    calibrates = (CalibrationUpdate("device.qubit.T3[{qubit}]", result="T1", error="T1_err",
                                    bounds=(1.0, 1000.0)),)


class NeedsFreshT1(_Fake):
    """A measurement that needs a fresh T1 (the experiment declares it)."""
    needs_fresh = ("device.qubit.T1[{qubit}]",)
