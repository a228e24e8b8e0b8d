"""What the single-qubit experiments share: channel and pulse parameters from the hardware
config, a tProc v2 program skeleton (drive + readout + one sweep loop), and the simulated
qubit's readout response."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from pydantic import Field, model_validator
from qick.asm_v2 import AveragerProgramV2

from experiments.base import Experiment, ExperimentConfig

FULL_SCALE_DAC = 32766  # the predecessor's gain unit: DAC counts; qick v2 takes a fraction


def dac_to_fraction(gain: float) -> float:
    return gain / FULL_SCALE_DAC


class SweepConfig(ExperimentConfig):
    """A 1-D sweep, written ``start/step/expts`` or (the predecessor's spectroscopy)
    ``start/stop/expts``; given both, step and stop must agree."""
    start: float = 0.0
    step: float = Field(0.01, gt=0)
    stop: float | None = Field(None, description="last point; an alternative to step")
    expts: int = Field(51, ge=2, le=10_000)

    @model_validator(mode="after")
    def _stop_or_step(self) -> "SweepConfig":
        if self.stop is None:
            return self
        if self.stop <= self.start:
            raise ValueError(f"stop ({self.stop:g}) must be above start ({self.start:g})")
        step = (self.stop - self.start) / (self.expts - 1)
        if "step" in self.model_fields_set and not np.isclose(step, self.step, rtol=1e-9):
            raise ValueError(
                f"step {self.step:g} and stop {self.stop:g} disagree: start {self.start:g} + "
                f"step x (expts - 1) = {self.start + self.step * (self.expts - 1):g}; "
                "give only one of step and stop")
        self.step = step
        return self

    def points(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.expts)


class QubitProgram(AveragerProgramV2):
    """Declares the qubit drive, the readout and a loop named "sweep"; subclasses add their
    pulses in ``_pulses`` and play them in ``_sequence`` before ``measure``."""

    def _initialize(self, cfg: dict[str, Any]) -> None:
        q = cfg["q"]
        self.declare_gen(ch=q["qubit_ch"], nqz=q["qubit_nqz"])
        if q["res_ch"] != q["qubit_ch"]:
            self.declare_gen(ch=q["res_ch"], nqz=q["res_nqz"])
        self.declare_readout(ch=q["ro_ch"], length=q["ro_length"])
        self.add_loop("sweep", cfg["expts"])
        ro_freq = cfg.get("ro_freq", q["ro_freq"])
        self.add_readoutconfig(ch=q["ro_ch"], name="ro", freq=ro_freq, gen_ch=q["res_ch"])
        self.add_pulse(ch=q["res_ch"], name="readout", style="const", length=q["ro_length"],
                       freq=ro_freq, phase=0, gain=cfg.get("ro_gain", q["ro_gain"]))
        self._pulses(cfg)

    def _pulses(self, cfg: dict[str, Any]) -> None: ...

    def _sequence(self, cfg: dict[str, Any]) -> None: ...

    def _body(self, cfg: dict[str, Any]) -> None:
        q = cfg["q"]
        self.send_readoutconfig(ch=q["ro_ch"], name="ro", t=0)
        self._sequence(cfg)
        self.delay_auto(0.05)
        self.pulse(ch=q["res_ch"], name="readout", t=0)
        self.trigger(ros=[q["ro_ch"]], pins=[0], t=q["trig_offset"])

    def add_qubit_pulse(self, cfg: dict[str, Any], name: str, gain: Any, sigma: float,
                        pulse_type: str = "gauss", phase: Any = 0.0) -> None:
        q = cfg["q"]
        if pulse_type == "gauss":
            if f"env_{sigma}" not in self._envelopes_declared():
                self.add_gauss(ch=q["qubit_ch"], name=f"env_{sigma}", sigma=sigma,
                               length=4 * sigma, even_length=True)
            self.add_pulse(ch=q["qubit_ch"], name=name, style="arb", envelope=f"env_{sigma}",
                           freq=q["f_ge"], phase=phase, gain=gain)
        else:
            self.add_pulse(ch=q["qubit_ch"], name=name, style="const", length=4 * sigma,
                           freq=q["f_ge"], phase=phase, gain=gain)

    def _envelopes_declared(self) -> set[str]:
        return {name for env in self.envelopes for name in env["envs"]}


class _Built(Exception):
    """Ends a dry run of ``acquire`` in ``prepare`` at its first board call."""


# Built programs by everything that determines them: the program class, the experiment's
# class and config, the config versions' hashes and the board's QickConfig. A program is
# only read by an acquisition, so a drain of identical jobs compiles once.
_PROGRAMS: OrderedDict[tuple, Any] = OrderedDict()
_PROGRAMS_MAX = 64
_PROGRAMS_LOCK = threading.Lock()


class SingleQubitExperiment(Experiment):
    config_model = SweepConfig
    requires_configs = ("hardware_config",)
    safe_points = True   # acquisitions only through run_sweep -> board.acquire (#16)
    _dry_run = False
    _sweeps = 0          # run_sweep calls so far in this run

    def prepare(self) -> None:
        """Run ``acquire`` up to its first ``run_sweep``: everything before it computes the
        sweep, and that sweep's program is built and compiled here, off the board. If the
        dry run fails (say, a subclass touches the board first), nothing is prepared and
        ``acquire`` on the board does it all, raising the same error there."""
        self._dry_run = True
        try:
            self.acquire()
        except _Built:
            pass
        except Exception:  # acquire on the board meets it again, and reports it there
            pass
        finally:
            self._dry_run = False
            self._sweeps = 0

    def program(self, program: type["QubitProgram"], cfg: dict[str, Any]) -> Any:
        """The compiled program for this run's next sweep (cached, see ``_PROGRAMS``)."""
        soccfg = self.ctx.board.soccfg
        config_key = getattr(self.ctx, "config_key", ())   # labd's contexts have one
        key = (program, type(self), self.cfg.model_dump_json(), config_key, self._sweeps,
               soccfg)
        self._sweeps += 1
        with _PROGRAMS_LOCK:
            prog = _PROGRAMS.get(key)
            if prog is not None:
                _PROGRAMS.move_to_end(key)
                return prog
        prog = program(soccfg, reps=self.cfg.reps, final_delay=self.cfg.relax_delay, cfg=cfg)
        if config_key:  # known inputs only
            with _PROGRAMS_LOCK:
                _PROGRAMS[key] = prog
                while len(_PROGRAMS) > _PROGRAMS_MAX:
                    _PROGRAMS.popitem(last=False)
        return prog

    def qubit(self) -> dict[str, Any]:
        """Channels and calibrated parameters of the first selected qubit."""
        hw = self.ctx.hardware_config.get("hw", {}).get("soc", {})
        dacs, adcs = hw.get("dacs", {}), hw.get("adcs", {})
        q = self.cfg.qubits[0]

        def ch(table: dict, role: str, key: str = "ch", default: int = 0) -> int:
            v = table.get(role, {}).get(key, default)
            return int(v[q] if isinstance(v, list) else v)
        return {
            "qubit_ch": ch(dacs, "qubit"), "qubit_nqz": ch(dacs, "qubit", "nyquist", 1),
            "res_ch": ch(dacs, "readout"), "res_nqz": ch(dacs, "readout", "nyquist", 2),
            "ro_ch": ch(adcs, "readout"),
            "f_ge": float(self.device("qubit", "f_ge")),
            # gains in the hardware config are DAC units (as the predecessor's); qick takes
            # a fraction of full scale
            "pi_gain": dac_to_fraction(float(self.device("qubit", "pulses", default={})
                                             .get("pi_ge", {}).get("gain", [16383])[q])),
            "pi_sigma": float(self.device("qubit", "pulses", default={}).get("pi_ge", {})
                              .get("sigma", [0.05])[q]),
            "ro_freq": float(self.device("readout", "frequency")),
            "ro_gain": dac_to_fraction(float(self.device("readout", "gain"))),
            "ro_length": float(self.device("readout", "readout_length")),
            "trig_offset": 0.0,
        }

    def data_units(self) -> dict[str, str]:
        unit = self.expt_units().get("start")
        return {"xpts": unit} if unit else {}

    def run_sweep(self, program: type[QubitProgram], xpts: np.ndarray,
                  model: Callable[[dict[str, float]], np.ndarray], seq_us: Any = 0.0,
                  **params: Any) -> dict[str, np.ndarray]:
        """Compile ``program`` against the board's QickConfig and acquire it. ``seq_us``
        (per point or one value) is how long the pulse sequence takes before readout: with
        the relax delay it sets how long a shot takes on the mock board, as on a real one."""
        cfg = {"q": self.qubit(), "expts": self.cfg.expts, **params}
        prog = self.program(program, cfg)
        if self._dry_run:
            raise _Built
        self.ctx.log.info("%s on qubit %s: %d points x %d reps x %d rounds",
                          type(self).__name__, self.cfg.qubits[0], self.cfg.expts,
                          self.cfg.reps, self.cfg.rounds)
        q = cfg["q"]
        shot_us = float(np.mean(seq_us)) + 0.05 + q["ro_length"] + self.cfg.relax_delay
        iq = self.ctx.board.acquire(prog, rounds=self.cfg.rounds, ctx=self.ctx, model=model,
                                    shot_us=shot_us)
        return self.iq_data(xpts, iq)


def readout_iq(p_excited: np.ndarray, truth: dict[str, float]) -> np.ndarray:
    """Simulated demodulated IQ for an excited-state population."""
    ground, excited = -0.5 + 0.2j, 0.5 - 0.1j
    return truth["signal"] * (ground + (excited - ground) * np.asarray(p_excited))
