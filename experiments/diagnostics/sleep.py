"""Waits (cooperatively) for a while and prints progress: for trying out cancel, time
limits, live logs and progress bars without hardware."""
from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from experiments.base import Experiment


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, ge=0, le=7 * 86400)
    steps: int = Field(10, ge=1, le=100_000)
    fail: bool = False     # raise at the end instead of returning data


class SleepExperiment(Experiment):
    config_model = SleepConfig

    def acquire(self):
        n = self.cfg.steps
        for i in range(n):
            end = time.monotonic() + self.cfg.seconds / n
            while (left := end - time.monotonic()) > 0:  # short naps: cancel stays prompt
                self.ctx.check_stop()
                time.sleep(min(left, 0.05))
            print(f"step {i + 1}/{n}")
            self.ctx.progress(i + 1, n)
        if self.cfg.fail:
            raise RuntimeError("failing on request (fail=true)")
        return {"xpts": list(range(n)), "avgi": [float(i) for i in range(n)]}
