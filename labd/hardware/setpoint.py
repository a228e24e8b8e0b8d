"""The pre-job instrument setpoint (the predecessor ramped a coupler current before every
job). The target comes from the versioned hardware config; a target beyond the safety limit
refuses the job before anything moves, and the value is ramped in bounded steps."""
from __future__ import annotations

import time
from typing import Any, Protocol

from ..settings import SetpointSettings


class SetpointDriver(Protocol):
    def read(self) -> float: ...
    def write(self, value: float) -> None: ...


class MockSource:
    """A current source that remembers what it was set to (and every step, for tests)."""
    def __init__(self) -> None:
        self.value = 0.0
        self.history: list[float] = []

    def read(self) -> float:
        return self.value

    def write(self, value: float) -> None:
        self.value = value
        self.history.append(value)


class SetpointError(ValueError):
    pass


class Setpoint:
    def __init__(self, cfg: SetpointSettings, driver: SetpointDriver | None = None) -> None:
        self.cfg = cfg
        self.driver = driver or MockSource()

    def target(self, hardware_config: dict[str, Any]) -> float | None:
        value = hardware_config.get("hw", {}).get(self.cfg.config_key)
        if value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SetpointError(f"hw.{self.cfg.config_key} = {value!r} is not a number") from None

    def apply(self, hardware_config: dict[str, Any], ctx: Any) -> dict[str, Any] | None:
        """Ramp to the configured target; returns what to record in the data file."""
        if not self.cfg.enabled:
            return None
        target = self.target(hardware_config)
        if target is None:
            return None
        if abs(target) > self.cfg.limit:
            raise SetpointError(
                f"{self.cfg.name} target {target} {self.cfg.unit} exceeds the safety limit "
                f"{self.cfg.limit} {self.cfg.unit} (hw.{self.cfg.config_key})")
        start = self.driver.read()
        value = start
        while abs(target - value) > 1e-12:
            ctx.check_stop()
            step = max(-self.cfg.ramp_step, min(self.cfg.ramp_step, target - value))
            value = value + step
            self.driver.write(value)
            if self.cfg.ramp_delay_s:
                time.sleep(self.cfg.ramp_delay_s)
        return {"name": self.cfg.name, "unit": self.cfg.unit, "start": start,
                "target": target, "final": self.driver.read(), "limit": self.cfg.limit}
