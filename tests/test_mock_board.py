"""The mock board takes a real board's time (scaled by mock_speed), moves progress bars on
the way and still stops promptly when cancelled."""
from __future__ import annotations

import time


from labd.settings import Settings
from test_experiments import SQ, Ctx, _cls

RABI = {"start": 0, "step": 100, "expts": 50, "reps": 1000, "rounds": 1, "qubits": [0],
        "sigma_test": 0.035, "pulse_type": "gauss"}


def _timed(cfg: dict, speed: float) -> tuple[float, Ctx]:
    cls = _cls("amplitude_rabi.AmplitudeRabiExperiment")
    ctx = Ctx(seed=1)
    ctx.board.speed = speed
    t0 = time.monotonic()
    cls(ctx, cls.config_model.model_validate(cfg)).acquire()
    return time.monotonic() - t0, ctx


def test_wall_time_scales_like_the_real_board():
    cfg = {**RABI, "reps": 100, "expts": 20, "rounds": 3}
    shot_us = 250 + 4 * 0.035 + 0.05 + 1.0   # relax delay + pulse + gap + readout
    expected = 100 * 20 * 3 * shot_us * 1e-6  # reps x points x rounds x shot
    took, ctx = _timed(cfg, speed=1.0)
    assert expected * 0.98 <= took <= expected + 0.5
    fast, _ = _timed(cfg, speed=0.0)
    assert fast < expected / 3


def test_default_speed_runs_the_readme_rabi_in_a_few_seconds_with_a_moving_bar():
    took, ctx = _timed(RABI, speed=Settings().mock_speed)
    assert 0.5 < took < 5.0
    fractions = [done / total for done, total in ctx.progress_calls]
    assert len({round(f, 2) for f in fractions}) >= 10   # not just 0 -> 1 at the end
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancel_stops_a_long_mock_acquisition_promptly(make_daemon):
    from labd_client import Client
    d = make_daemon(mock_speed=1.0)
    with Client(d.socket) as c:
        job_id = c.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi",
                          {**RABI, "reps": 100_000})   # ~20 min per round at speed 1
        deadline = time.monotonic() + 30
        while c.get(job_id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        c.cancel(job_id)
        job = c.wait(job_id, timeout=10)
        assert job.status == "cancelled"
        assert time.monotonic() - t0 < 2.0
