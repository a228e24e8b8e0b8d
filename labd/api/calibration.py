"""Submit-side calibration (issue #13): ``update_main`` checked against the experiment's
declarations and the config it would run with; ``fresh`` keys (and an experiment's
``needs_fresh``) turned into the stale calibrations to submit first. Both refuse bad input
with an invalid-params error that says what to change; nothing is stored here."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from labd_client.protocol import InvalidParams, LabdError
from ..calibration import _number, first_qubit, normalize_key
from ..yaml_roundtrip import get_path, parse_key
from . import Call
from .params import SubmitParams


async def check_submit(call: Call, p: SubmitParams, loaded: Any, cfg: Any,
                       job: dict[str, Any]) -> None:
    """Validate update_main and fresh for one job; adds the calibration fields to it."""
    app, cls = call.app, loaded.cls
    qubit = first_qubit(cfg)
    if p.update_main:
        if not cls.calibrates:
            raise InvalidParams(
                f"update_main: {p.experiment_class} is not a calibration (it declares no "
                "config keys its fit updates); calibrations are e.g. "
                "AmplitudeRabiExperiment, T2RamseyExperiment, T1Experiment, "
                "ResonatorSpectroscopyExperiment")
        updates = [u.resolved(qubit) for u in cls.calibrates]
        types = {u["config_type"] for u in updates}
        if len(types) != 1:
            raise InvalidParams(f"update_main: {p.experiment_class} updates keys of "
                                f"several config types ({', '.join(sorted(types))}); "
                                "only one is supported")
        [type_name] = types
        ctype = app.configs.ctype(type_name)
        if ctype.format != "yaml":
            raise InvalidParams(f"update_main: {type_name} is {ctype.format}; only YAML "
                                "configs are updated by calibrations")
        vid = job["pinned_versions"].get(type_name) or app.configs.main.get(type_name)
        if vid is None:
            raise InvalidParams(f"update_main: there is no {type_name} to update; push "
                                f"one first (labctl config push {type_name} FILE)")
        parsed = await app.scheduler.calibration.parsed_version(vid)
        for u in updates:
            try:
                old = get_path(parsed, parse_key(u["key"]))
            except KeyError as exc:
                raise InvalidParams(
                    f"update_main: {p.experiment_class} updates {u['key']} (qubit "
                    f"{qubit}), but {exc.args[0]} in {type_name} {vid}") from None
            if not _number(old):
                raise InvalidParams(
                    f"update_main: {u['key']} in {type_name} {vid} holds a "
                    f"{type(old).__name__} ({str(old)[:40]!r}), but {p.experiment_class} "
                    f"writes a number ({u['kind']}) there: the types differ")
        job["update_main"] = True
        job["calibration"] = {"config_type": type_name, "updates": updates}
    fresh: list[str] = []
    for k in [*p.fresh, *(k.format(qubit=qubit) for k in cls.needs_fresh)]:
        k = normalize_key(k)
        if k not in fresh:
            fresh.append(k)
    if fresh:
        job["fresh"] = fresh
        job["fresh_required"] = {normalize_key(k) for k in p.fresh}


Prepare = Callable[[Call, SubmitParams, "str | None"], Awaitable[dict[str, Any]]]


async def enqueue(call: Call, items: list[tuple[SubmitParams, dict[str, Any]]],
                  prepare: Prepare) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """Enqueue prepared jobs, each that needs fresh keys after the stale calibrations it
    needs. Returns all job IDs, the jobs, and where the requested ones are."""
    sched = call.app.scheduler
    if not any(job.get("fresh") for _, job in items):
        jobs = [job for _, job in items]
        return await sched.enqueue(call.peer, jobs), jobs, list(range(len(jobs)))
    async with sched.calibration.planning:
        jobs, at = await _with_calibrations(call, items, prepare)
        return await sched.enqueue(call.peer, jobs), jobs, at


async def _with_calibrations(call: Call, items: list[tuple[SubmitParams, dict[str, Any]]],
                             prepare: Prepare) -> tuple[list[dict[str, Any]], list[int]]:
    """The jobs to enqueue: before each job that needs fresh keys, the stale calibrations
    (chained one after the other; one already pending or running is reused), the job
    after the last. Returns them and where the requested jobs are in the list."""
    calib = call.app.scheduler.calibration
    out: list[dict[str, Any]] = []
    positions: list[int] = []
    new_here: dict[str, int] = {}          # setting name -> index of its job in ``out``
    for p, job in items:
        required = job.pop("fresh_required", set())
        stale = await calib.stale(job.get("fresh", []), required) if job.get("fresh") \
            else []
        if stale:
            refs: list[int | str] = []
            for s, keys in stale:
                if s.config_type in job["pinned_versions"]:
                    raise InvalidParams(
                        f"fresh: {', '.join(keys)} must be recalibrated first, and the job "
                        f"would then run with main {s.config_type}: do not pin "
                        f"{s.config_type}")
                reuse = calib.active_calibration(s.name) if p.after is None else None
                if s.name in new_here:
                    ref: int | str = new_here[s.name]
                elif reuse is not None and not refs:
                    ref = reuse   # it runs at the priority of the most urgent job needing it
                    await call.app.scheduler.raise_priority(reuse, job["priority"])
                else:
                    cal = await _calibration_job(call, s, keys, job, prepare)
                    if refs:
                        prev = refs[-1]
                        cal["after_index" if isinstance(prev, int) else "after_job"] = prev
                    elif p.after is not None:
                        cal["after_job"] = p.after
                    ref = new_here[s.name] = len(out)
                    out.append(cal)
                refs.append(ref)
            job["calibrated_by_refs"] = refs
            last = refs[-1]
            job["after_job"] = None
            if isinstance(last, int):
                job["after_index"] = last
            else:
                job["after_job"] = last
        positions.append(len(out))
        out.append(job)
    return out, positions


async def _calibration_job(call: Call, s: Any, keys: list[str], job: dict[str, Any],
                           prepare: Prepare) -> dict[str, Any]:
    module, _, cls = s.experiment.rpartition(".")
    try:
        cal = await prepare(call, SubmitParams(
            experiment_class=cls, experiment_module=module, experiment_config=s.config,
            user=job["user"], priority=job["priority"], update_main=True), None)
    except LabdError as exc:
        raise InvalidParams(f"fresh: the settings' calibration {s.name} cannot be "
                            f"submitted: {exc.message}") from None
    updated = {u["key"] for u in cal["calibration"]["updates"]}
    missing = [k for k in keys if k not in updated]
    if missing:
        raise InvalidParams(f"fresh: the settings' calibration {s.name} runs {cls}, which "
                            f"does not update {', '.join(missing)} (it updates "
                            f"{', '.join(sorted(updated))})")
    cal["calibration_setting"] = s.name
    return cal
