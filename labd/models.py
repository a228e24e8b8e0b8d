"""The job record shared by store, scheduler, RPC replies and clients, and its status enum.
Both live in ``labd_client.protocol`` (shared with the clients, which import no daemon
code); re-exported here so daemon modules keep their imports. (Request params are
validated by the models in ``labd.api.params``.)"""
from __future__ import annotations

from datetime import datetime, timezone

from labd_client.protocol import Job, JobStatus  # noqa: F401


def utcnow() -> str:
    """UTC ISO-8601 with offset; the predecessor's naive local times were ambiguous."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
