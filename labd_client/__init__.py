"""Client library for labd: ``Client`` (sync, notebook-safe), ``AsyncClient``, and the
predecessor's names (``JobClient``, ``ConfigVersionManager``, ``ConfigType``,
``get_database``, ``SlabFile``). Imports no daemon module."""
from .async_client import AsyncClient
from .client import Client
from .compat import ConfigType, ConfigVersionManager, JobClient, get_database
from .data import SlabFile
from .protocol import (Conflict, ConnectionFailed, InvalidParams, LabdError, LimitExceeded,
                       MethodNotFound, NotFound, PermissionDenied, ServerError, Unavailable)
from .results import JobResult

__all__ = ["AsyncClient", "Client", "JobClient", "JobResult", "ConfigType",
           "ConfigVersionManager", "get_database", "SlabFile", "LabdError",
           "ConnectionFailed", "InvalidParams", "MethodNotFound", "NotFound",
           "PermissionDenied", "Conflict", "LimitExceeded", "Unavailable", "ServerError"]
