"""Calibration (issue #13): config updates from a job's fit, and calibrate-when-stale.

**Updates.** An experiment declares the config keys its fit updates
(``Experiment.calibrates``, data only: experiments.base.CalibrationUpdate). A job submitted
with ``update_main`` stores those declarations, resolved for its qubit. When it ends, the
update is decided *inside the completion path* and stored in the same commit as the job's
end (``Calibrator.deciding``), under the config type's lock, so no push can slip in:

- a job that did not complete, or whose analysis failed, never updates;
- each new value must come from the fit, be finite, inside the declared sane bounds, with
  an error estimate below the declared limits; else nothing is applied (reason recorded);
- the new version is derived from the exact version the job ran with (round-trip YAML:
  comments and layout survive). If main is still that version it becomes main
  (compare-and-set in the commit). If main moved meanwhile, the keys main changed since
  are compared with the job's: no overlap -> the job's keys are applied on top of the
  current main (a three-way merge, per key); overlap -> the proposed version is stored
  but not made main, and the job says why.

The job's ``config_update`` records the outcome: the version, per key old -> new, whether
it was applied or merged, or why not. The version records ``created_by_job_id``.

**Staleness.** Settings name calibrations (keys, experiment, expt config, max age). A key's
age is the time since its value last changed in main's history (by a push, a set-main or
a job's update), or since a calibration job last confirmed it (a ``daemon_state`` row per
key, written in the update's commit), whichever is later. A job that needs fresh keys gets the
stale calibrations submitted first, at its priority, with update_main, chained one after
the other, and the job runs after the last. If one of them fails or its update is not
applied, the job is not run on stale values: it is held, with the reason shown.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from labd_client.protocol import InvalidParams, LabdError
from .config_store import _EXT, parse_content
from .durable import write_new_file
from .models import JobStatus
from .settings import CalibrationSetting
from .store import Op, Store, StoreError
from .yaml_roundtrip import get_path, key_text, parse_key, set_values

if TYPE_CHECKING:
    from .scheduler.core import Scheduler
    from .executor import Outcome

log = logging.getLogger(__name__)

HISTORY_LIMIT = 1000          # main-history entries searched for a key's last change
MAX_OUTCOMES = 10_000         # calibration outcomes kept for the jobs waiting on them
_MISSING = object()


class Refused(Exception):
    """A config update that is not applied; the message says why."""


# ---- pure logic: values, bounds, three-way overlap -----------------------------------
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def new_value(u: dict[str, Any], results: dict[str, Any], old: Any) -> Any:
    """The value a declaration gives from fit results, or Refused."""
    key = u["key"]
    r, err = results.get(u["result"]), results.get(u["error"])
    if not _number(r) or not math.isfinite(r):
        raise Refused(f"{key}: the fit gave no finite {u['result']}")
    if not _number(old):
        raise Refused(f"{key}: holds a {type(old).__name__}, not a number")
    new: float = r if u["mode"] == "set" else old - r
    if u["kind"] == "int":
        new = int(round(new))
    elif u.get("ndigits") is not None:
        new = round(float(new), u["ndigits"])
    else:
        new = float(new)
    lo, hi = u["bounds"]
    if not lo <= new <= hi:
        raise Refused(f"{key}: fitted value {new:g} is outside its sane range "
                      f"[{lo:g}, {hi:g}]")
    if not _number(err) or not math.isfinite(err):
        raise Refused(f"{key}: the fit gave no error estimate ({u['error']})")
    if u.get("max_abs_error") is not None and err > u["max_abs_error"]:
        raise Refused(f"{key}: fit error ±{err:.3g} is above the limit "
                      f"{u['max_abs_error']:g}")
    if u.get("max_rel_error") is not None:
        rel = err / abs(new) if new else math.inf
        if rel > u["max_rel_error"]:
            raise Refused(f"{key}: relative fit error {rel:.1%} is above the limit "
                          f"{u['max_rel_error']:.0%}")
    return new


def leaves(value: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Every leaf of a parsed config by path (lists by index)."""
    if isinstance(value, dict):
        out: dict[tuple, Any] = {}
        for k, v in value.items():
            out.update(leaves(v, prefix + (k,)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, prefix + (i,)))
        return out or {prefix: []}
    return {prefix: value}


def changed_paths(a: Any, b: Any) -> set[tuple]:
    la, lb = leaves(a), leaves(b)
    return {p for p in la.keys() | lb.keys() if la.get(p, _MISSING) != lb.get(p, _MISSING)}


def overlapping(changed: set[tuple], path: tuple) -> bool:
    """Whether a change at any of ``changed`` touches ``path`` (same, above or below)."""
    return any(p[:len(path)] == path or path[:len(p)] == p for p in changed)


def first_qubit(cfg: Any) -> int:
    # getattr, not the instance's __dict__: an extra of a model that allows extras, or a
    # property, holds qubits elsewhere (a miss costs pydantic ~3 us per submit)
    qubits = getattr(cfg, "qubits", None)
    return int(qubits[0]) if qubits else 0


def normalize_key(key: str) -> str:
    try:
        return key_text(parse_key(key))
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None


def _age_s(since: str | None) -> float:
    if since is None:
        return math.inf
    return (datetime.now(timezone.utc) - datetime.fromisoformat(since)).total_seconds()


# ---- the completion path ---------------------------------------------------------------
@dataclass
class Decision:
    """Ops to commit with the job's end, and what to do once they are (or are not)."""
    ops: list[Op] = field(default_factory=list)
    record: dict[str, Any] | None = None
    type_name: str | None = None
    main_to: str | None = None          # the version main becomes
    created: Path | None = None         # a snapshot file written for it
    done: bool = False
    on_commit: Any = None

    def committed(self) -> None:
        """Call at once after the commit, before anything else may start a job."""
        self.done = True
        if self.on_commit is not None:
            self.on_commit()


PARSED_VERSIONS_MAX = 512   # parsed main versions kept for key ages (a few kB each)


class Calibrator:
    """Scheduler-side state: jobs that update main when they end, jobs waiting for
    calibrations, what each calibration decided, and calibrations not final yet."""

    def __init__(self, sched: "Scheduler") -> None:
        self.sched = sched
        self.store = sched.store
        self.configs = sched.configs
        self.updating: set[str] = set()              # jobs with update_main, not final
        self.linked: dict[str, list[str]] = {}       # job -> calibration jobs it needs
        # calibration job -> None (its update applied) or why its keys are not fresh
        self.outcomes: OrderedDict[str, str | None] = OrderedDict()
        self.active_cal: dict[str, str] = {}         # setting name -> its job, not final
        # submits that need fresh keys plan and enqueue one at a time, so two of them
        # never start the same calibration twice
        self.planning = asyncio.Lock()
        self._parsed: OrderedDict[str, Any] = OrderedDict()   # version -> parsed (LRU)

    async def load(self) -> None:
        """At start: the not-final jobs that update main or wait for calibrations, and
        the outcomes of the calibrations they wait for."""
        deps: set[str] = set()
        for r in await self.store.calibration_rows():
            if r["update_main"]:
                self.updating.add(r["job_id"])
            if r["calibrated_by"]:
                self.linked[r["job_id"]] = json.loads(r["calibrated_by"])
                deps.update(self.linked[r["job_id"]])
        if deps:
            for r in await self.store.job_outcome_rows(sorted(deps)):
                self._note_final(r["job_id"], r["status"], r["error_message"],
                                 json.loads(r["config_update"]) if r["config_update"]
                                 else None)

    def _note_outcome(self, job_id: str, why: str | None) -> None:
        self.outcomes[job_id] = why
        while len(self.outcomes) > MAX_OUTCOMES:
            self.outcomes.popitem(last=False)

    def _note_final(self, job_id: str, status: str, message: str | None,
                    record: dict[str, Any] | None) -> None:
        if status != JobStatus.COMPLETED:
            why: str | None = f"it {status}" + (f" ({message})" if message else "")
        elif record is None:
            why = "its update was not decided"
        elif record.get("applied"):
            why = None
        else:
            why = f"its update was not applied: {record.get('reason')}"
        self._note_outcome(job_id, why)

    # -- submit ---------------------------------------------------------------------
    def submit_ops(self, jobs: list[dict[str, Any]]) -> list[Op]:
        """For enqueue, once IDs are assigned: calibrations submitted with a job are
        referred to by their place in the list; resolve, and the ops that store the
        calibration columns (in the insert's commit)."""
        ops = []
        for j in jobs:
            if (i := j.pop("after_index", None)) is not None:
                j["after_job"] = jobs[i]["job_id"]
            refs = j.pop("calibrated_by_refs", None)
            if refs:
                j["calibrated_by"] = [jobs[r]["job_id"] if isinstance(r, int) else r
                                      for r in refs]
            if j.get("update_main") or j.get("calibrated_by") or j.get("fresh"):
                ops.append(Store.set_calibration_fields(
                    j["job_id"], bool(j.get("update_main")), j.get("calibration"),
                    j.get("fresh"), j.get("calibrated_by")))
        return ops

    def enqueued(self, jobs: list[dict[str, Any]]) -> None:
        for j in jobs:
            if j.get("update_main"):
                self.updating.add(j["job_id"])
            if j.get("calibrated_by"):
                self.linked[j["job_id"]] = list(j["calibrated_by"])
            if j.get("calibration_setting"):
                self.active_cal[j["calibration_setting"]] = j["job_id"]

    # -- dependencies -----------------------------------------------------------------
    def blocked(self, job_id: str, dep_id: str, status: str | None) -> str | None:
        """Why a job that waited for calibrations must not run now that ``dep_id`` is
        final (None: run it, or treat it as a plain dependency)."""
        cals = self.linked.get(job_id)
        if cals is None or dep_id != cals[-1]:
            return None
        del self.linked[job_id]
        for cal in cals:
            if cal == dep_id and status != JobStatus.COMPLETED:
                why: str | None = f"it {status or 'does not exist'}"
                why = self.outcomes.get(cal) or why
            else:
                why = self.outcomes.get(cal)
            if why is not None:
                return (f"calibration {cal} did not refresh its keys ({why}); held so it "
                        "does not run on stale values: release it to run anyway")
        return None

    async def store_hold(self, job_id: str, why: str) -> None:
        try:
            await self.store.write(Store.hold_for_calibration(job_id, why))
        except StoreError as exc:
            log.error("%s is held in memory, but the hold was not stored: %s", job_id, exc)
        self.sched.states.publish(job_id, JobStatus.PENDING, held=True, hold_reason=why)

    # -- completion ---------------------------------------------------------------------
    @asynccontextmanager
    async def deciding(self, job_id: str, out: "Outcome") -> AsyncIterator[Decision]:
        """Decide a job's config update and hold the config lock until the caller has
        committed the ops with the job's end (``Decision.committed``) or given up."""
        if job_id not in self.updating:
            yield Decision()
            return
        self.updating.discard(job_id)
        for name, jid in list(self.active_cal.items()):
            if jid == job_id:
                del self.active_cal[name]
        try:
            row = await self.store.get_job_row(job_id)
            decl = json.loads(row["calibration"]) if row and row["calibration"] else None
            lock = self.configs._locks[decl["config_type"]] if decl else None
        except Exception as exc:   # never lose the job's end over its update
            log.exception("reading the config update of %s", job_id)
            d = Decision(record={"applied": False, "reason": f"its update could not be "
                                 f"read ({type(exc).__name__})"})
            d.ops.append(Store.set_config_update(job_id, d.record))
            yield d
            return
        if decl is None or lock is None:
            yield Decision()
            return
        type_name = decl["config_type"]
        if out.reason.status is not JobStatus.COMPLETED or out.error_message:
            why = (f"the job {out.reason.status.value} ({out.reason.value}): only a job "
                   "that completed with a successful fit updates main"
                   if out.reason.status is not JobStatus.COMPLETED else
                   "the analysis failed: no fit to update main with")
            d = Decision(record={"applied": False, "reason": why})
            d.ops.append(Store.set_config_update(job_id, d.record))
            d.on_commit = lambda: self._note_outcome(
                job_id, f"it {out.reason.status.value}" + (
                    f" ({out.error_message})" if out.error_message else ""))
            yield d
            return
        async with lock:
            try:
                d = await self._decide(job_id, row, decl, out.results or {})
            except LabdError as exc:   # e.g. the version it ran with is damaged
                d = Decision(record={"applied": False, "reason": exc.message})
            except Exception as exc:   # never lose the job's end over its update
                log.exception("config update of %s", job_id)
                d = Decision(record={"applied": False, "reason": f"internal error: "
                                     f"{type(exc).__name__}; the daemon log has details"})
            d.ops.append(Store.set_config_update(job_id, d.record or {}))

            def commit(d: Decision = d) -> None:
                if d.main_to is not None:
                    self.configs.main[type_name] = d.main_to
                rec = d.record or {}
                self._note_outcome(job_id, None if rec.get("applied") else
                                   f"its update was not applied: {rec.get('reason')}")
            d.on_commit = commit
            try:
                yield d
            finally:
                if not d.done and d.created is not None:
                    d.created.unlink(missing_ok=True)   # rolled back: never referenced

    async def _text(self, version_id: str) -> str:
        row = await self.configs._row(version_id)
        return await asyncio.to_thread(self.configs.read_verified, row)

    async def _decide(self, job_id: str, row: Any, decl: dict[str, Any],
                      results: dict[str, Any]) -> Decision:
        type_name = decl["config_type"]
        ctype = self.configs.ctype(type_name)
        base_vid = json.loads(row["config_versions"] or "{}").get(type_name)
        if base_vid is None:
            return Decision(record={"applied": False,
                                    "reason": f"the job ran without a {type_name}"})
        base_text = await self._text(base_vid)
        base = await asyncio.to_thread(parse_content, ctype, base_text)
        values: dict[tuple, Any] = {}
        changes: dict[str, dict[str, Any]] = {}
        try:
            for u in decl["updates"]:
                path = parse_key(u["key"])
                try:
                    old = get_path(base, path)
                except KeyError as exc:
                    raise Refused(f"{exc.args[0]} in {base_vid}") from None
                values[path] = new_value(u, results, old)
                changes[u["key"]] = {"old": old, "new": values[path]}
        except Refused as exc:
            return Decision(record={"applied": False, "base_version": base_vid,
                                    "reason": str(exc)})
        main_vid = self.configs.main.get(type_name)
        rec: dict[str, Any] = {"base_version": base_vid, "changes": changes}
        target_vid, target_text = base_vid, base_text
        clash: list[str] = []
        if main_vid != base_vid and main_vid is not None:
            main_text = await self._text(main_vid)
            main = await asyncio.to_thread(parse_content, ctype, main_text)
            moved = changed_paths(base, main)

            def clashes(p: tuple) -> bool:     # main changed it too, to another value
                if not overlapping(moved, p):
                    return False
                try:
                    return get_path(main, p) != values[p]
                except KeyError:
                    return True
            clash = [key_text(p) for p in values if clashes(p)]
            if not clash:
                target_vid, target_text = main_vid, main_text
                for p in values:    # the old values as main has them (the same: no overlap)
                    changes[key_text(p)]["old"] = get_path(main, p)
                rec["merged_with"] = main_vid
        new_text = await asyncio.to_thread(set_values, ctype, target_text, values)
        summary = "; ".join(f"{k} {c['old']} -> {c['new']}" for k, c in changes.items())
        by = f"{row['os_user']} (update_main of {job_id})"
        d = Decision(record=rec, type_name=type_name)
        if new_text == target_text and not clash:
            vid = target_vid                        # the fit confirmed the values
        else:
            vid, d.created, ops = await self._version(
                type_name, new_text, by, f"{job_id} {row['experiment_class']}: {summary}",
                job_id)
            d.ops.extend(ops)
        rec["version_id"] = vid
        if clash:
            rec.update(applied=False, reason=(
                f"main moved from {base_vid} to {main_vid} while the job ran and changed "
                f"{', '.join(clash)} too; the proposed version {vid} is kept, not made main "
                f"(labctl config set-main {type_name} {vid} to apply it)"))
            return d
        rec["applied"] = True
        if vid != main_vid:
            d.ops.append(Store.set_config_main(type_name, vid, by, main_vid))
            d.main_to = vid
        else:
            rec["unchanged"] = True
        for key in changes:
            d.ops.append(Store.key_calibrated(type_name, key, job_id, vid))
        return d

    async def _version(self, type_name: str, content: str, by: str, message: str,
                       job_id: str) -> tuple[str, Path | None, list[Op]]:
        """A version for content: an identical existing one, else a new snapshot file and
        the ops inserting it (the caller holds the type's lock)."""
        data = content.encode()
        sha = hashlib.sha256(data).hexdigest()
        row = await self.store.config_version_by_hash(type_name, sha)
        if row is not None:
            return row["version_id"], None, []
        t = self.configs.ctype(type_name)
        counter = self.configs.counters[type_name]
        vid = counter.next()
        filename = f"{vid}{_EXT[t.format]}"
        path = self.configs.dir / filename
        await asyncio.to_thread(write_new_file, path, data)
        return vid, path, [
            Store.insert_job_config_version(vid, type_name, sha, len(data), filename, by,
                                            message, job_id),
            Store.counter(counter.row())]

    # -- staleness ------------------------------------------------------------------------
    async def parsed_version(self, version_id: str) -> Any:
        if version_id in self._parsed:
            self._parsed.move_to_end(version_id)
            return self._parsed[version_id]
        row = await self.configs._row(version_id)
        text = await asyncio.to_thread(self.configs.read_verified, row)
        value = await asyncio.to_thread(parse_content, self.configs.ctype(row["type"]), text)
        self._parsed[version_id] = value
        while len(self._parsed) > PARSED_VERSIONS_MAX:
            self._parsed.popitem(last=False)
        return value

    async def key_changed_at(self, type_name: str, key: str) -> str | None:
        """When the key's current value in main was set: the oldest entry of main's
        history from which on it has had that value, or a later calibration that
        confirmed it. None if main has no such key."""
        path = parse_key(key)
        history = await self.store.config_main_history(type_name, HISTORY_LIMIT)
        since, current = None, _MISSING
        for i, h in enumerate(history):         # newest first
            try:
                value = get_path(await self.parsed_version(h["version_id"]), path)
            except KeyError:
                value = _MISSING
            if i == 0:
                if value is _MISSING:
                    return None
                current = value
            elif value != current:
                break
            since = h["set_at"]
        confirmed = await self.store.key_calibrated_at(type_name, key)
        return max(s for s in (since, confirmed) if s is not None)

    def covering(self, key: str) -> CalibrationSetting | None:
        for s in self.sched.settings.calibrations:
            if key in {normalize_key(k) for k in s.keys}:
                return s
        return None

    async def stale(self, keys: Iterable[str], required: set[str]
                    ) -> list[tuple[CalibrationSetting, list[str]]]:
        """The calibrations to run first for keys needed fresh, with their stale keys, in
        settings order. ``required`` (explicitly asked for) must be covered and exist."""
        stale: dict[str, list[str]] = {}
        for key in keys:
            s = self.covering(key)
            if s is None:
                if key in required:
                    names = [k for c in self.sched.settings.calibrations for k in c.keys]
                    raise InvalidParams(
                        f"fresh: no calibration in the daemon settings covers {key} "
                        f"(covered: {', '.join(names) or 'none'})")
                continue
            changed = await self.key_changed_at(s.config_type, key)
            if changed is None:
                raise InvalidParams(f"fresh: {key} does not exist in main {s.config_type} "
                                    f"({self.configs.main.get(s.config_type)})")
            if _age_s(changed) > s.max_age_s:
                stale.setdefault(s.name, []).append(key)
        return [(s, stale[s.name]) for s in self.sched.settings.calibrations
                if s.name in stale]

    def active_calibration(self, name: str) -> str | None:
        jid = self.active_cal.get(name)
        return jid if jid is not None and jid in self.sched.active else None
