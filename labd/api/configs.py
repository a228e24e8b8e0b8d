"""Config version methods: push, pull, versions, show, set main, history, diff, verify."""
from __future__ import annotations

from typing import Any

from . import Call, rpc
from .params import ConfigDiff, ConfigList, ConfigPush, ConfigTypeRef, NoParams, SetMain, \
    VersionRef


@rpc("config.push", ConfigPush)
async def config_push(call: Call, p: ConfigPush) -> dict[str, Any]:
    return await call.app.configs.push(p.type, p.content, call.peer.username, p.message,
                                       p.expected_main)


@rpc("config.pull", ConfigTypeRef)
async def config_pull(call: Call, p: ConfigTypeRef) -> dict[str, Any]:
    return await call.app.configs.pull(p.type)


@rpc("config.versions", ConfigList)
async def config_versions(call: Call, p: ConfigList) -> dict[str, Any]:
    return {"type": p.type, "main": call.app.configs.main.get(p.type),
            "versions": await call.app.configs.versions(p.type, p.limit)}


@rpc("config.show", VersionRef)
async def config_show(call: Call, p: VersionRef) -> dict[str, Any]:
    return await call.app.configs.show(p.version_id)


@rpc("config.set_main", SetMain)
async def config_set_main(call: Call, p: SetMain) -> dict[str, Any]:
    return await call.app.configs.set_main(p.type, p.version_id, call.peer.username)


@rpc("config.history", ConfigList)
async def config_history(call: Call, p: ConfigList) -> dict[str, Any]:
    return {"type": p.type, "history": await call.app.configs.main_history(p.type, p.limit)}


@rpc("config.diff", ConfigDiff)
async def config_diff(call: Call, p: ConfigDiff) -> dict[str, Any]:
    return {"a": p.a, "b": p.b, "diff": await call.app.configs.diff(p.a, p.b)}


@rpc("config.verify")
async def config_verify(call: Call, p: NoParams) -> dict[str, Any]:
    return await call.app.configs.verify()


@rpc("config.types")
async def config_types(call: Call, p: NoParams) -> dict[str, Any]:
    c = call.app.configs
    return {"types": [{**t.model_dump(), "main": c.main.get(t.name)}
                      for t in c.types.values()]}


# ---- (sched) the history of one parameter, issue #13 -----------------------------------
from .params import ConfigTrace  # noqa: E402  (kept inside this block)


@rpc("config.trace", ConfigTrace)
async def config_trace(call: Call, p: ConfigTrace) -> dict[str, Any]:
    """Each value ``p.key`` has had in main, oldest first, with when, version and who."""
    from ..config_trace import trace
    return await trace(call.app.configs, p.type, p.key, p.limit)
# ---- end of (sched) ----------------------------------------------------------------------
