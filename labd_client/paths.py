"""Where the daemon's socket is: $LABD_SOCKET, else a per-user daemon's socket if one is
running, else the system daemon's."""
from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/labd-socket/labd.sock")


def default_socket() -> Path:
    if env := os.environ.get("LABD_SOCKET"):
        return Path(env)
    from labd.settings import default_socket_path
    user = default_socket_path()
    return user if user.exists() else SYSTEM_SOCKET
