"""Where the daemon's socket may be, in the order a client tries them: $LABD_SOCKET, else a
per-user daemon's socket, else the system daemon's."""
from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/labd-socket/labd.sock")
HOW_TO_CHOOSE = ("choose the socket with $LABD_SOCKET, labctl --socket PATH or "
                 "Client(socket_path=PATH)")


def user_socket() -> Path:
    """A per-user daemon's socket (``make run``). Mirrors ``labd.settings.
    default_socket_path`` (a test keeps them equal): the client must not import labd."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "labd" / "labd.sock"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(state) / "labd" / "labd.sock"


def candidate_sockets(explicit: str | os.PathLike | None = None) -> list[Path]:
    """The sockets to try, in order; an explicit path or $LABD_SOCKET is the only one."""
    if explicit:
        return [Path(explicit)]
    if env := os.environ.get("LABD_SOCKET"):
        return [Path(env)]
    return [user_socket(), SYSTEM_SOCKET]


def cache_dir() -> Path:
    """Where the client writes local copies (config snapshots) for the user."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labd"


def not_running(tried: list[str]) -> str:
    """The cannot-connect message: every socket tried, and how to pick one."""
    return ("labd is not running or not reachable; tried " + "; ".join(tried)
            + f". {HOW_TO_CHOOSE[0].upper()}{HOW_TO_CHOOSE[1:]}.")


def connect_failure(path: Path, exc: OSError) -> str:
    """Why one socket could not be used, in words a user can act on."""
    if isinstance(exc, FileNotFoundError):
        return f"{path} (no such socket)"
    if isinstance(exc, ConnectionRefusedError):
        return f"{path} (nothing listening)"
    if isinstance(exc, PermissionError):
        return f"{path} (permission denied: ask an admin to add you to the labd group)"
    return f"{path} ({exc.strerror or exc})"
