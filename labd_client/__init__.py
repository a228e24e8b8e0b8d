"""Client library for labd: ``Client`` (sync, notebook-safe), ``AsyncClient`` and
``JobClient`` (the predecessor's call names)."""
from .async_client import AsyncClient
from .client import Client, JobClient
from labd.errors import (Conflict, ConnectionFailed, InvalidParams, LabdError, LimitExceeded,
                     MethodNotFound, NotFound, PermissionDenied, ServerError, Unavailable)
from .results import JobResult

__all__ = ["AsyncClient", "Client", "JobClient", "JobResult", "LabdError", "ConnectionFailed",
           "InvalidParams", "MethodNotFound", "NotFound", "PermissionDenied", "Conflict",
           "LimitExceeded", "Unavailable", "ServerError"]
