"""The contract between labd and an experiment.

An experiment declares a pydantic ``config_model`` (unknown keys are rejected at submit),
builds a real qick program, acquires through ``ctx.board`` (simulated or real, same code),
and analyzes. labd saves the raw data *before* ``analyze`` runs, so a failing fit never
loses an acquisition."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


def model_units(model: type[BaseModel]) -> dict[str, str]:
    """Unit of each config key that declares one (``Field(..., json_schema_extra={"unit":
    ...})``): the one convention read by the data file and by ``labctl experiments``."""
    out = {}
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("unit"), str):
            out[name] = extra["unit"]
    return out


class Stopped(Exception):
    """Raised by ``ctx.check_stop()`` when the job was cancelled or hit its time limit."""


class ExperimentConfig(BaseModel):
    """Keys shared by all hardware experiments (the predecessor's names)."""
    model_config = ConfigDict(extra="forbid")
    reps: int = Field(1000, ge=1, le=10_000_000)
    rounds: int = Field(1, ge=1, le=100_000)
    qubits: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=16)
    relax_delay: float = Field(250.0, ge=0, le=1e6, description="wait between shots",
                               json_schema_extra={"unit": "us"})


class Board(Protocol):
    """What an experiment may do with the hardware."""
    soccfg: Any

    def acquire(self, prog: Any, *, rounds: int, ctx: "RunContext",
                model: Callable[[dict[str, float]], np.ndarray],
                shot_us: float = 0.0) -> np.ndarray:
        """Run ``prog`` for ``rounds`` rounds; returns complex IQ averaged over reps/rounds,
        one value per sweep point. ``model`` (the physics) and ``shot_us`` (one shot's
        length, for its timing) are used only by a simulated board."""
        ...


class RunContext(Protocol):
    job_id: str
    board: Board
    hardware_config: dict[str, Any]
    log: logging.Logger

    def should_stop(self) -> bool: ...
    def check_stop(self) -> None: ...
    def progress(self, done: float, total: float) -> None: ...


@dataclass(frozen=True)
class CalibrationUpdate:
    """One config key a calibration's fit updates, for a job submitted with ``update_main``
    (labd.calibration applies it). Pure data, so the job record shows what it would do.

    ``key``: a path in the config, ``{qubit}`` standing for the job's first qubit, e.g.
    ``device.qubit.pulses.pi_ge.gain[{qubit}]``. The new value is the fit result
    ``result`` (mode "set") or the old value minus it (mode "subtract": a measured
    detuning corrects a frequency). ``error`` names the fit result holding its standard
    error: above ``max_rel_error`` (error / |new value|) or ``max_abs_error`` the update is
    not applied, nor outside ``bounds`` (the sane range of the new value)."""
    key: str
    result: str
    error: str
    bounds: tuple[float, float]
    mode: Literal["set", "subtract"] = "set"
    kind: Literal["int", "float"] = "float"      # int: rounded (e.g. DAC gains)
    ndigits: int | None = None                  # a float is rounded to this many decimals
    max_rel_error: float | None = 0.1
    max_abs_error: float | None = None
    config_type: str = "hardware_config"

    def resolved(self, qubit: int) -> dict[str, Any]:
        """The declaration for one job, its key path filled in (stored with the job)."""
        d = asdict(self)
        d["key"] = self.key.format(qubit=qubit)
        d["bounds"] = list(self.bounds)
        return d


class Experiment:
    config_model: ClassVar[type[BaseModel]] = ExperimentConfig
    # config types the experiment cannot run without; a job whose type has no main version
    # (and no pin) fails with a sentence saying how to push one, before any hardware
    requires_configs: ClassVar[tuple[str, ...]] = ()
    # calibration (issue #13): the config keys its fit updates when submitted with
    # update_main; and keys it needs fresh (recalibrated first when older than the
    # settings' max age; ``{qubit}`` as in CalibrationUpdate.key)
    calibrates: ClassVar[tuple[CalibrationUpdate, ...]] = ()
    needs_fresh: ClassVar[tuple[str, ...]] = ()
    # preemption (issue #16): True if every acquisition goes through ``ctx.board.acquire``
    # with ``rounds`` and the data depend only on what those calls return (and on the
    # config): labd then runs them round by round, and between rounds the job can yield
    # the board to a more urgent one and resume later from a checkpoint. False: never
    # preempted.
    safe_points: ClassVar[bool] = False

    def __init__(self, ctx: RunContext, cfg: BaseModel) -> None:
        self.ctx = ctx
        self.cfg = cfg

    def prepare(self) -> None:
        """Build and compile the programs. labd runs this while the job before still
        acquires, so the board never waits for a compiler; no hardware calls here (only
        ``ctx.board.soccfg``). ``acquire`` then just runs what was built."""

    # hooks around a job (e.g. park an instrument); both run even when acquire fails, and
    # an after_job that fails after a good acquisition is reported on the job, its data kept
    def before_job(self) -> None: ...
    def after_job(self) -> None: ...

    def acquire(self) -> dict[str, Any]:
        """Returns the raw data: a dict of arrays (``xpts``, ``avgi``, ``avgq``, ...).
        A class that does not override it is a helper, refused at submit."""
        raise NotImplementedError

    def expt_units(self) -> dict[str, str]:
        """Units of the expt keys, recorded in the data file; override where a unit depends
        on another key (e.g. a gain_unit switch)."""
        return model_units(type(self.cfg))

    def data_units(self) -> dict[str, str]:
        """Units of the data keys (``xpts`` above all), recorded on the datasets."""
        return {}

    def analyze(self, data: dict[str, Any]) -> dict[str, Any]:
        """Returns fit results (numbers or arrays); the default has none."""
        return {}

    # helpers for subclasses -------------------------------------------------------
    def device(self, section: str, key: str, qubit: int | None = None, default: Any = None) -> Any:
        """``hardware_config.device.<section>.<key>[qubit]`` (per-qubit lists, as before)."""
        value = self.ctx.hardware_config.get("device", {}).get(section, {}).get(key, default)
        if isinstance(value, list):
            q = self.cfg.qubits[0] if qubit is None else qubit
            if not 0 <= q < len(value):
                raise ValueError(f"device.{section}.{key} has no entry for qubit {q}")
            return value[q]
        return value

    def iq_data(self, xpts: np.ndarray, iq: np.ndarray) -> dict[str, np.ndarray]:
        """The predecessor's data keys for a 1-D sweep."""
        iq = np.asarray(iq, dtype=complex)
        return {"xpts": np.asarray(xpts, dtype=float), "avgi": iq.real, "avgq": iq.imag,
                "amps": np.abs(iq), "phases": np.angle(iq)}
