"""The predecessor's client names, so its notebooks and its real callers (calibration and
sweep runners, the closed-loop service) run with only their imports changed:
``JobClient``, ``ConfigVersionManager``, ``ConfigType``, ``get_database``.

Everything goes through the daemon (it stays the only writer of configs); the
predecessor's database ``session`` arguments are accepted and ignored."""
from __future__ import annotations

import json
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator

from .client import Client
from .paths import HOW_TO_CHOOSE, cache_dir
from .protocol import LabdError, WAIT_FOREVER_S
from .results import JobResult
from .views import QueueView, format_queue, safe

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


class JobClient(Client):
    """The predecessor's ``job_server.JobClient`` calls over labd's socket."""

    def __init__(self, server_url: str | os.PathLike | None = None,
                 socket_path: str | os.PathLike | None = None, timeout: float = 60.0) -> None:
        """``server_url`` (the predecessor's ``http://host:8000``) is accepted with a
        warning saying where labd listens; a socket path in its place is used as one."""
        if server_url is not None and "://" not in str(server_url):
            server_url, socket_path = None, socket_path or server_url
        super().__init__(socket_path, timeout)
        if server_url is not None:
            _warn_once("server_url", f"JobClient(server_url={server_url!r}): labd has no HTTP "
                       f"server; it listens on a Unix socket, here {self.socket_path} "
                       f"({HOW_TO_CHOOSE})")

    def health_check(self) -> dict[str, Any]:
        """``status``, ``pending_jobs``, ``running_jobs``, ``database_connected`` and
        labd's richer keys."""
        return self.health()

    def submit_job(self, experiment_class: str, experiment_module: str,
                   expt_config: dict[str, Any] | None = None, user: str | None = None,
                   priority: int | None = None, station_config: str | dict | None = None,
                   program_class: str | None = None, program_module: str | None = None,
                   **kwargs: Any) -> str:
        """``station_config`` (the station's hardware config as JSON text or a dict) runs
        this job with that content as its hardware_config, snapshotted and deduplicated
        like any pushed version; main is left alone."""
        if program_class or program_module:
            _warn_once("program", "submit_job: program_class/program_module are ignored; "
                       "a labd experiment class builds its own qick program")
        if station_config is not None:
            text = station_config if isinstance(station_config, str) else \
                json.dumps(station_config)
            kwargs["inline_configs"] = {**kwargs.get("inline_configs", {}),
                                        "hardware_config": text}
        return self.submit(experiment_class, experiment_module, expt_config, user=user,
                           priority=priority, **kwargs)

    def get_status(self, job_id: str) -> JobResult:
        return self.get(job_id)

    def wait_for_completion(self, job_id: str, poll_interval: float | None = None,
                            timeout: float | None = None, verbose: bool = False,
                            stream_output: bool = False,
                            show_progress: bool = True) -> JobResult:
        """Block until the job ends; raises TimeoutError after ``timeout`` seconds.
        ``poll_interval`` is accepted and unused: the daemon pushes the end of the job.
        ``stream_output`` prints the job's log live instead of a progress bar."""
        limit = WAIT_FOREVER_S if timeout is None else timeout
        if stream_output:
            import time
            start = time.monotonic()
            for text in self.follow_logs(job_id, timeout=limit):
                print(text, end="", flush=True)
            limit = max(0.0, limit - (time.monotonic() - start))
        job = self.wait(job_id, timeout=limit, progress=show_progress and not stream_output)
        if not job.is_done():
            raise TimeoutError(f"{job_id} did not finish within {timeout:g} s "
                               f"(still {job.status})")
        if verbose:
            print(f"{job_id}: {job.status}"
                  + (f" ({job.error_message})" if job.error_message else ""))
        return job

    def cancel_job(self, job_id: str) -> bool:
        """True once cancelled (or cancelling, if it was running); raises Conflict if the
        job already ended."""
        self.cancel(job_id)
        return True

    def get_history(self, user: str | None = None, status: str | None = None,
                    limit: int = 50) -> list[JobResult]:
        return self.history(user=user, status=status, limit=limit)

    def list_queue(self, user: str | None = None) -> QueueView:
        """``running`` (or None) and ``pending`` dicts in run order."""
        return self.queue(user=user)

    def print_queue(self, user: str | None = None) -> None:
        print(safe(format_queue(self.queue(user=user))))

    def get_output(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        """The job's output from line ``offset``: ``lines``, ``output`` (the same as text),
        ``next_offset`` (pass it back to continue), ``status``, ``is_complete``. Only whole
        lines are returned while the job runs, so a line is never split or repeated."""
        pos, chunks = 0, []
        while True:
            page = self.logs(job_id, pos, max_bytes=4 * 1024 * 1024)
            chunks.append(page["text"])
            if not page["text"]:
                break
            pos = page["offset"]
        lines = "".join(chunks).splitlines()
        new = lines[offset:]
        return {"job_id": job_id, "lines": new, "output": "".join(f"{x}\n" for x in new),
                "offset": offset, "next_offset": offset + len(new), "status": page["status"],
                "is_complete": page["eof"]}

    def load_expt(self, *args: Any, **kwargs: Any) -> Any:
        raise LabdError("load_expt: labd keeps no pickled experiment objects; use "
                        "client.load_data(job_id) for the arrays, config and fit results "
                        "(or open the data file with labd_client.SlabFile)")


# ---- config versioning --------------------------------------------------------------
class ConfigType(StrEnum):
    """The predecessor's ``job_server.models.ConfigType``; values are labd's type names."""
    HARDWARE_CONFIG = "hardware_config"
    MULTIPHOTON_CONFIG = "multiphoton_config"
    FLOQUET_STORAGE_SWAP = "floquet_storage_swap"
    MAN1_STORAGE_SWAP = "man1_storage_swap"


_FROM = re.compile(r"^from (\S+)")


@dataclass
class ConfigVersion:
    """A version as the predecessor returned it. ``snapshot_path`` is a read-only local
    copy (under the user's cache dir), fetched from the daemon on first use."""
    version_id: str
    config_type: str
    created_at: str
    created_by: str | None = None
    checksum: str | None = None
    message: str | None = None
    _client: Client | None = field(default=None, repr=False, compare=False)
    _content: str | None = field(default=None, repr=False, compare=False)

    @property
    def original_filename(self) -> str:
        m = _FROM.match(self.message or "")
        return m.group(1) if m else f"{self.config_type}{_ext(self.config_type)}"

    @property
    def snapshot_path(self) -> Path:
        # the checksum in the name: another daemon (a test one) may reuse the version ID
        path = cache_dir() / "configs" / (f"{self.version_id}.{(self.checksum or '')[:12]}"
                                          f"{_ext(self.config_type)}")
        if not path.exists():
            content = self._content
            if content is None:
                assert self._client is not None
                content = self._client.config_show(self.version_id)["content"]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{os.getpid()}.part"
            tmp.unlink(missing_ok=True)  # a read-only leftover of an interrupted write
            tmp.write_text(content)
            tmp.chmod(0o444)
            tmp.replace(path)
        return path


def _ext(config_type: str) -> str:
    return ".csv" if config_type in ("floquet_storage_swap", "man1_storage_swap") else ".yml"


class ConfigVersionManager:
    """The predecessor's ``ConfigVersionManager`` over labd's config RPCs. ``config_dir``
    is where relative source paths are found; labd keeps the snapshots itself."""

    def __init__(self, config_dir: str | Path | None = None,
                 client: Client | None = None) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else Path.cwd()
        self.client = client or Client()

    def _version(self, config_type: str, v: dict[str, Any]) -> ConfigVersion:
        return ConfigVersion(version_id=v["version_id"], config_type=str(config_type),
                             created_at=v.get("created_at", ""),
                             created_by=v.get("created_by"), checksum=v.get("sha256"),
                             message=v.get("message"), _client=self.client,
                             _content=v.get("content"))

    def push_config_to_main(self, config_type: str, source_path: str | Path,
                            session: Any = None,
                            updated_by: str | None = None) -> tuple[str, Path]:
        """Send the file's content to labd, which snapshots it (deduplicated) and makes it
        main. Returns ``(version_id, snapshot_path)``."""
        source = Path(source_path)
        if not source.is_absolute() and not source.exists():
            source = self.config_dir / source
        message = f"from {source.name}" + (f" (updated by {updated_by})" if updated_by
                                            else "")
        r = self.client.config_push(str(config_type), source.read_text(), message)
        v = self.get_version(config_type, r["version_id"])
        return v.version_id, v.snapshot_path

    def push_hardware_config_to_main(self, source_path: str | Path, session: Any = None,
                                     updated_by: str | None = None) -> tuple[str, Path]:
        return self.push_config_to_main(ConfigType.HARDWARE_CONFIG, source_path, session,
                                        updated_by)

    def get_version(self, config_type: str, version_id: str) -> ConfigVersion:
        s = self.client.config_show(version_id)
        return self._version(config_type, s)

    def get_main_version(self, config_type: str,
                         session: Any = None) -> ConfigVersion | None:
        main = self.get_all_main_configs().get(str(config_type))
        return None if main is None else self.get_version(config_type, main)

    def get_main_config_path(self, config_type: str, session: Any = None) -> Path | None:
        v = self.get_main_version(config_type)
        return None if v is None else v.snapshot_path

    def get_all_main_configs(self, session: Any = None) -> dict[str, str | None]:
        """Type name -> main version ID."""
        return {t["name"]: t["main"] for t in self.client.config_types()}

    def list_versions(self, config_type: str, session: Any = None,
                      limit: int = 100) -> list[ConfigVersion]:
        """Newest first."""
        r = self.client.config_versions(str(config_type), limit)
        return [self._version(config_type, v) for v in r["versions"]]

    def set_main_version(self, config_type: str, version_id: str, session: Any = None,
                         updated_by: str | None = None) -> ConfigVersion:
        """Make an existing version main (labd records who from the socket's identity)."""
        self.client.config_set_main(str(config_type), version_id)
        return self.get_version(config_type, version_id)


class _Database:
    """Stands in for the predecessor's SQLAlchemy database: labd owns its own."""

    @contextmanager
    def session(self) -> Iterator[None]:
        yield None


def get_database(*args: Any, **kwargs: Any) -> _Database:
    return _Database()
