"""Who may do what, one function per rule. Identity comes from the kernel (SO_PEERCRED);
``peer.is_admin`` is rechecked by the identity layer on each use."""
from __future__ import annotations

from labd_client.protocol import InvalidParams, PermissionDenied
from ..identity import Peer
from ..settings import Settings


def require_owner(peer: Peer, owner_uid: int, job_id: str, action: str) -> None:
    """Owner (same account) or admin."""
    if not (peer.uid == owner_uid or peer.is_admin):
        raise PermissionDenied(f"{peer.username} may not {action} {job_id}: it belongs "
                               f"to another account (owner or an admin only)")


def require_admin(peer: Peer, what: str) -> None:
    if not peer.is_admin:
        raise PermissionDenied(f"only an admin may {what}")


def check_priority_range(s: Settings, priority: int) -> None:
    if not s.priority_min <= priority <= s.priority_max:
        raise InvalidParams(f"priority must be between {s.priority_min} and "
                            f"{s.priority_max}")


def check_submit_priority(s: Settings, peer: Peer, priority: int) -> None:
    check_priority_range(s, priority)
    if priority > s.priority_cap and not peer.is_admin:
        raise PermissionDenied(f"priority {priority} is above the cap {s.priority_cap}; "
                               "only an admin may submit above it")


def check_reprioritize(s: Settings, peer: Peer, old: int, new: int) -> None:
    """Owners may lower a job's priority; raising it takes an admin."""
    check_priority_range(s, new)
    if new > old and not peer.is_admin:
        raise PermissionDenied(f"only an admin may raise a job's priority "
                               f"({old} -> {new}); you may lower it")


def resubmit_priority(s: Settings, peer: Peer, original: int) -> int:
    """rerun/retry keep the priority if the caller could submit at it, else get the cap."""
    return original if original <= s.priority_cap or peer.is_admin else s.priority_cap
