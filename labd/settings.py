"""Daemon settings: machine facts (paths, groups, board address) that must never live in
the versioned physics configs or come from a client.

Loaded from a TOML file (``--config`` / ``$LABD_CONFIG``); anything unset falls back to the
embedded default: mock board, per-user socket and state dir under the XDG directories."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def default_state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "labd"


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime) / "labd" if runtime else default_state_dir()) / "labd.sock"


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """A ``notify_allowed_hosts`` entry, ``host`` or ``host:port`` (IPv6 in brackets), as
    the (lower-case host name, port or None) pair a webhook URL is compared with."""
    from urllib.parse import urlsplit
    text = entry.strip()
    if not text or any(c in text for c in "/@?#\\ ") or not text.isascii():
        raise ValueError(f"notify_allowed_hosts: {entry!r} is not a host or host:port")
    u = urlsplit("//" + text)
    try:
        port = u.port
    except ValueError:
        raise ValueError(f"notify_allowed_hosts: {entry!r} has a bad port") from None
    if not u.hostname:
        raise ValueError(f"notify_allowed_hosts: {entry!r} is not a host or host:port")
    return u.hostname, port


class ConfigType(BaseModel):
    """One versioned physics config type (e.g. hardware_config, short code HW)."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    code: str = Field(pattern=r"^[A-Z0-9]{1,4}$")
    format: Literal["yaml", "csv"]


DEFAULT_CONFIG_TYPES = [
    ConfigType(name="hardware_config", code="HW", format="yaml"),
    ConfigType(name="multiphoton_config", code="MP", format="yaml"),
    ConfigType(name="floquet_storage_swap", code="FL", format="csv"),
    ConfigType(name="man1_storage_swap", code="M1", format="csv"),
]


class PyroSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ns_host: str = "127.0.0.1"
    ns_port: int = 8888
    name: str = "myqick"
    timeout_s: float = Field(30.0, gt=0)   # Pyro4 calls block forever without one


class SetpointSettings(BaseModel):
    """Pre-job instrument setpoint (the predecessor's coupler current)."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    name: str = "coupler_current"
    unit: str = "mA"
    config_key: str = "coupler_current"    # key in hardware_config.hw holding the target
    limit: float = Field(1.0, gt=0)        # |target| above this refuses the job
    ramp_step: float = Field(0.05, gt=0)
    ramp_delay_s: float = Field(0.0, ge=0)
    driver: Literal["mock"] = "mock"


class CalibrationSetting(BaseModel):
    """A calibration labd runs on its own when a job needs one of ``keys`` fresh and the
    key is older than ``max_age_s`` (issue #13): the experiment (module.Class, it must
    declare updates of those keys) with this expt config, submitted with update_main."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    keys: list[str] = Field(min_length=1)
    experiment: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*$")
    config: dict = {}
    max_age_s: float = Field(ge=0)
    config_type: str = "hardware_config"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir)
    socket_path: Path = Field(default_factory=default_socket_path)
    socket_group: str | None = None        # None: the daemon user's primary group
    socket_mode: int = 0o660
    admin_group: str = "labd-admin"
    admin_users: list[str] = []
    output_root: Path | None = None        # None: <state_dir>/data

    hardware: Literal["mock", "pyro"] = "mock"
    soccfg_path: Path | None = None        # mock board's QickConfig; None: shipped ZCU216
    # mock board's wall time per round relative to a real board's (reps x points x shot
    # length): 1 = real time, 0 = instant (tests); the default runs each predecessor README
    # example in a few seconds, so progress bars and ETAs move
    mock_speed: float = Field(0.1, ge=0, le=100)
    pyro: PyroSettings = PyroSettings()
    setpoint: SetpointSettings = SetpointSettings()

    allowed_packages: list[str] = ["experiments"]
    config_types: list[ConfigType] = DEFAULT_CONFIG_TYPES

    priority_default: int = 0
    priority_cap: int = 10                 # above this needs admin
    priority_min: int = -100
    priority_max: int = 1000
    job_time_limit_s: float = Field(3600.0, gt=0)
    job_time_limit_max_s: float = Field(7 * 24 * 3600.0, gt=0)
    stop_grace_s: float = Field(10.0, gt=0)
    # preemption (issue #16): a runnable job whose priority exceeds the running job's by at
    # least this takes the board at the running job's next safe point; a job is preempted
    # at most max_preemptions times (no starvation)
    preempt_margin: int = Field(10, ge=1)
    max_preemptions: int = Field(3, ge=0)
    # the mock board's noise: seeded per (seed, acquisition, round) when set, so a
    # preempted and resumed run gives the same arrays as an uninterrupted one
    mock_seed: int | None = None

    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_config_bytes: int = Field(1024 * 1024, ge=256)
    # a config diff runs in a child process, stopped after this (difflib is about cubic on
    # some contents: a minute for 20k lines)
    config_diff_timeout_s: float = Field(10.0, gt=0)
    max_batch: int = Field(10_000, ge=1)
    max_pending_per_user: int = Field(50_000, ge=1)
    max_log_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # raw data kept in memory for fits that lag the board; past it a fit reads its job's
    # data back from the saved file (issue #14: the board never waits for a fit)
    fit_backlog_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # threads a fit's linear algebra may use (OpenBLAS / OpenMP, set before numpy loads):
    # one leaves the other cores to the board thread, which must not wait for a fit
    fit_threads: int = Field(1, ge=1)
    # who builds and writes the data files (labd/data_writer.py): "process", a child
    # process on a core of its own (jobs that come faster than their files are written
    # drain twice as fast), "thread", labd's save and analysis threads (a busy second
    # process slowed the board's next acquisition on a 2-core machine), "when_behind":
    # the threads, and the child while the files lag the board; "auto": the process when
    # labd may use 4 or more CPUs, else "when_behind"
    data_writer: Literal["auto", "process", "thread", "when_behind"] = "auto"
    # a reply (or a batch's replies together) above this becomes a LimitExceeded error:
    # one small request must not make the daemon build and queue hundreds of megabytes
    max_reply_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)  # bigger: page
    max_connections: int = Field(4096, ge=8)   # admins get in past it (not past their own:)
    max_connections_per_user: int = Field(512, ge=1)   # one account cannot take them all
    # replies queued for clients that do not read them, over all connections (one may
    # hold 16 frames); past it such a connection is closed
    max_unsent_bytes: int = Field(1024 ** 3, ge=1024 * 1024)
    schedule_min_every_s: float = Field(60.0, gt=0)   # shortest period of a schedule
    max_schedules_per_user: int = Field(100, ge=1)

    # ---- notifications (labd/notify.py, issue #12) ----
    # hosts webhooks may go to: "host" (default port of http/https) or "host:port";
    # empty: webhooks disabled. Clients can never name a host not listed here.
    notify_allowed_hosts: list[str] = []
    notify_queue_max: int = Field(1000, ge=1)        # job-end events waiting; more: dropped
    notify_retries: int = Field(3, ge=0, le=20)      # after the first attempt
    notify_backoff_s: float = Field(2.0, ge=0, le=3600)  # before retry 1; doubled each time
    notify_timeout_s: float = Field(10.0, gt=0, le=300)  # per attempt: connect to answer
    notify_concurrency: int = Field(4, ge=1, le=64)  # deliveries at a time
    notify_max_targets_per_user: int = Field(20, ge=1, le=1000)
    notify_drain_s: float = Field(2.0, ge=0, le=60)  # at shutdown, then unsent are dropped

    @field_validator("notify_allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_host_entry(entry)
        return [e.strip() for e in v]
    calibrations: list[CalibrationSetting] = []   # calibrate-when-stale (issue #13)

    # ---- web dashboard (labd/web): HTTP on a second Unix socket, never TCP ----------
    web_enabled: bool = True
    web_socket_path: Path | None = None    # None: web.sock beside socket_path
    web_allowed_hosts: list[str] = []      # extra Host names (the forwarded name) besides
                                           # localhost, 127.0.0.1 and [::1] (any port)
    web_queue_rows: int = Field(500, ge=10, le=10_000)  # pending rows per queue page
    web_keepalive_s: float = Field(15.0, ge=0.05, le=3600)  # SSE ping period; a page
                                           # reconnects after 3x this without a byte

    @model_validator(mode="after")
    def _fill_paths(self) -> "Settings":
        if self.output_root is None:
            self.output_root = self.state_dir / "data"
        if self.web_socket_path is None:
            self.web_socket_path = self.socket_path.with_name("web.sock")
        codes = [t.code for t in self.config_types]
        names = [t.name for t in self.config_types]
        if len(set(codes)) != len(codes) or len(set(names)) != len(names):
            raise ValueError("config_types: names and codes must be unique")
        return self

    @property
    def db_path(self) -> Path:
        return self.state_dir / "labd.sqlite3"

    @property
    def snapshot_dir(self) -> Path:
        return self.state_dir / "configs"

    @classmethod
    def load(cls, path: Path | None = None, **overrides: object) -> "Settings":
        """Read the TOML settings file (if any), then apply command-line overrides."""
        path = path or (Path(p) if (p := os.environ.get("LABD_CONFIG")) else None)
        data: dict = {}
        if path is not None:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)
