"""The predecessor's README, "Usage in Jupyter Notebooks": every example runs as written
with only its import lines changed (``job_server`` -> ``labd_client``,
``slab.datamanagement`` -> ``labd_client``), against a real ``labd --mock`` daemon found
through ``$LABD_SOCKET``. The examples are copied here verbatim; two literal IDs that
cannot exist on a fresh daemon (a January job and version) are replaced by real ones.
Then the rest of the predecessor's client surface, as its real callers use it."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import yaml

from labd_client import Client, Conflict, JobClient, LabdError

# ---- the examples, verbatim but for imports --------------------------------------------
BASIC = '''
from labd_client import JobClient

# Create client (connects to localhost:8000 by default)
client = JobClient()

# Check server health
health = client.health_check()
print(f"Server status: {health['status']}")
print(f"Pending jobs: {health['pending_jobs']}")

# Submit an experiment job
job_id = client.submit_job(
    experiment_class="AmplitudeRabiExperiment",
    experiment_module="experiments.single_qubit.amplitude_rabi",
    expt_config={
        "start": 0,
        "step": 100,
        "expts": 50,
        "reps": 1000,
        "rounds": 1,
        "qubits": [0],
        "sigma_test": 0.035,
        "pulse_type": "gauss",
    },
    user="Claude",  # Your username
    priority=0,     # Default priority
)

print(f"Job submitted: {job_id}")

# Wait for completion (blocks until done)
result = client.wait_for_completion(job_id)

if result.is_successful():
    print(f"Success! Data saved to: {result.data_file_path}")
else:
    print(f"Job failed: {result.error_message}")
'''

MULTIPLE = '''
from labd_client import JobClient

client = JobClient()

# Define a list of experiments to run
experiments = [
    {
        "class": "T1Experiment",
        "module": "experiments.single_qubit.t1",
        "config": {"start": 0, "step": 0.5, "expts": 100, "reps": 200},
    },
    {
        "class": "T2RamseyExperiment",
        "module": "experiments.single_qubit.t2_ramsey",
        "config": {"start": 0, "step": 0.1, "expts": 100, "reps": 200},
    },
    {
        "class": "ResonatorSpectroscopyExperiment",
        "module": "experiments.single_qubit.resonator_spectroscopy",
        "config": {"start": 7000, "stop": 7100, "expts": 101, "reps": 500},
    },
]

# Submit all jobs
job_ids = []
for exp in experiments:
    job_id = client.submit_job(
        experiment_class=exp["class"],
        experiment_module=exp["module"],
        expt_config=exp["config"],
        user="Claude",
    )
    job_ids.append(job_id)
    print(f"Submitted {exp['class']}: {job_id}")

# Check queue
client.print_queue()

# Wait for all jobs to complete
results = []
for job_id in job_ids:
    result = client.wait_for_completion(job_id)
    results.append(result)
    print(f"{job_id}: {result.status}")
'''

PRIORITY = '''
from labd_client import JobClient

client = JobClient()

# Submit a low-priority background calibration
bg_job = client.submit_job(
    experiment_class="ResonatorSpectroscopyExperiment",
    experiment_module="experiments.single_qubit.resonator_spectroscopy",
    expt_config={"start": 7000, "stop": 7100, "expts": 101},
    user="Claude",
    priority=0,  # Low priority
)

# Submit a high-priority urgent experiment
urgent_job = client.submit_job(
    experiment_class="T1Experiment",
    experiment_module="experiments.single_qubit.t1",
    expt_config={"start": 0, "step": 0.5, "expts": 100},
    user="Claude",
    priority=10,  # High priority - runs first!
)

# The urgent_job will run before bg_job even though it was submitted second
client.print_queue()
'''

NON_BLOCKING = '''
from labd_client import JobClient
import time

client = JobClient()

# Submit job without waiting
job_id = client.submit_job(
    experiment_class="AmplitudeRabiExperiment",
    experiment_module="experiments.single_qubit.amplitude_rabi",
    expt_config={"start": 0, "step": 100, "expts": 50, "reps": 1000},
    user="Claude",
)

print(f"Submitted: {job_id}")
print("Doing other work while job runs...")

# Do other work here
time.sleep(5)

# Check status periodically
status = client.get_status(job_id)
print(f"Current status: {status.status}")

# When ready, wait for completion
if not status.is_done():
    result = client.wait_for_completion(job_id)
'''

CANCEL = '''
from labd_client import JobClient

client = JobClient()

# Submit a job
job_id = client.submit_job(
    experiment_class="AmplitudeRabiExperiment",
    experiment_module="experiments.single_qubit.amplitude_rabi",
    expt_config={"start": 0, "step": 100, "expts": 50, "reps": 1000},
    user="Claude",
)

# Changed your mind? Cancel it (only works if still pending)
try:
    client.cancel_job(job_id)
    print(f"Job {job_id} cancelled")
except Exception as e:
    print(f"Could not cancel: {e}")
'''

HISTORY = '''
from labd_client import JobClient

client = JobClient()

# Get recent job history
history = client.get_history(limit=20)
for job in history:
    print(f"{job['job_id']}: {job['status']} - {job['experiment_class']}")

# Filter by user
my_jobs = client.get_history(user="Claude", limit=10)

# Filter by status
completed = client.get_history(status="completed", limit=10)
failed = client.get_history(status="failed", limit=10)
'''

LOAD_DATA = '''
from labd_client import JobClient
from labd_client import SlabFile
import numpy as np

client = JobClient()

# Get a completed job's data file path
job_id = "JOB-20260113-00001"
result = client.get_status(job_id)

if result.is_successful() and result.data_file_path:
    # Load the HDF5 data
    with SlabFile(result.data_file_path, 'r') as f:
        # Load config
        config = f.load_config()

        # Load data arrays
        xpts = np.array(f['xpts'])
        avgi = np.array(f['avgi'])
        avgq = np.array(f['avgq'])

    print(f"Loaded {len(xpts)} data points")
'''

PUSH_PULL = '''
from pathlib import Path
from labd_client import get_database
from labd_client import ConfigVersionManager
from labd_client import ConfigType

# Initialize
db = get_database()
config_dir = Path("multimode_expts/configs")
manager = ConfigVersionManager(config_dir)

with db.session() as session:
    # PUSH: Update the main hardware config
    # This creates a snapshot and sets it as the main version
    version_id, snapshot_path = manager.push_hardware_config_to_main(
        source_path=config_dir / "hardware_config_202505.yml",
        session=session,
        updated_by="Claude",  # Your username
    )
    print(f"Pushed new main config: {version_id}")

    # PULL: Get the main hardware config version
    main_version = manager.get_main_version(ConfigType.HARDWARE_CONFIG, session)
    if main_version:
        print(f"Main version: {main_version.version_id}")
        print(f"Snapshot path: {main_version.snapshot_path}")

    # Get path to main config file
    main_path = manager.get_main_config_path(ConfigType.HARDWARE_CONFIG, session)
    print(f"Main config path: {main_path}")

    # Get all main configs at once
    all_main = manager.get_all_main_configs(session)
    print(f"All main versions: {all_main}")
'''

SET_MAIN = '''
from labd_client import get_database
from labd_client import ConfigVersionManager
from labd_client import ConfigType
from pathlib import Path

db = get_database()
manager = ConfigVersionManager(Path("multimode_expts/configs"))

with db.session() as session:
    # List available versions
    versions = manager.list_versions(ConfigType.HARDWARE_CONFIG, session)
    for v in versions:
        print(f"{v.version_id}: {v.original_filename} ({v.created_at})")

    # Set a specific version as main (without creating a new snapshot)
    manager.set_main_version(
        config_type=ConfigType.HARDWARE_CONFIG,
        version_id="CFG-HW-20260113-00001",
        session=session,
        updated_by="Claude",
    )
'''

SLEEP = ("SleepExperiment", "experiments.diagnostics.sleep")


# ---- harness -------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def env(daemon, monkeypatch, tmp_path):
    """As a user's notebook: $LABD_SOCKET names the daemon; a fresh working and cache
    dir."""
    monkeypatch.setenv("LABD_SOCKET", str(daemon.socket))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def run(code: str, **replace: str) -> tuple[dict, str]:
    """exec one example as a notebook cell; returns its namespace and what it printed."""
    for old, new in replace.items():
        assert old in code
        code = code.replace(old, new)
    ns: dict = {"__name__": "__notebook__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<example>", "exec"), ns)
    return ns, out.getvalue()


@contextlib.contextmanager
def busy_board(client: Client):
    """A long job holds the board, so the example's jobs stay pending while it runs."""
    blocker = client.submit(*SLEEP, {"seconds": 120, "steps": 1200}, user="blocker")
    deadline = time.monotonic() + 20
    while client.get(blocker).status != "running":
        assert time.monotonic() < deadline, "blocker never started"
        time.sleep(0.02)
    try:
        yield blocker
    finally:
        with contextlib.suppress(Conflict):
            client.cancel(blocker)
        client.wait(blocker, timeout=30)


# ---- the README's examples -----------------------------------------------------------
def test_basic_submit_and_wait(client):
    ns, out = run(BASIC)
    assert "Server status: ok\n" in out
    assert isinstance(ns["health"]["pending_jobs"], int)
    assert ns["health"]["running_jobs"] in (0, 1) and ns["health"]["database_connected"]
    result = ns["result"]
    assert result.is_successful(), result.error_message
    assert f"Success! Data saved to: {result.data_file_path}" in out
    assert result.experiment_config["step"] == 100 and "pi_gain" in result.results


def test_submit_multiple_jobs(client):
    ns, out = run(MULTIPLE)
    assert [r.status for r in ns["results"]] == ["completed"] * 3, \
        [r.error_message for r in ns["results"]]
    for job_id in ns["job_ids"]:
        assert f"{job_id}: completed" in out
    assert "PENDING" in out  # print_queue printed the queue


def test_priority_scheduling(client):
    with busy_board(client):
        ns, out = run(PRIORITY)
        pending = [j["job_id"] for j in client.queue()["pending"]]
        assert pending.index(ns["urgent_job"]) < pending.index(ns["bg_job"])
        assert out.index(ns["urgent_job"]) < out.index(ns["bg_job"])  # as printed
    urgent = client.wait(ns["urgent_job"], timeout=60)
    bg = client.wait(ns["bg_job"], timeout=60)
    assert urgent.status == bg.status == "completed", (urgent.error_message, bg.error_message)
    assert urgent.started_at < bg.started_at


def test_non_blocking_submission(client, monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)  # "do other work" without waiting
    ns, out = run(NON_BLOCKING)
    monkeypatch.undo()
    assert slept == [5]
    assert f"Current status: {ns['status'].status}" in out
    assert client.wait(ns["job_id"], timeout=60).status == "completed"


def test_cancel_a_job(client):
    with busy_board(client):
        ns, out = run(CANCEL)
        assert f"Job {ns['job_id']} cancelled" in out, out
        assert client.get(ns["job_id"]).status == "cancelled"
        other = client.submit(*SLEEP, {"seconds": 1})
        assert JobClient().cancel_job(other) is True


def test_view_job_history(client):
    done = client.wait(client.submit(*SLEEP, {"seconds": 0.05, "steps": 1}, user="Claude"),
                       timeout=30)
    bad = client.wait(client.submit(*SLEEP, {"seconds": 0.05, "steps": 1, "fail": True},
                                    user="Claude"), timeout=30)
    ns, out = run(HISTORY)
    assert f"{bad.job_id}: failed - SleepExperiment" in out
    assert f"{done.job_id}: completed - SleepExperiment" in out
    assert ns["my_jobs"] and all(j["user"] == "Claude" == j.user for j in ns["my_jobs"])
    assert ns["completed"] and all(j["status"] == "completed" for j in ns["completed"])
    assert bad.job_id in [j["job_id"] for j in ns["failed"]]
    assert all(j.status == "failed" for j in ns["failed"])


def test_load_data_from_completed_job(client):
    job = client.wait(client.submit(
        "AmplitudeRabiExperiment", "experiments.single_qubit.amplitude_rabi",
        {"start": 0, "step": 100, "expts": 50, "reps": 100}), timeout=60)
    assert job.is_successful(), job.error_message
    ns, out = run(LOAD_DATA, **{'"JOB-20260113-00001"': repr(job.job_id)})
    assert "Loaded 50 data points" in out
    assert ns["config"]["expt"]["step"] == 100 and "device" in ns["config"]
    assert ns["avgi"].shape == ns["avgq"].shape == (50,)
    assert list(ns["xpts"]) == list(client.load_data(job.job_id)["data"]["xpts"])


def _hardware_config_file(client: Client, tag: str) -> Path:
    path = Path("multimode_expts/configs/hardware_config_202505.yml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(client.config_pull("hardware_config")["content"] + f"# {tag}\n")
    return path


def test_push_pull_config_versions(client):
    source = _hardware_config_file(client, f"push-pull {time.time_ns()}")
    ns, out = run(PUSH_PULL)
    version_id = ns["version_id"]
    assert client.config_pull("hardware_config")["version_id"] == version_id
    assert f"Pushed new main config: {version_id}" in out
    assert ns["main_version"].version_id == version_id
    assert ns["main_version"].original_filename == "hardware_config_202505.yml"
    assert ns["main_version"].created_at
    for path in (ns["snapshot_path"], ns["main_version"].snapshot_path, ns["main_path"]):
        assert Path(path).read_text() == source.read_text()  # readable local copies
    assert ns["all_main"]["hardware_config"] == version_id
    assert f"All main versions: {ns['all_main']}" in out


def test_set_existing_version_as_main(client):
    old = client.config_pull("hardware_config")["version_id"]
    _hardware_config_file(client, f"set-main {time.time_ns()}")
    client.config_push("hardware_config",
                       Path("multimode_expts/configs/hardware_config_202505.yml").read_text())
    assert client.config_pull("hardware_config")["version_id"] != old
    ns, out = run(SET_MAIN, **{'"CFG-HW-20260113-00001"': repr(old)})
    assert client.config_pull("hardware_config")["version_id"] == old
    assert old in [v.version_id for v in ns["versions"]]
    assert f"{old}: " in out


# ---- the rest of the predecessor's client surface -------------------------------------
def test_server_url_is_accepted_and_says_where_labd_is(daemon):
    import labd_client.compat as compat
    compat._warned.discard("server_url")
    with pytest.warns(UserWarning, match=str(daemon.socket)):
        c = JobClient(server_url="http://localhost:8000")
    assert c.health_check()["status"] == "ok"


def test_runner_calls(client, capsys):
    import labd_client.compat as compat
    compat._warned.discard("program")
    jc = JobClient()
    station = yaml.safe_load(client.config_pull("hardware_config")["content"])
    station["device"]["note"] = f"station {time.time_ns()}"
    with pytest.warns(UserWarning, match="program_class/program_module are ignored"):
        job_id = jc.submit_job(*SLEEP, {"seconds": 0.3, "steps": 3}, user="runner",
                               station_config=json.dumps(station),
                               program_class="X", program_module="y")
    res = jc.wait_for_completion(job_id, poll_interval=0.5, timeout=30, verbose=True,
                                 stream_output=True)
    out = capsys.readouterr().out
    assert out.index("step 1/3") < out.index("step 3/3") < out.index(f"{job_id}: completed")
    assert res.completed_at == res.finished_at and res["completed_at"]
    hw = res.hardware_config_version_id
    assert hw and res["hardware_config_version_id"] == hw
    assert json.loads(client.config_show(hw)["content"]) == station
    assert res.multiphoton_config_version_id.startswith("CFG-MP-")
    assert res.floquet_storage_swap_version_id and res.man1_storage_swap_version_id
    first = jc.get_output(job_id, 0)
    assert "step 3/3" in first["lines"] and first["is_complete"]
    assert jc.get_output(job_id, first["next_offset"])["lines"] == []
    with pytest.raises(LabdError, match="load_data"):
        jc.load_expt(job_id)
    with busy_board(client):
        waiting = jc.submit_job(*SLEEP, {"seconds": 1})
        assert jc.get_status(waiting).queue_position == 1
        assert [j["job_id"] for j in jc.list_queue()["pending"]] == [waiting]
        with pytest.raises(TimeoutError, match=waiting):
            jc.wait_for_completion(waiting, timeout=0.2)
        assert jc.cancel_job(waiting) is True
