"""A job's data vs its sweep, with the fit curve overlaid, as an inline SVG drawn on the
server from the HDF5 file (no JS, no CDN). Colours come from CSS classes, so the plot
follows the page's light or dark theme. The fit curve is the experiment's own model
(experiments.fitting) evaluated at the ``fit_params`` its analyze() stored, on the same
signal its analyze() fitted."""
from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

W, H = 720, 380
ML, MR, MT, MB = 70, 16, 16, 52          # margins: room for tick labels


def _signal(d: dict[str, np.ndarray]) -> np.ndarray:
    from experiments.fitting import signal_axis
    return signal_axis(d["avgi"] + 1j * d["avgq"])


def _t1_signal(d: dict[str, np.ndarray]) -> np.ndarray:
    y = _signal(d)
    return y if y[0] > y[-1] else -y     # as T1Experiment.analyze fits it


def _models() -> dict[str, tuple[Callable, Callable, str]]:
    """experiment class -> (signal it fits, model f(x, *fit_params), y label)."""
    from experiments import fitting as f
    iq = "signal (IQ, main axis)"
    return {
        "T1Experiment": (_t1_signal, f.exp_decay, iq),
        "AmplitudeRabiExperiment": (_signal, f.rabi, iq),
        "T2RamseyExperiment": (_signal, f.decay_cos, iq),
        "ResonatorSpectroscopyExperiment": (lambda d: d["amps"] ** 2, f.lorentzian,
                                            "|S21|² (a.u.)"),
    }


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, units = {}, {}
    with h5py.File(path, "r") as fh:
        for k in fh.keys():
            ds = fh[k]
            if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.size <= 1_000_000 and \
                    ds.dtype.kind in "fiuc":
                arrays[k] = ds[()]
                unit = ds.attrs.get("unit")
                if unit is not None:
                    units[k] = unit.decode() if isinstance(unit, bytes) else str(unit)
    return arrays, units


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"


def render_job_plot(path: Path | None, experiment_class: str,
                    results: dict[str, Any]) -> str | None:
    """SVG markup (safe to embed: every text is escaped) or None if there is nothing to
    draw. Blocking (reads the file): call it off the event loop."""
    if path is None or not path.exists():
        return None
    try:
        d, units = _read(path)
    except OSError:
        return None
    if "xpts" not in d:
        return None
    x = np.real(d["xpts"]).astype(float)
    model = _models().get(experiment_class)
    fit_fn = None
    ylabel = "signal"
    try:
        if model is not None:
            y = np.asarray(model[0](d), dtype=float)
            fit_fn, ylabel = model[1], model[2]
        elif "avgi" in d and "avgq" in d:
            y, ylabel = _signal(d), "signal (IQ, main axis)"
        else:
            key = next(k for k in sorted(d) if k != "xpts" and d[k].shape == x.shape)
            y, ylabel = np.real(d[key]).astype(float), key
    except (KeyError, StopIteration, ValueError):
        return None
    if y.shape != x.shape or not len(x):
        return None
    fit_y = None
    params = results.get("fit_params")
    if params is None:   # arrays among the results are kept in the data file only
        params = d.get("fit_params")
    if fit_fn is not None and params is not None:
        try:
            xs = np.linspace(x.min(), x.max(), 400)
            fit_y = (xs, np.asarray(fit_fn(xs, *[float(p) for p in params]), dtype=float))
        except (TypeError, ValueError):
            fit_y = None
    return _svg(x, y, fit_y, f"xpts ({units['xpts']})" if "xpts" in units else "xpts",
                ylabel, experiment_class, results)


def _svg(x: np.ndarray, y: np.ndarray, fit: tuple[np.ndarray, np.ndarray] | None,
         xlabel: str, ylabel: str, title: str, results: dict[str, Any]) -> str:
    ys = [y[np.isfinite(y)]]
    if fit is not None:
        ys.append(fit[1][np.isfinite(fit[1])])
    yall = np.concatenate(ys) if ys else y
    x0, x1 = float(np.nanmin(x)), float(np.nanmax(x))
    y0, y1 = (float(yall.min()), float(yall.max())) if yall.size else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - ML - MR, H - MT - MB

    def sx(v: float) -> float:
        return ML + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return MT + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" '
           f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}: data and fit">',
           f'<rect class="plot-bg" x="{ML}" y="{MT}" width="{pw}" height="{ph}"/>']
    for t in _nice_ticks(x0, x1):
        px = sx(t)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{MT}" x2="{px:.1f}" '
                   f'y2="{MT + ph}"/><text class="tick" x="{px:.1f}" y="{MT + ph + 16}" '
                   f'text-anchor="middle">{escape(_fmt(t))}</text>')
    for t in _nice_ticks(y0, y1):
        py = sy(t)
        out.append(f'<line class="grid" x1="{ML}" y1="{py:.1f}" x2="{ML + pw}" '
                   f'y2="{py:.1f}"/><text class="tick" x="{ML - 6}" y="{py + 4:.1f}" '
                   f'text-anchor="end">{escape(_fmt(t))}</text>')
    out.append(f'<rect class="frame" x="{ML}" y="{MT}" width="{pw}" height="{ph}"/>')
    pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y) if math.isfinite(b))
    out.append(f'<polyline class="data-line" points="{pts}"/>')
    out.extend(f'<circle class="data" cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.6"/>'
               for a, b in zip(x, y) if math.isfinite(b))
    if fit is not None:
        fpts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(*fit)
                        if math.isfinite(b) and y0 <= b <= y1)
        out.append(f'<polyline class="fit" points="{fpts}"/>')
    out.append(f'<text class="axis-label" x="{ML + pw / 2}" y="{H - 10}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text class="axis-label" transform="translate(16,{MT + ph / 2}) '
               f'rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    lx = ML + pw - 150
    out.append(f'<g class="legend"><circle class="data" cx="{lx}" cy="{MT + 14}" r="3"/>'
               f'<text class="tick" x="{lx + 10}" y="{MT + 18}">data</text>')
    if fit is not None:
        out.append(f'<line class="fit" x1="{lx + 60}" y1="{MT + 14}" x2="{lx + 84}" '
                   f'y2="{MT + 14}"/><text class="tick" x="{lx + 90}" y="{MT + 18}">'
                   f'fit</text>')
    out.append("</g></svg>")
    return "".join(out)
