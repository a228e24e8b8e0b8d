"""Who is on the other end of the socket, from the kernel (SO_PEERCRED), never from the
client's own claim. Admins: members of the admin group, listed admin users, root, and the
account the daemon runs as.

SO_PEERCRED gives the credentials of whoever called connect(): a connected socket passed
to another process (SCM_RIGHTS, fork) still speaks as its opener. Group membership, in
contrast, can change while a connection stays open, so admin rights are asked again on
every privileged call (cheaply: cached until the group database changes, and ≤ 1 s)."""
from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

GROUP_DB = Path("/etc/group")


class Peer:
    """A connected client. ``is_admin`` is asked of the policy at each use (or fixed, for
    in-process callers and tests)."""
    __slots__ = ("uid", "gid", "pid", "username", "_admin", "_policy")

    def __init__(self, uid: int, gid: int, pid: int, username: str,
                 is_admin: bool | None = None, policy: "AdminPolicy | None" = None) -> None:
        self.uid, self.gid, self.pid, self.username = uid, gid, pid, username
        self._admin, self._policy = is_admin, policy

    @property
    def is_admin(self) -> bool:
        if self._policy is not None:
            return self._policy.is_admin(self.uid)
        return bool(self._admin)

    def __repr__(self) -> str:
        return f"Peer(uid={self.uid}, username={self.username!r}, pid={self.pid})"


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


def group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class AdminPolicy:
    """Admin membership, looked up again when the group database changes (its mtime) and
    at least every ``max_age_s`` (for NSS sources without a file). Lookups are injectable
    for tests."""

    def __init__(self, admin_group: str, admin_users: list[str], *,
                 group_db: Path = GROUP_DB,
                 lookup_gid: Callable[[str], int | None] = group_gid,
                 groups_of: Callable[[int], set[int]] = user_groups,
                 clock: Callable[[], float] = time.monotonic,
                 max_age_s: float = 1.0) -> None:
        self.admin_group = admin_group
        self.admin_users = set(admin_users)
        self._group_db, self._lookup_gid, self._groups_of = group_db, lookup_gid, groups_of
        self._clock, self._max_age = clock, max_age_s
        self._cache: dict[int, tuple[object, float, bool]] = {}  # uid -> (stamp, at, admin)

    def _stamp(self) -> object:
        try:
            st = self._group_db.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def is_admin(self, uid: int) -> bool:
        if uid in (0, os.geteuid()) or username(uid) in self.admin_users:
            return True
        stamp, now = self._stamp(), self._clock()
        hit = self._cache.get(uid)
        if hit is not None and hit[0] == stamp and now - hit[1] <= self._max_age:
            return hit[2]
        gid = self._lookup_gid(self.admin_group)
        admin = gid is not None and gid in self._groups_of(uid)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[uid] = (stamp, now, admin)
        return admin

    def peer(self, sock: socket.socket) -> Peer:
        pid, uid, gid = peer_credentials(sock)
        return Peer(uid=uid, gid=gid, pid=pid, username=username(uid), policy=self)
