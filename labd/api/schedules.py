"""Recurring submits (issue #13): add, list, pause, resume, remove, fires. The owner (or an
admin) may change a schedule; anyone may list them."""
from __future__ import annotations

from typing import Any

from labd_client.protocol import Unavailable
from . import Call, rpc
from .params import ScheduleAdd, ScheduleFires, ScheduleList, ScheduleRef


def _schedules(call: Call) -> Any:
    s = call.app.schedules
    if s is None:
        raise Unavailable("schedules are not running in this labd")
    return s


@rpc("schedule.add", ScheduleAdd)
async def schedule_add(call: Call, p: ScheduleAdd) -> dict[str, Any]:
    """Validated like a submit of ``p.submit`` by the caller; fires as the caller."""
    return await _schedules(call).add(call, p)


@rpc("schedule.list", ScheduleList)
async def schedule_list(call: Call, p: ScheduleList) -> dict[str, Any]:
    return {"schedules": await _schedules(call).list(p.os_user)}


@rpc("schedule.pause", ScheduleRef)
async def schedule_pause(call: Call, p: ScheduleRef) -> dict[str, Any]:
    return await _schedules(call).pause(call, p.schedule_id)


@rpc("schedule.resume", ScheduleRef)
async def schedule_resume(call: Call, p: ScheduleRef) -> dict[str, Any]:
    return await _schedules(call).resume(call, p.schedule_id)


@rpc("schedule.remove", ScheduleRef)
async def schedule_remove(call: Call, p: ScheduleRef) -> dict[str, Any]:
    return await _schedules(call).remove(call, p.schedule_id)


@rpc("schedule.fires", ScheduleFires)
async def schedule_fires(call: Call, p: ScheduleFires) -> dict[str, Any]:
    """A schedule's firings, newest first: submitted (with the job), skipped, failed."""
    return {"schedule_id": p.schedule_id,
            "fires": await _schedules(call).fires(p.schedule_id, p.limit)}
