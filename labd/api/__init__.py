"""The JSON-RPC methods, by area (``jobs``, ``queue``, ``configs``). Each validates its params
with a model from ``params`` and returns a result or a JSON-RPC error with a message a person
can act on; unexpected exceptions are logged under a reference and never leak their text."""
from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from jsonrpcserver import Error, Success
from pydantic import BaseModel, ValidationError

from labd_client.protocol import INTERNAL_ERROR, InvalidParams, LabdError
from ..experiment_loader import describe_validation
from .params import NoParams

if TYPE_CHECKING:
    from ..context import AppContext
    from ..identity import Peer
    from ..rpc_server import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """One request: the application parts and the connection it came on."""
    app: "AppContext"
    conn: "Connection"

    @property
    def peer(self) -> "Peer":
        return self.conn.peer


METHODS: dict[str, Callable[..., Awaitable[Any]]] = {}


def rpc(name: str, params: type[BaseModel] = NoParams):
    """Register a method: pydantic-validated params, LabdError -> JSON-RPC error."""
    def deco(fn: Callable[[Call, Any], Awaitable[Any]]):
        async def method(call: Call, /, *args: Any, **kwargs: Any):  # "call" may be a param
            if args:
                return Error(InvalidParams.code, f"{name}: params must be an object with named "
                             "fields, not a list")
            try:
                return Success(await fn(call, params.model_validate(kwargs)))
            except ValidationError as exc:
                return Error(InvalidParams.code, f"{name}: {describe_validation(exc)}")
            except LabdError as exc:
                return Error(exc.code, exc.message, exc.data)
            except asyncio.CancelledError:
                raise
            except Exception:
                ref = uuid.uuid4().hex[:8]
                log.exception("%s failed (ref %s)", name, ref)
                return Error(INTERNAL_ERROR, f"internal error in {name}; the daemon log has "
                             f"the details under ref {ref}")
        method.__signature__ = inspect.signature(method)  # jsonrpcserver inspects every call
        METHODS[name] = method
        return fn
    return deco


def load_methods() -> dict[str, Callable[..., Awaitable[Any]]]:
    """Import every area so its methods register; returns the method table."""
    from . import configs, jobs, queue  # noqa: F401
    from . import schedules  # noqa: F401  (sched, #13)
    from . import notify  # noqa: F401  (notify branch, issue #12)
    return METHODS
