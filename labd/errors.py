"""Application errors and their JSON-RPC codes. Each carries a message a person can act on;
internal exception text never reaches a client."""
from __future__ import annotations

# JSON-RPC standard codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class LabdError(Exception):
    code = INTERNAL_ERROR

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidRequest(LabdError):
    """Bad parameters a client can fix."""
    code = INVALID_PARAMS


class NotFound(LabdError):
    code = -32001


class PermissionDenied(LabdError):
    code = -32002


class Conflict(LabdError):
    """The request is valid but not in the object's current state (e.g. cancel a finished job)."""
    code = -32003


class LimitExceeded(LabdError):
    code = -32004


class Unavailable(LabdError):
    """The daemon cannot do this right now (shutting down, database write failed)."""
    code = -32005


ERROR_NAMES = {
    PARSE_ERROR: "ParseError", INVALID_REQUEST: "InvalidRequest",
    METHOD_NOT_FOUND: "MethodNotFound", INVALID_PARAMS: "InvalidParams",
    INTERNAL_ERROR: "InternalError", NotFound.code: "NotFound",
    PermissionDenied.code: "PermissionDenied", Conflict.code: "Conflict",
    LimitExceeded.code: "LimitExceeded", Unavailable.code: "Unavailable",
}
