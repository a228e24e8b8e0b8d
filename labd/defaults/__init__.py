"""Files shipped inside the package (so a wheel installed anywhere has them): the mock
board's QickConfig (``soccfg_zcu216.json``) and the example configs that become main on
first start. ``configs/`` in the repository is a link to this directory."""
from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """A shipped file by name, e.g. ``path("hardware_config.yml")``."""
    return DIR / name
