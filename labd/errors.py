"""Errors and their JSON-RPC codes, shared by the daemon (which raises them) and the client
(which raises the same class from an error response). Each carries a message a person can
act on; internal exception text never reaches a client."""
from __future__ import annotations

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603


class LabdError(Exception):
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
    """Client side: the daemon's socket cannot be reached (not running, no permission)."""


_BY_CODE = {c.code: c for c in (InvalidParams, MethodNotFound, NotFound, PermissionDenied,
                                Conflict, LimitExceeded, Unavailable)}


def from_response(code: int, message: str, data: object = None) -> LabdError:
    """The exception for a JSON-RPC error response."""
    return _BY_CODE.get(code, ServerError)(message, data, code)
