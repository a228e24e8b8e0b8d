"""labctl: labd from the shell. Every command takes --json for scripts.

Exit codes: 0 ok; 1 the job failed or was cancelled (wait/show of a finished job);
2 bad arguments or parameters; 3 not found; 4 permission denied; 5 conflict (wrong state);
6 cannot reach labd; 7 wait timed out; 8 any other daemon error."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import protocol as errors
from .client import Client
from .results import JobResult
from .views import format_job_line, format_queue, safe

EXIT_CODES = {errors.InvalidParams: 2, errors.MethodNotFound: 2, errors.NotFound: 3,
              errors.PermissionDenied: 4, errors.Conflict: 5, errors.LimitExceeded: 5,
              errors.ConnectionFailed: 6}


def _parse_value(text: str) -> Any:
    """``-p key=value`` values are YAML scalars/lists: 5, 0.1, true, [0, 1], abc."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_expt_config(path: Path | None, pairs: list[str]) -> dict[str, Any]:
    import yaml
    cfg: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text())  # JSON is YAML too
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of expt config keys")
        cfg.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"-p {pair!r}: expected key=value")
        cfg[key] = _parse_value(value)
    return cfg


def resolve_experiment(c: Client, name: str) -> tuple[str, str]:
    """``module.Class``, or a bare class name that is unique in the daemon's catalog."""
    if "." in name:
        module, _, cls = name.rpartition(".")
        return module, cls
    cat = c.experiments()
    found = [e for e in cat if e["class"] == name]
    if len(found) == 1:
        return found[0]["module"], name
    if found:
        raise ValueError(f"{name} is in several modules; give one of: "
                         + ", ".join(f"{e['module']}.{name}" for e in found))
    import difflib
    close = difflib.get_close_matches(name, [e["class"] for e in cat], n=5, cutoff=0.5)
    hint = "; did you mean " + ", ".join(
        f"{e['module']}.{e['class']}" for e in cat if e["class"] in close) if close else ""
    raise ValueError(f"no experiment class {name!r}{hint}? (labctl experiments lists them)")


def format_catalog(cat: list[dict[str, Any]]) -> str:
    out = []
    for e in cat:
        doc = (e["doc"] or "").strip().splitlines()
        out.append(f"{e['module']}.{e['class']}" + ("" if e["has_analysis"] else
                                                    "  (no analysis)"))
        if doc:
            out.append(f"    {doc[0]}")
        # (#16) safe points: a more urgent job can take the board between rounds
        out.append("    preemptible: " + ("yes (yields the board between rounds)"
                                          if e.get("preemptible") else "no (no safe points)"))
        for f in e["fields"]:
            default = "(required)" if f["required"] else json.dumps(f["default"])
            out.append(f"    {f['name']:<14} {f['type']:<16} {default:<10} "
                       f"{f['unit'] or '':<6} {f['description'] or ''}".rstrip())
    return "\n".join(out) or "(no experiments)"


def _show(j: JobResult) -> str:
    rows = [("job", j.job_id), ("status", j.status), ("user", f"{j.user} ({j.os_user})"),
            ("experiment", f"{j.experiment_module}.{j.experiment_class}"),
            ("priority", j.priority), ("position", j.position),
            ("phase", j.phase),
            # (#16) yielded the board to a more urgent job
            ("preempted", f"{j.preemptions}x, by {j.preempted_by} at {j.preempted_at}"
             + (" (resumes from its checkpoint)" if j.phase == "preempted" else "")
             if j.preemptions else None),
            ("preemptible", "no (opted out)" if not j.preemptible else None),
            ("created", j.created_at),
            ("started", j.started_at), ("finished", j.finished_at),
            ("data file", j.data_file_path), ("log", j.log_path), ("error", j.error_message),
            ("config", json.dumps(j.experiment_config)),
            ("versions", " ".join(f"{k}={v}" for k, v in j.config_versions.items()) or None),
            ("results", json.dumps(j.results) if j.results else None),
            # calibration (#13)
            ("calibrated", " ".join(j.calibrated_by) or None),
            ("held", j.hold_reason if j.held else None),
            ("config upd", _config_update(j.config_update)
             if j.config_update or j.update_main else None)]
    return "\n".join(f"{k:>11}: {v}" for k, v in rows if v is not None)


def _config_update(u: dict | None) -> str:
    """A calibration job's config update in one line: applied (merged) or why not."""
    if not u:
        return "update_main: decided when the job ends"
    changes = ", ".join(f"{k} {c['old']} -> {c['new']}"
                        for k, c in (u.get("changes") or {}).items())
    if u.get("applied"):
        how = f"merged with {u['merged_with']}" if u.get("merged_with") else "applied"
        return f"{how}: main {u.get('version_id')} ({changes or 'no change'})"
    proposal = f"; proposed {u['version_id']} ({changes})" if u.get("version_id") else ""
    return f"not applied: {u.get('reason')}{proposal}"


class _Parser(argparse.ArgumentParser):
    """Usage errors as JSON too when the command line asks for --json (exit code 2)."""
    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            _json_error("UsageError", message, 2)
            sys.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="labctl", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", metavar="PATH", help="labd socket path (default: "
                    "$LABD_SOCKET, your own daemon, or the system one)")
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output; errors "
                        "too, as {\"error\": {...}} on stdout, same exit codes")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    job = "job ID, e.g. JOB-20260124-00001"

    sub.add_parser("health", parents=[common], help="daemon status")
    sub.add_parser("experiments", parents=[common], help="experiment classes you can submit, "
                   "with their config fields, defaults and units")
    s = sub.add_parser("submit", parents=[common], help="queue a job")
    s.add_argument("experiment", help="module.Class, e.g. experiments.single_qubit.t1."
                   "T1Experiment, or a class name alone if it is unique (labctl experiments)")
    s.add_argument("-c", "--config-file", type=Path, metavar="FILE",
                   help="expt config (JSON or YAML), values in the units labctl "
                   "experiments shows")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="one expt config value (YAML), in the unit labctl experiments "
                   "shows, e.g. -p step=0.5 (us for T1)")
    s.add_argument("--priority", type=int, metavar="N", help="integer, higher runs first "
                   "(default 0; above the cap needs an admin)")
    s.add_argument("--user", help="display name (default: your login)")
    s.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop the job after this many seconds")
    s.add_argument("--pin", action="append", default=[], metavar="TYPE=VERSION_ID",
                   help="run with this config version instead of main")
    s.add_argument("--after", metavar="JOB_ID", help="run only once that job completed")
    s.add_argument("--not-before", metavar="TIME", help="ISO time with timezone, e.g. "
                   "2026-11-24T22:00:00+00:00")
    s.add_argument("--hold", action="store_true", help="queue it held (labctl release)")
    s.add_argument("--update-main", action="store_true", help="a calibration: when it "
                   "completes with a good fit, its results update main hardware_config")
    s.add_argument("--fresh", action="append", default=[], metavar="KEY",
                   help="config key that must be fresh, e.g. device.qubit.f_ge[0]: its "
                   "calibration (daemon settings) runs first if the key is too old")
    s.add_argument("--no-preempt", dest="preemptible", action="store_false",
                   help="never let a more urgent job take the board from it between rounds "
                   "(an admin still may)")
    s.add_argument("--wait", action="store_true", help="wait for the job to end")
    q = sub.add_parser("queue", parents=[common], help="running and pending jobs")
    q.add_argument("--user", help="display name to filter by")
    q.add_argument("--mine", action="store_true", help="only jobs of your login")
    s = sub.add_parser("show", parents=[common], help="one job")
    s.add_argument("job_id", help=job)
    s = sub.add_parser("wait", parents=[common], help="wait until a job ends")
    s.add_argument("job_id", help=job)
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="give up after this many seconds (exit 7)")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s = sub.add_parser("cancel", parents=[common], help="cancel a job (pending or running)")
    s.add_argument("job_id", nargs="?", help=job)
    s.add_argument("--batch", metavar="BATCH_ID", help="cancel every job of a batch")
    s.add_argument("--user", dest="cancel_user", metavar="LOGIN",
                   help="cancel every job of an account (yours; anyone's as admin)")
    for name, helptext in (("hold", "keep a pending job from starting"),
                           ("release", "let a held job run"),
                           ("retry", "submit a failed or cancelled job again")):
        s = sub.add_parser(name, parents=[common], help=helptext)
        s.add_argument("job_id", help=job)
    s = sub.add_parser("priority", parents=[common], help="change a pending job's priority "
                       "(owners may lower, admins may raise)")
    s.add_argument("job_id", help=job)
    s.add_argument("priority", type=int, metavar="N", help="integer, higher runs first")
    s = sub.add_parser("preempt", parents=[common], help="admins: the running job yields "
                       "the board at its next safe point, and resumes later")
    s.add_argument("job_id", help=job)
    sub.add_parser("pause", parents=[common], help="admins: start no new jobs")
    sub.add_parser("resume", parents=[common], help="admins: start jobs again")
    s = sub.add_parser("watch", parents=[common], help="live view of running job, queue, "
                       "history; reconnects when labd restarts")
    s.add_argument("--user", help="display name to filter by")
    s.add_argument("--mine", action="store_true", help="only jobs of your login")
    s.add_argument("--once", action="store_true", help="print one frame and exit")
    s = sub.add_parser("completion", help="print a shell completion script")
    s.add_argument("shell", choices=["bash"])
    h = sub.add_parser("history", parents=[common], help="past and present jobs, newest first")
    h.add_argument("--user", help="display name to filter by")
    h.add_argument("--os-user", metavar="LOGIN", help="login to filter by")
    h.add_argument("--status", choices=["pending", "running", "completed", "failed",
                                        "cancelled"])
    h.add_argument("--experiment", metavar="CLASS", help="experiment class name")
    h.add_argument("--batch", metavar="BATCH_ID")
    h.add_argument("--since", metavar="TIME", help="ISO-8601 time, UTC unless it has an "
                   "offset, e.g. 2026-11-24")
    h.add_argument("--limit", type=int, default=20, metavar="N",
                   help="number of jobs per page (default 20)")
    h.add_argument("--cursor", type=int, metavar="N",
                   help="integer: next_cursor of the previous page")
    s = sub.add_parser("logs", parents=[common], help="a job's log")
    s.add_argument("job_id", help=job)
    s.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    s = sub.add_parser("rerun", parents=[common], help="submit again with the same "
                       "config versions and expt config")
    s.add_argument("job_id", help=job)

    c = sub.add_parser("config", help="versioned physics configs")
    csub = c.add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    ctype = "config type, e.g. hardware_config (labctl config types)"
    version = "version ID, e.g. CFG-HW-20260124-00001"
    s = csub.add_parser("push", parents=[common], help="snapshot a file and make it main")
    s.add_argument("type", help=ctype)
    s.add_argument("file", type=Path)
    s.add_argument("-m", "--message")
    s.add_argument("--expect", metavar="VERSION_ID", help="refuse if main is not this")
    s = csub.add_parser("pull", parents=[common], help="print main (or save with -o)")
    s.add_argument("type", help=ctype)
    s.add_argument("-o", "--output", type=Path, metavar="FILE")
    s = csub.add_parser("list", parents=[common], help="versions of a type")
    s.add_argument("type", help=ctype)
    s.add_argument("--limit", type=int, default=50, metavar="N",
                   help="number of versions (default 50)")
    s = csub.add_parser("show", parents=[common], help="one version with content")
    s.add_argument("version_id", help=version)
    s = csub.add_parser("set-main", parents=[common], help="make a version main")
    s.add_argument("type", help=ctype)
    s.add_argument("version_id", help=version)
    s = csub.add_parser("history", parents=[common], help="who set main when")
    s.add_argument("type", help=ctype)
    s.add_argument("--limit", type=int, default=50, metavar="N",
                   help="number of entries (default 50)")
    s = csub.add_parser("diff", parents=[common], help="unified diff of two versions")
    s.add_argument("a", help=version)
    s.add_argument("b", help=version)
    csub.add_parser("verify", parents=[common], help="check every snapshot's SHA256")
    csub.add_parser("types", parents=[common], help="config types and their main versions")
    s = csub.add_parser("trace", parents=[common], help="each value a key has had in main, "
                        "when, and who (or which job) set it")
    s.add_argument("type", help=ctype)
    s.add_argument("key", help="dotted key, list indices as .0 or [0], e.g. "
                   "device.qubit.pulses.pi_ge.gain[0]")
    add_schedule_parser(sub, common)
    add_notify_parser(sub, common)
    return ap


# ---- (sched) recurring schedules and config trace, issue #13 ---------------------------
def add_schedule_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("schedule", help="recurring jobs, e.g. a calibration every 2 h")
    ssub = c.add_subparsers(dest="schedule_cmd", required=True, metavar="ACTION")
    s = ssub.add_parser("add", parents=[common], help="submit a job every period, as you "
                        "(validated now, like labctl submit)")
    s.add_argument("--every", required=True, metavar="PERIOD",
                   help="period: 90s, 30m, 2h, 1d, 1h30m (or seconds)")
    s.add_argument("experiment", help="module.Class, or a class name alone if it is unique")
    s.add_argument("-c", "--config-file", type=Path, metavar="FILE",
                   help="expt config (JSON or YAML)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="one expt config value (YAML)")
    s.add_argument("--priority", type=int, metavar="N", help="integer, higher runs first")
    s.add_argument("--user", help="display name (default: your login)")
    s.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop each job after this many seconds")
    s.add_argument("--pin", action="append", default=[], metavar="TYPE=VERSION_ID",
                   help="run with this config version instead of main")
    s.add_argument("--update-main", action="store_true",
                   help="each job's fit results update main (see labctl submit)")
    s.add_argument("--fresh", action="append", default=[], metavar="KEY",
                   help="each job needs this config key fresh: stale calibrations run "
                   "first (see labctl submit)")
    s.add_argument("--start", metavar="TIME", help="first firing, ISO time with timezone "
                   "(default: one period from now); later ones every PERIOD after it")
    s = ssub.add_parser("list", parents=[common], help="schedules, next fire time, last job")
    s.add_argument("--mine", action="store_true", help="only your schedules")
    for name, helptext in (("pause", "stop firing (owner or admin)"),
                           ("resume", "fire again, from the next period"),
                           ("remove", "delete a schedule (owner or admin)"),
                           ("fires", "a schedule's firings, newest first")):
        s = ssub.add_parser(name, parents=[common], help=helptext)
        s.add_argument("schedule_id", type=int, metavar="ID", help="schedule ID (integer)")


def format_schedule(r: dict[str, Any]) -> str:
    state = "paused" if r["paused"] else f"next {r['next_fire']}"
    last = (f"last {r['last_job_id']} ({r['last_job_status']})" if r["last_job_id"]
            else "no job yet")
    if r["last_outcome"] in ("skipped", "failed"):
        last += f"; last firing {r['last_outcome']}: {r['last_message']}"
    skips = f", {r['skips']} skipped" if r["skips"] else ""
    return (f"{r['schedule_id']:>4}  every {r['every']:<6} {r['experiment']}  "
            f"{r['owner']}  {state}  {last}{skips}")


def run_schedule(args: argparse.Namespace, c: Client) -> int:
    a = args.schedule_cmd
    if a == "add":
        module, cls = resolve_experiment(c, args.experiment)
        pins = dict(p.split("=", 1) for p in args.pin)
        extra = {"update_main": True} if args.update_main else {}
        if args.fresh:
            extra["fresh"] = args.fresh
        r = c.schedule(cls, module, args.every,
                       load_expt_config(args.config_file, args.param), start=args.start,
                       user=args.user, priority=args.priority, time_limit_s=args.time_limit,
                       config_versions=pins or None, **extra)
        _out(args, r, f"schedule {r['schedule_id']}: {r['experiment']} every {r['every']}, "
             f"first at {r['next_fire']}")
    elif a == "list":
        os_user = c.health()["you"] if args.mine else None
        r = c.schedules(os_user)
        _out(args, {"schedules": r}, "\n".join(map(format_schedule, r)) or "(no schedules)")
    elif a in ("pause", "resume"):
        r = getattr(c, f"schedule_{a}")(args.schedule_id)
        _out(args, r, format_schedule(r))
    elif a == "remove":
        r = c.schedule_remove(args.schedule_id)
        _out(args, r, f"schedule {r['schedule_id']} removed")
    elif a == "fires":
        r = c.schedule_fires(args.schedule_id)
        _out(args, {"schedule_id": args.schedule_id, "fires": r}, "\n".join(
            f"{f['at']}  {f['outcome']:<9} {f['job_id'] or ''}  {f['message'] or ''}".rstrip()
            for f in r) or "(not fired yet)")
    return 0


def format_trace(changes: list[dict[str, Any]]) -> str:
    out = []
    for ch in changes:
        job = ch.get("created_by_job_id")
        who = ch["created_by"] + (f" (job {job})" if job and job not in ch["created_by"]
                                  else "")
        value = "(absent)" if ch.get("absent") else json.dumps(ch["value"])
        out.append(f"{ch['since']}  {ch['version_id']}  {value}  by {who}"
                   + (f", made main by {ch['set_by']}" if ch["set_by"] != ch["created_by"]
                      else ""))
    return "\n".join(out)
# ---- end of (sched) --------------------------------------------------------------------


# ---- notifications (notify branch, issue #12) -----------------------------------------
def add_notify_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    n = sub.add_parser("notify", help="webhooks when your jobs or batches end")
    nsub = n.add_subparsers(dest="notify_cmd", required=True, metavar="ACTION")
    target = "target ID, e.g. NTF-1a2b3c4d (labctl notify list)"
    s = nsub.add_parser("add", parents=[common], help="POST to a webhook URL (its host must "
                        "be on the admin's notify_allowed_hosts)")
    s.add_argument("url", help="http(s) URL, e.g. a Slack or Mattermost incoming webhook")
    s.add_argument("--on", choices=["all", "failures", "batch"], default="all",
                   help="all: every job of yours that ends; failures: failed jobs only; "
                   "batch: one message when the last job of a batch ends (default all)")
    s = nsub.add_parser("list", parents=[common], help="your notification targets")
    s.add_argument("--all", action="store_true", help="admins: every account's")
    for name, helptext in (("remove", "stop notifying a target"),
                           ("test", "send a test message now (exit 1 if it failed)")):
        s = nsub.add_parser(name, parents=[common], help=helptext)
        s.add_argument("id", help=target)
    s = nsub.add_parser("status", parents=[common], help="delivery queue and each target's "
                        "latest outcome")
    s.add_argument("--all", action="store_true", help="admins: every account's")


def _notify_line(t: dict[str, Any]) -> str:
    last = t["last_status"] or "never sent"
    if t["last_error"]:
        last += f" ({t['last_error']})"
    return (f"{t['id']}  {t['os_user']:<10} on={t['on']:<8} {t['url']}\n"
            f"    last: {last}  at {t['last_attempt_at'] or '-'}; since start: "
            f"{t['delivered']} delivered, {t['failed']} failed, {t['attempts']} attempts")


def run_notify(args: argparse.Namespace, c: Client) -> int:
    a = args.notify_cmd
    if a == "add":
        t = c.notify(args.url, on=args.on)
        _out(args, t, f"{t['id']}: {t['url']} on={t['on']}")
    elif a == "list":
        ts = c.notify_list(all=args.all)
        _out(args, ts, "\n".join(f"{t['id']}  {t['os_user']:<10} on={t['on']:<8} {t['url']}"
                                 for t in ts) or "(no notification targets)")
    elif a == "remove":
        r = c.notify_remove(args.id)
        _out(args, r, f"{r['id']} removed")
    elif a == "test":
        r = c.notify_test(args.id)
        _out(args, r, f"{r['id']}: " + ("delivered" if r["ok"] else f"failed: {r['error']}"))
        return 0 if r["ok"] else 1
    elif a == "status":
        r = c.notify_status(all=args.all)
        head = ("webhooks " + (f"enabled for {', '.join(r['allowed_hosts'])}" if r["enabled"]
                               else "disabled (notify_allowed_hosts is empty)")
                + f"; queue {r['queue_length']}/{r['queue_max']}, {r['dropped']} dropped, "
                f"{r['in_flight']} sending; {r['delivered']} delivered, {r['failed']} failed")
        _out(args, r, "\n".join([head, *map(_notify_line, r["targets"])]))
    return 0
# ---- end of notifications ----------------------------------------------------------------


def _json_error(kind: str, message: str, exit_code: int, code: int | None = None) -> None:
    print(json.dumps({"error": {"type": kind, "message": message, "code": code,
                                "exit_code": exit_code}}))


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    """``--json`` prints the data exactly; people get text with control characters
    escaped (a job's log or error could otherwise drive their terminal)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(safe(text))


def _job_exit(j: JobResult) -> int:
    return 0 if not j.is_done() or j.is_successful() else 1


def run(args: argparse.Namespace, c: Client) -> int:
    cmd = args.cmd
    if cmd == "health":
        h = c.health()
        run_ = h["running"]
        _out(args, h, f"labd {h['version']}: {h['status']}, {h['pending']} pending, "
             f"running: {run_['job_id'] if run_ else 'none'}, up {h['uptime_s']:.0f} s, "
             f"{h['hardware']} hardware, you are {h['you']}{' (admin)' if h['admin'] else ''}")
        return 0
    if cmd == "experiments":
        cat = c.experiments()
        _out(args, cat, format_catalog(cat))
        return 0
    if cmd == "submit":
        module, cls = resolve_experiment(c, args.experiment)
        pins = dict(p.split("=", 1) for p in args.pin)
        job_id = c.submit(cls, module, load_expt_config(args.config_file, args.param),
                          user=args.user, priority=args.priority,
                          time_limit_s=args.time_limit, config_versions=pins or None,
                          after=args.after, not_before=args.not_before, hold=args.hold,
                          update_main=args.update_main, fresh=args.fresh or None,
                          preemptible=args.preemptible)
        if args.wait:
            j = c.wait(job_id, progress=not args.json and sys.stderr.isatty())
            _out(args, j.raw, _show(j))
            return _job_exit(j)
        _out(args, {"job_id": job_id}, job_id)
        return 0
    if cmd == "queue":
        os_user = c.health()["you"] if args.mine else None
        q = c.queue(user=args.user, os_user=os_user)
        _out(args, q, format_queue(q))
        return 0
    if cmd == "show":
        j = c.get(args.job_id)
        _out(args, j.raw, _show(j))
        return _job_exit(j)
    if cmd == "wait":
        j = c.wait(args.job_id, timeout=args.timeout,
                   progress=args.progress and not args.json)
        _out(args, j.raw, _show(j))
        return 7 if not j.is_done() else _job_exit(j)
    if cmd == "cancel":
        if sum(map(bool, (args.batch, args.job_id, args.cancel_user))) != 1:
            raise ValueError("give one of: a job ID, --batch BATCH_ID, --user LOGIN")
        if args.job_id:
            r = c.cancel(args.job_id)
            _out(args, r, f"{r['job_id']}: {r['status']}")
            return 0
        r = c.cancel_batch(args.batch) if args.batch else c.cancel_user(args.cancel_user)
        _out(args, r, f"{args.batch or args.cancel_user}: cancelled {len(r['cancelled'])}, "
             f"refused {len(r['refused'])}" + "".join(
                 f"\n  {x['job_id']}: {x['error']}" for x in r["refused"]))
        return 0 if not r["refused"] else 4
    if cmd in ("hold", "release"):
        r = getattr(c, cmd)(args.job_id)
        _out(args, r, f"{r['job_id']}: " + ("held" if r["held"] else
                                             f"released ({r['waiting_for'] or 'runnable'})"))
        return 0
    if cmd == "priority":
        r = c.set_priority(args.job_id, args.priority)
        _out(args, r, f"{r['job_id']}: priority {r['priority']}, position {r['position']}")
        return 0
    if cmd == "retry":
        job_id = c.retry(args.job_id)
        _out(args, {"job_id": job_id, "retry_of": args.job_id}, job_id)
        return 0
    if cmd == "preempt":   # (#16)
        r = c.preempt(args.job_id)
        _out(args, r, f"{r['job_id']}: yields the board at its next safe point")
        return 0
    if cmd in ("pause", "resume"):
        r = getattr(c, cmd)()
        _out(args, r, "queue paused: no new job starts" if r["paused"] else "queue resumed")
        return 0
    if cmd == "history":
        page = c.call("history", **{k: v for k, v in dict(
            user=args.user, os_user=args.os_user, status=args.status,
            experiment=args.experiment, batch_id=args.batch, since=args.since,
            limit=args.limit, cursor=args.cursor).items() if v is not None})
        jobs = [JobResult.from_dict(j) for j in page["jobs"]]
        text = "\n".join(format_job_line(j) for j in jobs) or "(no jobs)"
        if page["next_cursor"] is not None:
            text += f"\n(more: --cursor {page['next_cursor']})"
        _out(args, page, text)
        return 0
    if cmd == "logs":
        if args.follow:
            for text in c.follow_logs(args.job_id):
                sys.stdout.write(text if args.json else safe(text))
                sys.stdout.flush()
            return 0
        offset, chunks = 0, []
        while True:
            page = c.logs(args.job_id, offset)
            chunks.append(page["text"])
            if not page["text"]:
                break
            offset = page["offset"]
        text = "".join(chunks)
        _out(args, {"job_id": args.job_id, "text": text, "offset": offset}, text.rstrip("\n"))
        return 0
    if cmd == "rerun":
        job_id = c.rerun(args.job_id)
        _out(args, {"job_id": job_id, "rerun_of": args.job_id}, job_id)
        return 0
    if cmd == "config":
        return run_config(args, c)
    if cmd == "schedule":
        return run_schedule(args, c)
    if cmd == "notify":
        return run_notify(args, c)
    raise ValueError(f"unknown command {cmd}")


def run_config(args: argparse.Namespace, c: Client) -> int:
    a = args.config_cmd
    if a == "push":
        r = c.config_push(args.type, args.file.read_text(), args.message, args.expect)
        _out(args, r, f"{r['version_id']} is now main for {r['type']}"
             + ("" if r["created"] else " (identical content: existing version reused)"))
    elif a == "pull":
        r = c.config_pull(args.type)
        if args.output:
            args.output.write_text(r["content"])
            _out(args, {k: v for k, v in r.items() if k != "content"},
                 f"{r['version_id']} written to {args.output}")
        else:
            _out(args, r, r["content"].rstrip("\n"))
    elif a == "list":
        r = c.config_versions(args.type, args.limit)
        _out(args, r, "\n".join(
            f"{'*' if v['is_main'] else ' '} {v['version_id']}  {v['created_at']}  "
            f"{v['created_by']}  {v['sha256'][:12]}  {v['message'] or ''}"
            for v in r["versions"]))
    elif a == "show":
        r = c.config_show(args.version_id)
        _out(args, r, f"# {r['version_id']} ({r['type']}) by {r['created_by']} at "
             f"{r['created_at']}{' [main]' if r['is_main'] else ''}\n{r['content'].rstrip()}")
    elif a == "set-main":
        r = c.config_set_main(args.type, args.version_id)
        _out(args, r, f"{r['version_id']} is now main for {r['type']}")
    elif a == "history":
        r = c.config_history(args.type, args.limit)
        _out(args, r, "\n".join(f"{h['set_at']}  {h['version_id']}  {h['set_by']}"
                                for h in r["history"]))
    elif a == "diff":
        d = c.config_diff(args.a, args.b)
        _out(args, {"a": args.a, "b": args.b, "diff": d}, d.rstrip("\n") or "(identical)")
    elif a == "verify":
        r = c.config_verify()
        _out(args, r, f"{r['checked']} snapshots checked: " + (
            "all OK" if r["ok"] else "\n".join(f"BAD {b['version_id']}: {b['error']}"
                                               for b in r["bad"])))
        return 0 if r["ok"] else 1
    elif a == "trace":
        r = c.config_trace(args.type, args.key)
        _out(args, {"type": args.type, "key": args.key, "changes": r}, format_trace(r))
    elif a == "types":
        r = c.config_types()
        _out(args, r, "\n".join(f"{t['name']:<24} {t['code']:<4} {t['format']:<5} "
                                f"main={t['main']}" for t in r))
    return 0


def _fail(args: argparse.Namespace | None, exc: BaseException, exit_code: int) -> int:
    """One error, as JSON on stdout with --json, else a line on stderr."""
    message = exc.message if isinstance(exc, errors.LabdError) else str(exc)
    if _Parser.json_errors:
        _json_error(type(exc).__name__, message, exit_code,
                    None if isinstance(exc, errors.ConnectionFailed) or not isinstance(
                        exc, errors.LabdError) else exc.code)
    else:
        print(f"labctl: {safe(message)}", file=sys.stderr)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "completion":
        from .completion import bash_script
        print(bash_script(parser), end="")
        return 0
    try:
        if args.cmd == "watch":
            import asyncio
            from .watch import watch
            os_user = None
            if args.mine:
                with Client(args.socket) as c:
                    os_user = c.health()["you"]
            asyncio.run(watch(args.socket, args.user, os_user, args.once, args.json))
            return 0
        with Client(args.socket) as c:
            return run(args, c)
    except errors.LabdError as exc:
        return _fail(args, exc, EXIT_CODES.get(type(exc), 8))
    except (ValueError, OSError) as exc:
        return _fail(args, exc, 2)
    except KeyboardInterrupt:
        return 0 if args.cmd == "watch" else 130  # Ctrl-C is how one leaves watch


if __name__ == "__main__":
    sys.exit(main())
