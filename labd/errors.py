"""Errors and their JSON-RPC codes: they live in ``labd_client.protocol``, which client and
daemon share; re-exported here so daemon modules keep their imports."""
from labd_client.protocol import (INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR,  # noqa: F401
                                  Conflict, ConnectionFailed, InvalidParams, LabdError,
                                  LimitExceeded, MethodNotFound, NotFound, PermissionDenied,
                                  ServerError, Unavailable, from_response)
