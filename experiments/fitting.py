"""Curve fits used by the experiments' analyze(): each returns named parameters and their
standard errors, so results land in the data file with uncertainties."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import curve_fit, leastsq

_STEP = np.sqrt(np.finfo(float).eps)


def _lm(f: Callable, x: np.ndarray, y: np.ndarray, p0: list[float],
        maxfev: int) -> tuple[np.ndarray, np.ndarray] | None:
    """curve_fit's unbounded Levenberg-Marquardt (MINPACK, in C), without its warnings:
    (popt, pcov), or None if it did not converge or gave no covariance."""
    if len(y) <= len(p0):
        return None
    # an unbounded step may overflow (say, a negative decay time): no warning in the job's
    # log for it, the result is checked against the bounds below
    def residuals(p: np.ndarray) -> np.ndarray:
        return f(x, *p) - y

    def jacobian(p: np.ndarray) -> np.ndarray:
        """Forward differences with scipy's step, sqrt(eps) * max(1, |p|). MINPACK's own
        step, sqrt(eps) * |p|, vanishes for a parameter that starts at 0 (a Rabi's offset
        on a centred signal): its column is noise, no covariance comes out, and every
        start went on to the bounded fit, 20 times slower."""
        r0 = residuals(p)
        jac = np.empty((len(r0), len(p)))
        for j in range(len(p)):
            q = np.array(p, dtype=float)
            q[j] += _STEP * max(1.0, abs(q[j]))
            jac[:, j] = (residuals(q) - r0) / (q[j] - p[j])
        return jac

    with np.errstate(over="ignore", invalid="ignore"):
        popt, cov, info, _, ier = leastsq(residuals, p0, Dfun=jacobian, full_output=True,
                                          maxfev=maxfev)
    if ier not in (1, 2, 3, 4) or cov is None or np.isnan(cov).any():
        return None
    return popt, cov * (np.sum(info["fvec"] ** 2) / (len(y) - len(p0)))


def _fit(f: Callable, x: np.ndarray, y: np.ndarray, p0: list[float], names: list[str],
         bounds=(-np.inf, np.inf), maxfev: int = 20000) -> dict[str, float]:
    """Levenberg-Marquardt first (a tenth of the time of the bounded trust-region fit,
    which runs in Python and holds the GIL the board thread needs): a minimum it finds
    within the bounds is the bounded problem's minimum too. A fit that fails, gives no
    error estimate or leaves the bounds is done again, bounded."""
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=float), len(p0)) for b in bounds)
    fit = _lm(f, x, y, p0, maxfev)
    if fit is not None and np.all(fit[0] >= lo) and np.all(fit[0] <= hi):
        popt, pcov = fit
    else:
        popt, pcov = curve_fit(f, x, y, p0=p0, bounds=bounds, maxfev=maxfev)
    err = np.sqrt(np.clip(np.diag(pcov), 0, None))
    out = {n: float(v) for n, v in zip(names, popt)}
    out.update({f"{n}_err": float(e) for n, e in zip(names, err)})
    return out


def _best_fit(f: Callable, x: np.ndarray, y: np.ndarray, starts: list[list[float]],
              names: list[str], bounds=(-np.inf, np.inf)) -> dict[str, float]:
    """The lowest-residual fit over several starting points: oscillating models have
    local minima that a single start falls into now and then. A start that has not
    converged after 2000 evaluations is in the wrong valley: give up on it early."""
    best = None
    for p0 in starts:
        try:
            r = _fit(f, x, y, p0, names, bounds, maxfev=2000)
        except RuntimeError:
            continue
        res = np.sum((f(x, *(r[n] for n in names)) - y) ** 2)
        if best is None or res < best[0]:
            best = (res, r)
    if best is None:
        raise RuntimeError(f"{f.__name__} fit did not converge")
    return best[1]


def signal_axis(iq: np.ndarray) -> np.ndarray:
    """Project complex IQ onto the axis of largest variance (the |g>-|e> axis)."""
    z = iq - iq.mean()
    angle = 0.5 * np.angle(np.sum(z ** 2))
    return (z * np.exp(-1j * angle)).real


def rabi(x, amp, pi_gain, offset):
    return amp * np.cos(np.pi * x / pi_gain) + offset


def fit_rabi(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    spectrum = np.abs(np.fft.rfft(y - y.mean()))
    freqs = np.fft.rfftfreq(len(x), x[1] - x[0])
    f0 = freqs[1 + np.argmax(spectrum[1:])] if len(freqs) > 1 else 1.0 / (x[-1] - x[0])
    guesses = [1 / (2 * f0)] + [x[-1] * k for k in (0.25, 0.5, 1.0)]
    return _best_fit(rabi, x, y, [[sign * np.ptp(y) / 2, g, y.mean()] for g in guesses
                                  for sign in (1, -1)],
                     ["amp", "pi_gain", "offset"], ([-np.inf, 1e-6, -np.inf], np.inf))


def exp_decay(x, amp, tau, offset):
    return amp * np.exp(-x / tau) + offset


def fit_exp(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p0 = [y[0] - y[-1], (x[-1] - x[0]) / 3 or 1.0, y[-1]]
    return _fit(exp_decay, x, y, p0, ["amp", "tau", "offset"],
                ([-np.inf, 1e-9, -np.inf], np.inf))


def decay_cos(x, amp, freq, phase, tau, offset):
    return amp * np.exp(-x / tau) * np.cos(2 * np.pi * freq * x + phase) + offset


def fit_decaying_cos(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    spectrum = np.fft.rfft(y - y.mean())
    freqs = np.fft.rfftfreq(len(x), x[1] - x[0])
    k = 1 + np.argmax(np.abs(spectrum[1:]))
    # Start from the phase of the strongest Fourier component, plus two neighbours: the IQ
    # axis has no preferred sign, and a single start at phase 0 failed ~2% of Ramseys.
    phase = np.angle(spectrum[k] * np.exp(-2j * np.pi * freqs[k] * x[0]))
    return _best_fit(decay_cos, x, y, [[np.ptp(y) / 2, freqs[k], p, (x[-1] - x[0]) / 2,
                                        y.mean()]
                                       for p in (phase, phase + np.pi / 2, phase - np.pi / 2)],
                     ["amp", "freq", "phase", "tau", "offset"],
                     ([0, 0, -2 * np.pi, 1e-9, -np.inf],  # freq up to Nyquist: above it
                      [np.inf, freqs[-1], 2 * np.pi, np.inf, np.inf]))  # are only aliases


def lorentzian(x, amp, f0, fwhm, offset):
    return offset - amp * (fwhm / 2) ** 2 / ((x - f0) ** 2 + (fwhm / 2) ** 2)


def fit_lorentzian_dip(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p0 = [y.max() - y.min(), x[np.argmin(y)], (x[-1] - x[0]) / 10, y.max()]
    return _fit(lorentzian, x, y, p0, ["amp", "f0", "fwhm", "offset"],
                ([0, x.min(), 1e-6, -np.inf], [np.inf, x.max(), np.inf, np.inf]))
