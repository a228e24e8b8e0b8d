"""Issue #14: the fits try Levenberg-Marquardt (in C) before the bounded trust-region fit
(in Python, ten times slower, holding the GIL the board thread needs). They must give what
the bounded fit gives: the same parameters and errors, and the bounds kept."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from experiments import fitting as F

RNG = np.random.default_rng(7)
X = np.linspace(0, 100, 51)
X_GAIN = np.linspace(0, 1, 51)
X_DAC = np.arange(0, 5000, 100.0)


def noisy(y: np.ndarray) -> np.ndarray:
    return y + RNG.normal(0, 0.03, y.size)


CASES = [
    ("exp_decay", F.fit_exp, F.exp_decay, X, noisy(3 * np.exp(-X / 20) + 0.5)),
    ("rabi", F.fit_rabi, F.rabi, X_GAIN, noisy(2 * np.cos(np.pi * X_GAIN / 0.37) + 0.1)),
    # as the Rabi experiment fits it: the IQ signal projected and centred (signal_axis)
    ("rabi_centred", F.fit_rabi, F.rabi, X_DAC,
     F.signal_axis(noisy(0.5 * np.cos(np.pi * X_DAC / 1800)) + 0.2j)),
    ("decay_cos", F.fit_decaying_cos, F.decay_cos, X,
     noisy(np.exp(-X / 40) * np.cos(2 * np.pi * 0.05 * X + 0.3))),
    ("lorentzian", F.fit_lorentzian_dip, F.lorentzian, X,
     noisy(-1 / (1 + ((X - 45) / 4) ** 2) + 1)),
]


@pytest.mark.parametrize("name,fit,model,x,y", CASES, ids=[c[0] for c in CASES])
def test_each_fit_matches_the_bounded_fit_from_the_same_start(name, fit, model, x, y,
                                                              monkeypatch):
    """The result equals what the bounded fit alone finds (run from the same starts)."""
    fast = fit(x, y)
    monkeypatch.setattr(F, "_lm", lambda *a, **k: None)   # the bounded fit only
    reference = fit(x, y)
    assert fast.keys() == reference.keys()
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
    popt = [fast[k] for k in fast if not k.endswith("_err")]
    assert np.sum((model(x, *popt) - y) ** 2) < 0.1 * np.sum((y - y.mean()) ** 2)


def test_a_minimum_outside_the_bounds_is_fitted_again_bounded():
    """A falling line fitted with slope >= 0: the unbounded minimum (slope -1) is outside
    the bounds, so the result is the bounded fit's, as it always was."""
    def line(x, slope, offset):
        return slope * x + offset
    y = noisy(-X + 5)
    assert F._lm(line, X, y, [1.0, 0.0], 20000)[0][0] == pytest.approx(-1, rel=0.01)
    fit = F._fit(line, X, y, [1.0, 0.0], ["slope", "offset"], ([0, -np.inf], np.inf))
    popt, _ = curve_fit(line, X, y, p0=[1.0, 0.0], bounds=([0, -np.inf], np.inf))
    assert fit["slope"] >= 0 and fit["slope"] == pytest.approx(popt[0], abs=1e-9)
    assert fit["offset"] == pytest.approx(popt[1], rel=1e-6)


def test_a_parameter_starting_at_zero_is_fitted_without_the_bounded_fit(monkeypatch):
    """A centred Rabi signal starts its offset at 0: MINPACK's own difference step is
    then 0 for it, no covariance came out, and all 8 starts went to the bounded fit
    (45 ms instead of 3 on a mock Rabi, holding the GIL the board thread needs)."""
    bounded = []
    monkeypatch.setattr(F, "curve_fit", lambda *a, **k: bounded.append(a) or curve_fit(
        *a, **k))
    y = F.signal_axis(noisy(0.5 * np.cos(np.pi * X_DAC / 1800)) + 0.2j)
    assert abs(y.mean()) < 1e-12
    fit = F.fit_rabi(X_DAC, y)
    assert bounded == [] and fit["pi_gain"] == pytest.approx(1800, rel=0.02)
