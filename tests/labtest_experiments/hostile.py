"""Experiments for client-side tests: a class name that also exists in ``experiments``
(bare-name resolution must call it ambiguous) and one whose log line and error message
carry terminal escape sequences (human output must not pass them through)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from experiments.base import Experiment


class HostileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = "\x1b]0;pwned\x07"


class NoOpExperiment(Experiment):
    """Same name as experiments.diagnostics.noop.NoOpExperiment."""

    def acquire(self):
        return {"xpts": [0.0], "avgi": [0.0]}


class EscapeInOutput(Experiment):
    config_model = HostileConfig

    def acquire(self):
        print(f"log line {self.cfg.text} end")
        raise ValueError(f"error {self.cfg.text} end")
