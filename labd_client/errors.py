"""Typed exceptions carrying the daemon's message; one per JSON-RPC error code."""
from __future__ import annotations


class LabdError(Exception):
    code: int | None = None

    def __init__(self, message: str, code: int | None = None, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.data = data


class ConnectionFailed(LabdError):
    """The daemon's socket cannot be reached (not running, or no permission)."""


class InvalidParams(LabdError):
    code = -32602


class MethodNotFound(LabdError):
    code = -32601


class NotFound(LabdError):
    code = -32001


class PermissionDenied(LabdError):
    code = -32002


class Conflict(LabdError):
    code = -32003


class LimitExceeded(LabdError):
    code = -32004


class Unavailable(LabdError):
    code = -32005


class ServerError(LabdError):
    """Malformed request or an internal daemon error."""


_BY_CODE = {c.code: c for c in (InvalidParams, MethodNotFound, NotFound, PermissionDenied,
                                Conflict, LimitExceeded, Unavailable)}


def from_response(code: int, message: str, data: object = None) -> LabdError:
    return _BY_CODE.get(code, ServerError)(message, code, data)
