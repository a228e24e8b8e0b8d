"""Notification methods (issue #12): each account manages its own webhook targets; admins
may list, test and remove anyone's. Delivery itself is ``labd.notify.WebhookSender``."""
from __future__ import annotations

from typing import Any

from labd_client.protocol import Conflict, LimitExceeded, NotFound, PermissionDenied, \
    Unavailable
from ..notify import Target, WebhookSender
from ..scheduler import policy
from ..store import PreconditionFailed
from . import Call, rpc
from .params import NotifyAdd, NotifyList, NotifyRef


def _sender(call: Call) -> WebhookSender:
    sender = call.app.webhooks
    if sender is None:
        raise Unavailable("notifications are not running in this labd")
    return sender


def _own(call: Call, target_id: str, action: str) -> Target:
    t = _sender(call).targets.get(target_id)
    if t is None:
        raise NotFound(f"no notification target {target_id} (labctl notify list shows "
                       "yours)")
    if t.os_uid != call.peer.uid and not call.peer.is_admin:
        raise PermissionDenied(f"{call.peer.username} may not {action} {target_id}: it "
                               "belongs to another account (owner or an admin only)")
    return t


def _view(call: Call, t: Target) -> dict[str, Any]:
    return t.public(full_url=t.os_uid == call.peer.uid)


@rpc("notify_add", NotifyAdd)
async def notify_add(call: Call, p: NotifyAdd) -> dict[str, Any]:
    """A webhook (JSON POST with a ``text`` field) when one of your jobs ends (``all``),
    fails (``failures``) or when the last job of one of your batches ends (``batch``)."""
    sender = _sender(call)
    sender.allow.check(p.url)
    for t in sender.of(call.peer.uid):
        if t.url == p.url and t.on == p.on:
            raise Conflict(f"you already have {t.id} for this URL with on={p.on}")
    try:
        t = await sender.add(call.peer.uid, call.peer.username, p.url, p.on)
    except PreconditionFailed:
        raise LimitExceeded(f"an account may have at most "
                            f"{call.app.settings.notify_max_targets_per_user} notification "
                            "targets; remove one first (labctl notify remove ID)") from None
    return _view(call, t)


@rpc("notify_list", NotifyList)
async def notify_list(call: Call, p: NotifyList) -> dict[str, Any]:
    """Your targets (``all``: every account's, admins only; others' URLs redacted)."""
    if p.all:
        policy.require_admin(call.peer, "list every account's notification targets")
    targets = _sender(call).of(None if p.all else call.peer.uid)
    return {"targets": [_view(call, t) for t in targets]}


@rpc("notify_remove", NotifyRef)
async def notify_remove(call: Call, p: NotifyRef) -> dict[str, Any]:
    t = _own(call, p.id, "remove")
    try:
        await _sender(call).remove(t.id)
    except PreconditionFailed:
        raise NotFound(f"no notification target {p.id} (already removed)") from None
    return {"id": t.id, "removed": True}


@rpc("notify_test", NotifyRef)
async def notify_test(call: Call, p: NotifyRef) -> dict[str, Any]:
    """Send a test message now (one attempt, bounded by notify_timeout_s) and say how it
    went."""
    t = _own(call, p.id, "test")
    message = {"text": f"labd: test message for {t.os_user} ({t.id}, on={t.on}), sent by "
                       f"{call.peer.username}", "event": "test", "target": t.id}
    error = await _sender(call).deliver_now(t, message)
    return {"id": t.id, "ok": error is None, "error": error}


@rpc("notify_status", NotifyList)
async def notify_status(call: Call, p: NotifyList) -> dict[str, Any]:
    """The delivery queue (length, dropped, backlog) and each of your targets' latest
    outcome and counters (``all``: every account's, admins only)."""
    if p.all:
        policy.require_admin(call.peer, "see every account's notification status")
    sender = _sender(call)
    return {**sender.status(),
            "targets": [_view(call, t) for t in sender.of(None if p.all else call.peer.uid)]}

