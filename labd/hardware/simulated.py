"""The mock board: the program is compiled against a real QickConfig (qick's validators run),
only the board I/O is simulated. Data come from the experiment's physics model evaluated on
the simulator's "true" device parameters, plus Gaussian noise that shrinks as 1/sqrt(reps).
Each round takes the wall time a real board would (reps x points x shot length) times
``speed``, so progress bars and ETAs mean something; ``speed=0`` is instant (tests).

The truth matches the shipped ``hardware_config.yml`` (f_ge, pi gain and sigma, readout
frequency) and puts a fit-able signal inside the predecessor README's own sweeps."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from qick import QickConfig

# The simulated device: what a measurement on this fake chip should find.
DEFAULT_TRUTH: dict[str, float] = {
    "f_ge": 4500.0,          # MHz
    "pi_gain": 1800.0,       # DAC units: gain of a gaussian pi pulse of sigma pi_sigma
    "pi_sigma": 0.035,       # us
    "T1": 20.0,              # us (README sweep: 0..49.5 us)
    "T2R": 5.0,              # us (README sweep: 0..9.9 us)
    "f_res": 7050.0,         # MHz (README sweep: 7000..7100 MHz)
    "kappa": 5.0,            # MHz, resonator linewidth (FWHM)
    "signal": 1.0,           # IQ contrast between |g> and |e>
    "noise": 0.5,            # single-shot noise (same units): README sweeps fit within ~5%
}


class SimulatedBoard:
    def __init__(self, soccfg: dict, *, speed: float = 0.0,
                 truth: dict[str, float] | None = None, seed: int | None = None) -> None:
        self.soccfg = QickConfig(soccfg)
        self.speed = speed
        self.truth = {**DEFAULT_TRUTH, **(truth or {})}
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def describe(self) -> dict[str, Any]:
        return {"kind": "simulated", "board": self.soccfg["board"], "truth": self.truth,
                "speed": self.speed}

    def acquire(self, prog: Any, *, rounds: int, ctx: Any,
                model: Callable[[dict[str, float]], np.ndarray],
                shot_us: float = 0.0,
                round_index: tuple[int, int] | None = None) -> np.ndarray:
        """``shot_us``: one shot's length (sequence + readout + relax delay), as on a real
        board; a round is reps x points shots. ``round_index``: (the job's acquire call,
        round) of a single round run by labd's safe points; with a ``seed``, that round's
        noise is drawn from its own generator seeded by (seed, call, round), so a run
        interrupted between rounds and resumed gives the same data as one that was not."""
        if not getattr(prog, "_labd_sim_compiled", False):
            prog.compile()  # the full compile, as for a real board: catches what qick refuses
            if round_index is not None:   # the rounds after it run the same program
                prog._labd_sim_compiled = True
        reps = int(getattr(prog, "reps", 1) or 1)
        signal = np.asarray(model(self.truth), dtype=complex)
        sigma = self.truth["noise"] / np.sqrt(reps)
        round_time = self.speed * reps * signal.size * shot_us * 1e-6
        total = np.zeros_like(signal)
        for r in range(rounds):
            ctx.check_stop()
            if round_time:
                self._wait(round_time, ctx, r, rounds)
            rng = self._rng if round_index is None or self.seed is None else \
                np.random.default_rng((self.seed, round_index[0], round_index[1] + r))
            total += signal + sigma * (rng.standard_normal(signal.shape)
                                       + 1j * rng.standard_normal(signal.shape))
            ctx.progress(r + 1, rounds)
        return total / rounds

    @staticmethod
    def _wait(seconds: float, ctx: Any, done: int, rounds: int) -> None:
        """Take a round's time like a running board: checks the stop flag every 20 ms (a
        cancel is prompt) and reports progress within the round (bars move)."""
        start = time.monotonic()
        while (left := seconds - (time.monotonic() - start)) > 0:
            ctx.check_stop()
            ctx.progress(done + 1 - left / seconds, rounds)
            time.sleep(min(left, 0.02))
