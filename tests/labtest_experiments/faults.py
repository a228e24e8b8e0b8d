"""One experiment per way a job can go wrong."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from experiments.base import Experiment


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(0.0, ge=0)
    lines: int = Field(0, ge=0)
    size_mb: int = Field(0, ge=0)


class RaiseInAcquire(Experiment):
    config_model = FaultConfig

    def acquire(self):
        print("about to fail")
        raise ValueError("the sample holder is on fire")


class FivePoints(Experiment):
    """Five points at once; the experiments built on it go wrong after their acquisition."""
    config_model = FaultConfig

    def acquire(self):
        return {"xpts": np.arange(5.0), "avgi": np.ones(5)}


class RaiseInAnalyze(FivePoints):
    def analyze(self, data):
        raise RuntimeError("fit did not converge")


class IgnoresStop(Experiment):
    """A pure-Python busy loop that never checks the stop flag."""
    config_model = FaultConfig

    def acquire(self):
        print("busy", flush=True)
        end = time.monotonic() + self.cfg.seconds
        x = 0
        while time.monotonic() < end:
            x += 1
        return {"xpts": [float(x)]}


class LogsIgnoringStop(Experiment):
    """Logs and prints in a tight loop, never checks its stop flag and swallows every
    Exception: only labd's interrupt can end it (an unrestricted async exception once
    landed inside the logging lock here and froze the daemon)."""
    config_model = FaultConfig

    def acquire(self):
        log = logging.getLogger("labtest.chatty")
        end = time.monotonic() + self.cfg.seconds
        i = 0
        while time.monotonic() < end:
            try:
                log.info("step %d", i)
                print("tick", i)
            except Exception:
                pass
            i += 1
        return {"xpts": [float(i)]}


class CyclicHog(Experiment):
    """Holds ``size_mb`` of data in a reference cycle until it is stopped: garbage only the
    cyclic GC can free (a gc.freeze() while it ran used to keep it forever)."""
    config_model = FaultConfig

    def acquire(self):
        hog = {"data": np.ones(self.cfg.size_mb * 1024 * 1024 // 8)}
        hog["self"] = hog
        while True:
            self.ctx.check_stop()
            time.sleep(0.01)


class FlagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag: str
    seconds: float = Field(30.0, ge=0)


class SlowAnalysis(Experiment):
    """Acquires at once; its fit waits until the test creates ``flag`` (or ``seconds``)."""
    config_model = FlagConfig

    def acquire(self):
        return {"xpts": np.arange(4.0), "avgi": np.arange(4.0) * 2}

    def analyze(self, data):
        end = time.monotonic() + self.cfg.seconds
        while not os.path.exists(self.cfg.flag) and time.monotonic() < end:
            time.sleep(0.005)
        print("fitted", flush=True)
        return {"slope": 2.0}


class StuckInC(Experiment):
    """Blocks in a C call that neither the stop flag nor an async exception can break."""
    config_model = FaultConfig

    def acquire(self):
        time.sleep(self.cfg.seconds)
        return {"xpts": [0.0]}


class HugeOutput(Experiment):
    config_model = FaultConfig

    def acquire(self):
        for i in range(self.cfg.lines):
            print(f"line {i} " + "x" * 100)
        return {"xpts": [0.0]}


class NonFinite(Experiment):
    config_model = FaultConfig

    def acquire(self):
        return {"xpts": np.arange(3.0), "avgi": np.array([1.0, np.nan, np.inf])}


class NotArrays(Experiment):
    config_model = FaultConfig

    def acquire(self):
        return {"xpts": object()}


class NotADict(Experiment):
    config_model = FaultConfig

    def acquire(self):
        return [1, 2, 3]


class MemoryHungry(Experiment):
    config_model = FaultConfig

    def acquire(self):
        blocks = [np.ones(1024 * 1024 // 8) for _ in range(self.cfg.size_mb)]
        blocks.append(np.ones((10**7, 10**7)))  # 800 TB: numpy raises MemoryError at once
        return {"xpts": blocks[0]}


class NotAnExperiment:
    pass


class FitThreads(Experiment):
    """Reports the BLAS thread count labd set for its jobs (``fit_threads``)."""
    config_model = FaultConfig

    def acquire(self):
        return {"xpts": [0.0], "threads": [float(os.environ["OPENBLAS_NUM_THREADS"])]}


class RaggedFit(FivePoints):
    """analyze() returns a ragged list (peaks per trace) beside a number."""

    def analyze(self, data):
        return {"peaks": [[1.0, 2.0], [3.0]], "f0": 4.5, "model": "lorentzian"}


class ExitInFit(FivePoints):
    """A fit script that calls sys.exit()."""

    def analyze(self, data):
        raise SystemExit("fit script calls sys.exit")


class UnitNone(FivePoints):
    """A unit known only for some sweeps: None otherwise."""

    def data_units(self):
        return {"xpts": None, "avgi": "a.u."}


class UnitsRaise(FivePoints):
    def expt_units(self):
        raise KeyError("gain_unit")


class AfterJobRaises(FivePoints):
    """Its after_job hook (parking an instrument) fails after a good acquisition."""

    def after_job(self):
        raise RuntimeError("could not park the flux bias")
