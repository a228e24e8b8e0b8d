"""The wire protocol, shared by the daemon and both clients: error classes and their
JSON-RPC codes, frame encoding, the Job model, and the request/response logic that does no
I/O (httpx's ``_client.py`` is the model). ``Client`` and ``AsyncClient`` are thin verbs over
``Conversation``; the daemon imports the errors, frames and Job from here.

Nothing here imports ``labd``: a notebook environment needs only the client's dependencies."""
from __future__ import annotations

import itertools
import json
from enum import StrEnum
from typing import Any, Iterator

import jsonrpcclient
import orjson
from pydantic import BaseModel, field_validator

# ---- errors -----------------------------------------------------------------------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603


class LabdError(Exception):
    """Carries a message a person can act on; internal exception text never reaches a
    client."""
    code: int = INTERNAL_ERROR

    def __init__(self, message: str, data: object = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code


class InvalidParams(LabdError):
    """Bad parameters a client can fix."""
    code = -32602


class MethodNotFound(LabdError):
    code = -32601


class NotFound(LabdError):
    code = -32001


class PermissionDenied(LabdError):
    code = -32002


class Conflict(LabdError):
    """Valid, but not in the object's current state (e.g. cancel a finished job)."""
    code = -32003


class LimitExceeded(LabdError):
    code = -32004


class Unavailable(LabdError):
    """The daemon cannot do this right now (shutting down, database write failed)."""
    code = -32005


class ServerError(LabdError):
    """Client side: a malformed request or an internal daemon error."""


class ConnectionFailed(LabdError):
    """Client side: the daemon's socket cannot be reached (not running, no permission),
    or the connection was lost."""


_BY_CODE = {c.code: c for c in (InvalidParams, MethodNotFound, NotFound, PermissionDenied,
                                Conflict, LimitExceeded, Unavailable)}


def from_response(code: int, message: str, data: object = None) -> LabdError:
    """The exception for a JSON-RPC error response."""
    return _BY_CODE.get(code, ServerError)(message, data, code)


# ---- frames -----------------------------------------------------------------------------
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY  # notebooks pass numpy


def frame(obj: Any) -> bytes:
    """One newline-terminated JSON frame. orjson encodes a 10k-job queue listing in 0.4 ms
    where json takes 6 ms; json only for what orjson refuses (an int beyond 64 bits)."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


parse_frame = orjson.loads  # the client's side; the daemon parses requests strictly


# ---- the job model ----------------------------------------------------------------------
class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(BaseModel):
    """A job as stored and returned by get/history."""
    job_id: str
    status: JobStatus
    user: str
    os_user: str
    os_uid: int
    experiment_class: str
    experiment_module: str
    experiment_config: dict[str, Any]
    priority: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    data_file_path: str | None = None
    log_path: str | None = None
    error_message: str | None = None
    batch_id: str | None = None
    time_limit_s: float | None = None
    config_versions: dict[str, str] = {}
    pinned_versions: dict[str, str] = {}
    module_sha256: str | None = None
    module_git_rev: str | None = None
    progress: float | None = None
    phase: str | None = None           # where an active job is (RunPhase); None once final
    end_reason: str | None = None      # why it ended (EndReason)
    results: dict[str, Any] = {}
    held: bool = False
    after_job: str | None = None
    not_before: str | None = None
    retry_of: str | None = None
    # calibration (issue #13): a job that updates main, and a job that needs fresh keys
    update_main: bool = False
    calibration: dict[str, Any] | None = None      # the updates it would make
    config_update: dict[str, Any] | None = None    # what was decided when it ended
    fresh: list[str] = []
    calibrated_by: list[str] = []                  # calibration jobs it waits for
    hold_reason: str | None = None
    # preemption (issue #16)
    preemptible: bool = True           # the submit did not opt out
    preemptions: int = 0               # times it gave the board to a more urgent job
    preempted_by: str | None = None    # the latest: the job (or admin) it yielded to
    preempted_at: str | None = None    # and when

    @field_validator("calibration", "config_update", "fresh", "calibrated_by",
                     mode="before")
    @classmethod
    def _json_text(cls, v: Any, info: Any) -> Any:
        """Stored as JSON text (NULL when unset)."""
        if isinstance(v, str):
            return json.loads(v)
        if v is None and info.field_name in ("fresh", "calibrated_by"):
            return []
        return v

    def is_terminal(self) -> bool:
        return self.status.terminal


# ---- request/response logic without I/O -------------------------------------------------
class Conversation:
    """One connection's JSON-RPC state: request ids, the byte buffer of a partly received
    frame, and which frames are pushed events. Clients only move bytes."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._buf = bytearray()
        self._scanned = 0   # bytes of _buf known to hold no newline

    def request(self, method: str, params: dict[str, Any]) -> tuple[int, bytes]:
        req_id = next(self._ids)
        return req_id, frame(jsonrpcclient.request(method, params=params, id=req_id))

    def feed(self, data: bytes | memoryview) -> Iterator[dict[str, Any]]:
        """The complete messages in what has arrived so far (each byte is searched for
        the newline once, so a reply of many reads costs linear time)."""
        self._buf += data
        while (end := self._buf.find(b"\n", self._scanned)) >= 0:
            line = self._buf[:end]
            del self._buf[:end + 1]
            self._scanned = 0
            if line.strip():
                yield parse_frame(line)
        self._scanned = len(self._buf)


def is_event(msg: dict[str, Any]) -> bool:
    """A server push (JSON-RPC notification) rather than a response."""
    return "method" in msg and "id" not in msg


def result_of(msg: dict[str, Any]) -> Any:
    """A response's result, or its error raised as the typed exception."""
    try:
        response = jsonrpcclient.parse(msg)
    except (KeyError, TypeError):
        raise from_response(INTERNAL_ERROR, "malformed reply from labd") from None
    if isinstance(response, jsonrpcclient.Error):
        raise from_response(response.code, response.message, response.data)
    return response.result


def clean(**kw: Any) -> dict[str, Any]:
    """Params without the ones left at None (the daemon applies its defaults)."""
    return {k: v for k, v in kw.items() if v is not None}


def submit_params(experiment_class: str, experiment_module: str,
                  expt_config: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return clean(experiment_class=experiment_class, experiment_module=experiment_module,
                 experiment_config=expt_config or {}, **{**kw, "hold": kw.get("hold") or None})


def batch_params(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """submit()'s argument names (``expt_config``) to the wire's (``experiment_config``)."""
    specs = []
    for j in jobs:
        j = dict(j)
        if "expt_config" in j:
            j["experiment_config"] = j.pop("expt_config")
        specs.append(clean(**j))
    return {"jobs": specs}


def queue_rows(q: dict[str, Any]) -> dict[str, Any]:
    """The compact queue reply (rows + columns) as a list of dicts."""
    cols = q.pop("columns")
    q["pending"] = [dict(zip(cols, row)) for row in q["pending"]]
    return q


LOST = "connection to labd lost (daemon restarted?)"
WAIT_FOREVER_S = 7 * 86400.0  # the daemon's cap on one wait call


def backoff(previous: float | None) -> float:
    """Seconds before the next reconnect attempt while a daemon restarts."""
    return 0.05 if previous is None else min(2.0, previous * 2)
