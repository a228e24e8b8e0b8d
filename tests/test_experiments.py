"""The experiments: real qick programs compiled against the ZCU216 QickConfig, simulated
physics, fits that recover the simulated parameters, through the whole daemon."""
from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import yaml

from labd.hardware import SHIPPED_SOCCFG, load_soccfg_dict
from labd.hardware.simulated import DEFAULT_TRUTH, SimulatedBoard
from labd_client import InvalidParams

SQ = "experiments.single_qubit."
HW = yaml.safe_load(open(SHIPPED_SOCCFG.parent / "hardware_config.yml"))


class Ctx:
    job_id = "JOB-TEST"
    log = logging.getLogger("test")

    def __init__(self, seed=0):
        self.board = SimulatedBoard(load_soccfg_dict(None), seed=seed)
        self.hardware_config = HW
        self.progress_calls = []

    def check_stop(self):
        pass

    def should_stop(self):
        return False

    def progress(self, done, total):
        self.progress_calls.append((done, total))


def run(cls, cfg, seed=0):
    exp = cls(Ctx(seed), cls.config_model.model_validate(cfg))
    data = exp.acquire()
    return data, exp.analyze(data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fits_recover_simulated_parameters(seed):
    from experiments.single_qubit.amplitude_rabi import AmplitudeRabiExperiment
    from experiments.single_qubit.resonator_spectroscopy import ResonatorSpectroscopyExperiment
    from experiments.single_qubit.t1 import T1Experiment
    from experiments.single_qubit.t2_ramsey import T2RamseyExperiment
    t = DEFAULT_TRUTH
    _, r = run(T1Experiment, {"reps": 4000}, seed)
    assert r["T1"] == pytest.approx(t["T1"], rel=0.10)
    _, r = run(T2RamseyExperiment, {"reps": 4000}, seed)
    assert r["T2R"] == pytest.approx(t["T2R"], rel=0.10)
    assert r["fringe_freq"] == pytest.approx(0.5, rel=0.05)
    _, r = run(AmplitudeRabiExperiment, {"reps": 4000}, seed)
    assert r["pi_gain"] == pytest.approx(t["pi_gain"], rel=0.05)
    _, r = run(ResonatorSpectroscopyExperiment, {"reps": 4000}, seed)
    assert r["f_res"] == pytest.approx(t["f_res"], abs=0.3)
    assert r["kappa"] == pytest.approx(t["kappa"], rel=0.15)


def test_noise_shrinks_with_reps():
    from experiments.single_qubit.t1 import T1Experiment
    resid = {}
    for reps in (100, 10000):
        data, r = run(T1Experiment, {"reps": reps, "expts": 201}, seed=5)
        iq = data["avgi"] + 1j * data["avgq"]
        resid[reps] = np.std(np.diff(iq.real[100:]))  # after 10 T1: noise only
    assert resid[10000] < resid[100] / 5  # ~1/sqrt(100) = 1/10 expected


def test_ramsey_detects_qubit_detuning():
    from experiments.single_qubit.t2_ramsey import T2RamseyExperiment
    ctx = Ctx(4)
    ctx.board.truth["f_ge"] = 4500.05  # the config's f_ge is 50 kHz too low
    cls = T2RamseyExperiment
    exp = cls(ctx, cls.config_model.model_validate({"reps": 4000}))
    r = exp.analyze(exp.acquire())
    assert min(abs(f - 4500.05) for f in r["f_ge_corrected"]) < 0.01


# The predecessor README's expt configs, verbatim, with the truth each fit must recover.
README_SWEEPS = [
    ("amplitude_rabi.AmplitudeRabiExperiment",
     {"start": 0, "step": 100, "expts": 50, "reps": 1000, "rounds": 1, "qubits": [0],
      "sigma_test": 0.035, "pulse_type": "gauss"}, "pi_gain", 0.03),
    ("amplitude_rabi.AmplitudeRabiExperiment",
     {"start": 0, "step": 100, "expts": 50, "reps": 1000}, "pi_gain", 0.03),
    ("t1.T1Experiment", {"start": 0, "step": 0.5, "expts": 100, "reps": 200}, "T1", 0.2),
    ("t2_ramsey.T2RamseyExperiment", {"start": 0, "step": 0.1, "expts": 100, "reps": 200},
     "T2R", 0.25),
    ("resonator_spectroscopy.ResonatorSpectroscopyExperiment",
     {"start": 7000, "stop": 7100, "expts": 101, "reps": 500}, "f_res", 0.001),
    ("resonator_spectroscopy.ResonatorSpectroscopyExperiment",
     {"start": 7000, "stop": 7100, "expts": 101}, "f_res", 0.001),
    ("t1.T1Experiment", {"start": 0, "step": 0.5, "expts": 100}, "T1", 0.2),
]


def _cls(path):
    import importlib
    module, name = (SQ + path).rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_predecessor_readme_sweeps_fit_the_simulated_device(seed):
    for path, cfg, key, rel in README_SWEEPS:
        data, r = run(_cls(path), cfg, seed)
        assert r[key] == pytest.approx(DEFAULT_TRUTH[key], rel=rel), (path, cfg)
    _, r = run(_cls("t2_ramsey.T2RamseyExperiment"),
               {"start": 0, "step": 0.1, "expts": 100, "reps": 200}, seed)
    assert r["fringe_freq"] == pytest.approx(0.5, rel=0.03)  # the default ramsey_freq
    _, r = run(_cls("resonator_spectroscopy.ResonatorSpectroscopyExperiment"),
               {"start": 7000, "step": 1, "expts": 101, "reps": 500}, seed)
    assert r["kappa"] == pytest.approx(DEFAULT_TRUTH["kappa"], rel=0.15)


def test_shipped_device_config_matches_the_simulated_truth():
    q = HW["device"]["qubit"]
    assert q["f_ge"][0] == DEFAULT_TRUTH["f_ge"]
    assert q["pulses"]["pi_ge"]["gain"][0] == DEFAULT_TRUTH["pi_gain"]
    assert q["pulses"]["pi_ge"]["sigma"][0] == DEFAULT_TRUTH["pi_sigma"]
    assert HW["device"]["readout"]["frequency"][0] == DEFAULT_TRUTH["f_res"]


def test_rabi_gain_units_dac_by_default_fraction_on_request():
    rabi = _cls("amplitude_rabi.AmplitudeRabiExperiment")
    model = rabi.config_model
    assert model.model_fields["step"].json_schema_extra == {"unit": "DAC"}
    data, r = run(rabi, {"start": 0, "step": 0.003, "expts": 50, "reps": 1000,
                         "gain_unit": "fraction"}, seed=3)
    assert r["pi_gain"] == pytest.approx(DEFAULT_TRUTH["pi_gain"] / 32766, rel=0.03)
    assert data["xpts"][-1] == pytest.approx(0.147)
    with pytest.raises(ValueError, match=r"ends at 34300 DAC, above full scale \(32766 DAC\)"):
        model.model_validate({"start": 0, "step": 700, "expts": 50})
    with pytest.raises(ValueError, match="whole numbers.*gain_unit='fraction'"):
        model.model_validate({"start": 0, "step": 0.02, "expts": 50})
    with pytest.raises(ValueError, match="above full scale"):
        model.model_validate({"step": 0.05, "expts": 50, "gain_unit": "fraction"})


def test_sweep_accepts_stop_or_step_and_refuses_them_disagreeing():
    model = _cls("resonator_spectroscopy.ResonatorSpectroscopyExperiment").config_model
    a = model.model_validate({"start": 7000, "stop": 7100, "expts": 101})
    b = model.model_validate({"start": 7000, "step": 1, "expts": 101})
    c = model.model_validate({"start": 7000, "step": 1, "stop": 7100, "expts": 101})
    assert a.points() == pytest.approx(b.points())
    assert c.points() == pytest.approx(b.points())
    assert a.points()[-1] == pytest.approx(7100)
    with pytest.raises(ValueError, match="step 2 and stop 7100 disagree.*only one of"):
        model.model_validate({"start": 7000, "step": 2, "stop": 7100, "expts": 101})
    with pytest.raises(ValueError, match="stop .* must be above start"):
        model.model_validate({"start": 7000, "stop": 6900, "expts": 101})


def test_experiments_end_to_end_with_fits_in_data_file(client):
    cases = {
        "amplitude_rabi.AmplitudeRabiExperiment": (
            {"start": 0, "step": 100, "expts": 50, "reps": 2000, "rounds": 2, "qubits": [0],
             "sigma_test": 0.035, "pulse_type": "gauss"}, "pi_gain", 1800.0),
        "t1.T1Experiment": ({"start": 0, "step": 2, "expts": 51, "reps": 4000}, "T1", 20.0),
        "t2_ramsey.T2RamseyExperiment": ({"reps": 4000}, "T2R", 5.0),
        "resonator_spectroscopy.ResonatorSpectroscopyExperiment": ({}, "f_res", 7050.0),
    }
    for path, (cfg, key, expected) in cases.items():
        module, cls = (SQ + path).rsplit(".", 1)
        job = client.wait(client.submit(cls, module, cfg), timeout=60)
        assert job.status == "completed", (path, job.error_message)
        assert job.error_message is None
        assert job.results[key] == pytest.approx(expected, rel=0.1)
        with h5py.File(job.data_file_path) as f:
            for k in ("xpts", "avgi", "avgq", "amps", "phases", key, "fit_params"):
                assert k in f, (path, k)
            assert f[key][()] == pytest.approx(expected, rel=0.1)
            assert key in json.loads(f.attrs["result_keys"])
            cfg_attr = json.loads(f.attrs["config"])
            assert cfg_attr["expt"]["reps"] == cfg.get("reps", cfg_attr["expt"]["reps"])
            assert cfg_attr["device"]["qubit"]["f_ge"] == [4500.0]
            assert len(f.attrs["module_sha256"]) == 64
            assert json.loads(f.attrs["hardware"])["kind"] == "simulated"
        assert len(job.raw["module_sha256"]) == 64


def test_unknown_and_invalid_keys_rejected_at_submit(client):
    with pytest.raises(InvalidParams, match="sigma_tset: Extra inputs are not permitted"):
        client.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi", {"sigma_tset": 0.1})
    with pytest.raises(InvalidParams, match="pulse_type"):
        client.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi", {"pulse_type": "sinc"})
    with pytest.raises(InvalidParams, match="reps"):
        client.submit("T1Experiment", SQ + "t1", {"reps": 0})


def test_qick_validators_run_in_mock_mode(client):
    """qick itself refuses a pulse longer than 2**16 fabric cycles (a 30 us sigma here,
    sent as inline hardware config), even with no board attached."""
    hw = client.config_pull("hardware_config")["content"]
    long_pi = hw.replace("sigma: [0.035]", "sigma: [30.0]")
    assert long_pi != hw
    job = client.wait(client.submit("T1Experiment", SQ + "t1", {"reps": 10},
                                    inline_configs={"hardware_config": long_pi}), timeout=60)
    assert job.status == "failed"
    assert "RuntimeError: Pulse length" in job.error_message and "2**16" in job.error_message


def test_git_revision_of_experiment_recorded(client):
    import subprocess
    from daemon_harness import REPO
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    job = client.wait(client.submit("T1Experiment", SQ + "t1", {"reps": 10}), timeout=60)
    assert job.raw["module_git_rev"].startswith(head.stdout.strip())
    with h5py.File(job.data_file_path) as f:
        assert f.attrs["module_git_rev"] == job.raw["module_git_rev"]


def test_ramsey_fit_recovers_t2_whatever_the_fringe_sign():
    """The IQ projection's sign is arbitrary, so fringes start at either extreme; a single
    fit start used to fail ~2% of such traces (caught as a flaky end-to-end test)."""
    from experiments.fitting import fit_decaying_cos
    rng = np.random.default_rng(7)
    x = np.arange(101) * 1.0
    for i in range(60):
        sign = 1 if i % 2 else -1
        y = sign * 0.5 * np.exp(-x / 30) * np.cos(2 * np.pi * 0.1 * x + rng.uniform(-0.3, 0.3))
        fit = fit_decaying_cos(x, y + rng.normal(0, 0.02, x.size))
        assert fit["tau"] == pytest.approx(30, rel=0.15), i
        assert fit["freq"] == pytest.approx(0.1, rel=0.02), i


def test_predecessor_rabi_through_the_daemon_records_units(client):
    """The predecessor README's Rabi call, as written: DAC gains accepted, the fit in DAC,
    and every unit in the data file (xpts on the dataset, expt keys in expt_units)."""
    cfg = {"start": 0, "step": 100, "expts": 50, "reps": 1000, "rounds": 1, "qubits": [0],
           "sigma_test": 0.035, "pulse_type": "gauss"}
    job = client.wait(client.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi", cfg),
                      timeout=60)
    assert job.status == "completed", job.error_message
    assert job.results["pi_gain"] == pytest.approx(DEFAULT_TRUTH["pi_gain"], rel=0.03)
    with h5py.File(job.data_file_path) as f:
        assert f["xpts"].attrs["unit"] == "DAC"
        assert f["xpts"][-1] == 4900
        units = json.loads(f.attrs["expt_units"])
        assert units["start"] == units["step"] == "DAC"
        assert units["sigma_test"] == units["relax_delay"] == "us"
        assert json.loads(f.attrs["data_units"]) == {"xpts": "DAC"}
        assert len(f.attrs["package_sha256"]) == 64
    frac = client.wait(client.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi",
                                     {**cfg, "step": 0.003, "gain_unit": "fraction"}),
                       timeout=60)
    with h5py.File(frac.data_file_path) as f:
        assert f["xpts"].attrs["unit"] == "fraction"
        assert json.loads(f.attrs["expt_units"])["step"] == "fraction"
    t1 = client.wait(client.submit("T1Experiment", SQ + "t1", {"reps": 10}), timeout=60)
    with h5py.File(t1.data_file_path) as f:
        assert f["xpts"].attrs["unit"] == "us"


def test_out_of_range_dac_gain_is_refused_at_submit(client):
    with pytest.raises(InvalidParams, match="above full scale .32766 DAC."):
        client.submit("AmplitudeRabiExperiment", SQ + "amplitude_rabi",
                      {"start": 0, "step": 1000, "expts": 50})


def test_helper_base_classes_are_refused_at_submit(client):
    with pytest.raises(InvalidParams, match=r"helper base class \(it does not implement"):
        client.submit("SingleQubitExperiment", SQ + "common", {})
    with pytest.raises(InvalidParams, match="not an experiment class"):
        client.submit("Experiment", "experiments.base", {})


def test_every_predecessor_readme_sweep_runs_through_the_daemon(client):
    """Each expt config of the predecessor README, as a notebook sends it: completed, with
    a fit that recovers the simulated device, and a stop key recorded with its unit."""
    for path, cfg, key, rel in README_SWEEPS:
        module, cls = (SQ + path).rsplit(".", 1)
        job = client.wait(client.submit(cls, module, cfg), timeout=60)
        assert job.status == "completed" and job.error_message is None, (path, job.raw)
        assert job.results[key] == pytest.approx(DEFAULT_TRUTH[key], rel=rel), (path, cfg)
        if "stop" in cfg:
            with h5py.File(job.data_file_path) as f:
                assert f["xpts"][-1] == pytest.approx(cfg["stop"])
                assert json.loads(f.attrs["expt_units"])["stop"] == "MHz"
