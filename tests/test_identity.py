"""Admin rights are asked again on each privileged call, not kept from connect (issue #15):
an AdminPolicy over a fake group database, with injectable lookups and clock."""
from __future__ import annotations

import os

from labd.identity import AdminPolicy, Peer

ALICE = 4242
ADMINS = 777


class Lab:
    """A group database file, who is in which group, and a clock the test moves."""

    def __init__(self, tmp_path) -> None:
        self.db = tmp_path / "group"
        self.db.write_text("labd-admin:x:777:alice\n")
        self.members = {ALICE: {100, ADMINS}}
        self.now = 0.0
        self.lookups = 0
        self.policy = AdminPolicy("labd-admin", [], group_db=self.db,
                                  lookup_gid=lambda name: ADMINS, groups_of=self.groups,
                                  clock=lambda: self.now)

    def groups(self, uid: int) -> set[int]:
        self.lookups += 1
        return self.members.get(uid, set())

    def leave_admin_group(self, edit_file: bool) -> None:
        self.members[ALICE] = {100}
        if edit_file:
            self.db.write_text("labd-admin:x:777:\n")
            st = self.db.stat()
            os.utime(self.db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    def peer(self) -> Peer:
        return Peer(uid=ALICE, gid=100, pid=1, username="alice", policy=self.policy)


def test_leaving_the_admin_group_takes_effect_on_the_next_call(tmp_path):
    lab = Lab(tmp_path)
    alice = lab.peer()                 # connected while an admin
    assert alice.is_admin
    lab.leave_admin_group(edit_file=True)
    assert not alice.is_admin


def test_without_a_file_change_the_answer_is_at_most_a_second_old(tmp_path):
    lab = Lab(tmp_path)
    alice = lab.peer()
    assert alice.is_admin
    lab.leave_admin_group(edit_file=False)   # e.g. an LDAP group: no file changes
    lab.now += 0.5
    assert alice.is_admin                    # cached...
    lab.now += 0.6
    assert not alice.is_admin                # ...for at most a second


def test_the_recheck_is_cheap(tmp_path):
    lab = Lab(tmp_path)
    alice = lab.peer()
    for _ in range(1000):
        assert alice.is_admin
    assert lab.lookups == 1


def test_fixed_peers_and_root_need_no_lookup(tmp_path):
    lab = Lab(tmp_path)
    assert Peer(uid=5, gid=5, pid=1, username="x", is_admin=True).is_admin
    assert not Peer(uid=5, gid=5, pid=1, username="x", is_admin=False).is_admin
    assert Peer(uid=0, gid=0, pid=1, username="root", policy=lab.policy).is_admin
    assert lab.lookups == 0
