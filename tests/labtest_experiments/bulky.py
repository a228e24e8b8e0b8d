"""A job whose expt config is as big as a client may send: replies that echo it are big."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from experiments.base import Experiment


class BulkyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blob: str = ""


class Bulky(Experiment):
    config_model = BulkyConfig

    def acquire(self):
        return {"xpts": [0.0], "avgi": [0.0], "avgq": [0.0]}
