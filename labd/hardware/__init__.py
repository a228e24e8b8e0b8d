"""Hardware access for the executor thread: the board (simulated or real over Pyro4) and
the pre-job instrument setpoint."""
from __future__ import annotations

import json
from pathlib import Path

from .. import defaults
from ..settings import Settings

SHIPPED_SOCCFG = defaults.path("soccfg_zcu216.json")


def load_soccfg_dict(path: Path | None) -> dict:
    with open(path or SHIPPED_SOCCFG) as fh:
        return json.load(fh)


def make_board(settings: Settings):
    """The board the settings name; connecting to a real one happens lazily, per job."""
    if settings.hardware == "pyro":
        from .pyro_board import PyroBoard
        return PyroBoard(settings.pyro)
    from .simulated import SimulatedBoard
    return SimulatedBoard(load_soccfg_dict(settings.soccfg_path),
                          speed=settings.mock_speed, seed=settings.mock_seed)
