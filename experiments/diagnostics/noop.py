"""A job that does nothing but save one tiny dataset: measures labd's own overhead."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from experiments.base import Experiment


class NoOpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float = 0.0


class NoOpExperiment(Experiment):
    config_model = NoOpConfig

    def acquire(self):
        return {"xpts": [0.0], "avgi": [self.cfg.value], "avgq": [0.0]}
