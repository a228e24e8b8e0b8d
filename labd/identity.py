"""Who is on the other end of the socket, from the kernel (SO_PEERCRED), never from the
client's own claim. Admins: members of the admin group, listed admin users, root, and the
account the daemon runs as."""
from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Peer:
    uid: int
    gid: int
    pid: int
    username: str
    is_admin: bool


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected to a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


@lru_cache(maxsize=1024)
def username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def user_groups(uid: int) -> set[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(pw.pw_name, pw.pw_gid))


class AdminPolicy:
    def __init__(self, admin_group: str, admin_users: list[str]) -> None:
        self.admin_users = set(admin_users)
        try:
            self.admin_gid: int | None = grp.getgrnam(admin_group).gr_gid
        except KeyError:
            self.admin_gid = None

    def is_admin(self, uid: int) -> bool:
        if uid in (0, os.geteuid()) or username(uid) in self.admin_users:
            return True
        return self.admin_gid is not None and self.admin_gid in user_groups(uid)

    def peer(self, sock: socket.socket) -> Peer:
        pid, uid, gid = peer_credentials(sock)
        return Peer(uid=uid, gid=gid, pid=pid, username=username(uid),
                    is_admin=self.is_admin(uid))
