"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING): one datagram to
$NOTIFY_SOCKET. A no-op when not run by systemd."""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.addr = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s = int(usec) / 1e6 if usec and (pid is None or pid == str(os.getpid())) \
            else None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.addr else None
        if self._sock is not None:
            self._sock.setblocking(False)  # a full notify queue must never stall the loop

    def send(self, **fields: object) -> None:
        if self._sock is None:
            return
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(msg.encode(), self.addr)
        except OSError:  # includes BlockingIOError: drop it, the next one will tell
            pass
