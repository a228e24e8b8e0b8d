"""The dashboard over raw HTTP on its Unix socket (no browser): pages readable with JS off,
Host / Origin / CSRF guards, escaping of hostile text, identity from SO_PEERCRED, events."""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys

import aiohttp
import pytest

NOOP = {"experiment_class": "NoOpExperiment",
        "experiment_module": "experiments.diagnostics.noop"}
T1 = {"experiment_class": "T1Experiment", "experiment_module": "experiments.single_qubit.t1"}
HOSTILE = "<script>alert('x')</script>&\"'"
OTHER = 65533
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
# the helper scripts run as another account need only the standard library; a python
# under /root (pyenv) is not executable by other accounts
OTHER_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def web_sock(d) -> str:
    return str(d.root / "web.sock")


async def http(d, method: str, path: str, *, headers: dict | None = None,
               data: dict | None = None, host: str = "localhost"):
    conn = aiohttp.UnixConnector(path=web_sock(d))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.request(method, f"http://{host}{path}", headers=headers, data=data,
                             allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
            return r.status, (await r.read()).decode(errors="replace"), r.headers


def csrf_of(page: str) -> str:
    return re.search(r'<meta name="labd-csrf" content="([0-9a-f]+)">', page).group(1)


def rpc_ok(d, method: str, **params):
    res = d.rpc(method, **params)
    assert "result" in res, res
    return res["result"]


# A raw HTTP/1.0 exchange over the web socket from a process running as ``uid``
# (SO_PEERCRED then names that account).
_AS_UID = r"""
import socket, sys
req = sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(req)
buf = b""
while chunk := s.recv(65536):
    buf += chunk
sys.stdout.buffer.write(buf)
"""


_RPC_AS_UID = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read())
f = s.makefile("rb")
sys.stdout.buffer.write(f.readline())
"""


def http_as(uid: int, d, method: str, path: str, headers: dict | None = None,
            body: bytes = b"") -> tuple[int, str]:
    head = [f"{method} {path} HTTP/1.0", "Host: localhost",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body:
        head.append(f"Content-Length: {len(body)}")
    req = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    out = subprocess.run([OTHER_PY, "-c", _AS_UID, web_sock(d)], input=req,
                         capture_output=True, timeout=60, user=uid, group=uid,
                         extra_groups=[], check=True).stdout.decode()
    status_line, _, rest = out.partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


@pytest.fixture(scope="module")
def wd():
    """One daemon for the read-mostly tests, with a completed T1 job (data + fit)."""
    import shutil
    from daemon_harness import Daemon
    d = Daemon(socket_mode=0o666).start()
    job = rpc_ok(d, "submit", **T1)["job_id"]
    assert rpc_ok(d, "wait", job_id=job, timeout=60)["status"] == "completed"
    d.t1_job = job
    yield d
    d.close()
    shutil.rmtree(d.root, ignore_errors=True)


async def test_web_socket_beside_rpc_socket_same_mode(wd):
    rpc_st, web_st = os.stat(wd.socket), os.stat(web_sock(wd))
    assert stat.S_ISSOCK(web_st.st_mode)
    assert stat.S_IMODE(web_st.st_mode) == stat.S_IMODE(rpc_st.st_mode) == 0o666
    assert web_st.st_gid == rpc_st.st_gid


async def test_pages_hold_their_content_without_js(wd):
    rpc_ok(wd, "submit", **NOOP, hold=True)
    status, queue, headers = await http(wd, "GET", "/")
    assert status == 200 and "text/html" in headers["Content-Type"]
    assert "Content-Security-Policy" in headers
    assert "held" in queue and "Waiting" in queue and "root" in queue
    status, page, _ = await http(wd, "GET", f"/jobs/{wd.t1_job}")
    assert status == 200
    assert "<svg" in page and 'class="fit"' in page and 'class="data"' in page
    assert "T1Experiment" in page and "completed" in page
    assert f"/jobs/{wd.t1_job}/data.h5" in page
    assert re.search(r'href="/configs/version/CFG-HW-[^"]+"', page)  # versions link to content
    status, hist, _ = await http(wd, "GET", "/history?status=completed")
    assert status == 200 and wd.t1_job in hist
    status, hist, _ = await http(wd, "GET", "/history?status=failed")
    assert status == 200 and wd.t1_job not in hist
    status, hist, _ = await http(wd, "GET", "/history?date=2001-01-01")
    assert status == 200 and wd.t1_job not in hist
    day = rpc_ok(wd, "get", job_id=wd.t1_job)["created_at"][:10]
    status, hist, _ = await http(wd, "GET", f"/history?date={day}&user=root")
    assert status == 200 and wd.t1_job in hist
    status, hist, _ = await http(wd, "GET", "/history?date=yesterday")
    assert status == 400 and "2026-01-31" in hist
    status, exps, _ = await http(wd, "GET", "/experiments")
    assert status == 200 and "T1Experiment" in exps and "us" in exps  # fields with units
    status, cfgs, _ = await http(wd, "GET", "/configs")
    assert status == 200 and "hardware_config" in cfgs
    status, ctype, _ = await http(wd, "GET", "/configs/hardware_config")
    assert status == 200 and "History of main" in ctype
    vid = re.search(r'href="/configs/version/(CFG-HW-[^"]+)"', ctype).group(1)
    status, ver, _ = await http(wd, "GET", f"/configs/version/{vid}")
    assert status == 200 and vid in ver
    status, diff, _ = await http(wd, "GET", f"/configs/diff?a={vid}&b={vid}")
    assert status == 200 and "same content" in diff


async def test_data_download(wd):
    status, body, headers = await http(wd, "GET", f"/jobs/{wd.t1_job}/data.h5")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    status, _, _ = await http(wd, "GET", "/jobs/JOB-20000101-00001/data.h5")
    assert status == 404


@pytest.mark.parametrize("host,ok", [
    ("localhost", True), ("localhost:8080", True), ("127.0.0.1:1", True),
    ("[::1]:8080", True), ("evil.example", False), ("evil.example:8080", False),
    ("localhost.evil.example", False), ("127.0.0.1.nip.io", False), ("", False)])
async def test_host_header_allow_list(wd, host, ok):
    status, _, _ = await http(wd, "GET", "/", headers={"Host": host})
    assert (status == 200) if ok else status in (400, 421), (host, status)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_request_without_host_header_is_refused(wd, version):
    """No Host at all is refused like a wrong one (curl --unix-socket sends one)."""
    reader, writer = await asyncio.open_unix_connection(web_sock(wd))
    writer.write(f"GET / HTTP/{version}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert reply.split(b"\r\n", 1)[0].split()[1] in (b"400", b"421"), reply[:200]


async def test_state_change_needs_csrf_and_matching_origin(make_daemon):
    d = make_daemon()
    job = rpc_ok(d, "submit", **NOOP, hold=True)["job_id"]
    _, page, _ = await http(d, "GET", "/")
    token = csrf_of(page)
    url = f"/jobs/{job}/cancel"
    good = {"Origin": "http://localhost", "Accept": "application/json"}
    cases = [
        ({**good}, {}),                                          # no token
        ({**good}, {"csrf": "0" * 64}),                          # wrong token
        ({**good, "X-CSRF-Token": "f" * 64}, {}),                # wrong header token
        ({"Accept": "application/json"}, {"csrf": token}),       # no Origin
        ({**good, "Origin": "http://evil.example"}, {"csrf": token}),
        ({**good, "Origin": "null"}, {"csrf": token}),
    ]
    for headers, form in cases:
        status, body, _ = await http(d, "POST", url, headers=headers, data=form)
        assert status == 403, (headers, form, status, body)
    assert rpc_ok(d, "get", job_id=job)["status"] == "pending"
    # a cross-site form cannot even reach the check with a foreign Host
    status, _, _ = await http(d, "POST", url, headers={**good, "Host": "evil.example",
                                                       "Origin": "http://evil.example"},
                              data={"csrf": token})
    assert status == 421
    # right token (form field) and Origin: done, and a no-JS form is sent back
    status, _, headers = await http(d, "POST", url, headers={"Origin": "http://localhost"},
                                    data={"csrf": token, "next": "/history"})
    assert status == 303 and headers["Location"] == "/history"
    assert rpc_ok(d, "get", job_id=job)["status"] == "cancelled"
    # header token works too; an RPC rule's refusal comes back as its HTTP status
    status, body, _ = await http(d, "POST", url, headers={**good, "X-CSRF-Token": token})
    assert status == 409 and "already cancelled" in json.loads(body)["error"]
    # an open redirect is not possible through ``next``
    for target in ("//evil.example/", "/\t/evil.example", "/\\evil.example",
                   "http://evil.example/", "javascript:alert(1)"):
        job2 = rpc_ok(d, "submit", **NOOP, hold=True)["job_id"]
        status, _, headers = await http(d, "POST", f"/jobs/{job2}/release",
                                        headers={"Origin": "http://localhost"},
                                        data={"csrf": token, "next": target})
        assert status == 303 and headers["Location"] == "/", target


async def test_hostile_text_is_escaped(make_daemon):
    d = make_daemon()
    job = rpc_ok(d, "submit", experiment_class="EscapeInOutput",
                 experiment_module="labtest_experiments.hostile",
                 experiment_config={"text": HOSTILE}, user=HOSTILE)["job_id"]
    assert rpc_ok(d, "wait", job_id=job, timeout=60)["status"] == "failed"
    held = rpc_ok(d, "submit", **NOOP, user=HOSTILE, hold=True)["job_id"]
    pages = [f"/jobs/{job}", f"/fragment/jobs/{job}", "/", "/fragment/queue",
             "/history", "/history?experiment=" + aiohttp.helpers.quote(HOSTILE, safe=""),
             "/history?user=" + aiohttp.helpers.quote(HOSTILE, safe="")]
    for path in pages:
        status, page, _ = await http(d, "GET", path)
        assert status == 200, (path, status)
        assert "<script>alert" not in page, path
        assert "</script>&" not in page
    _, page, _ = await http(d, "GET", f"/jobs/{job}")
    esc = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;&#39;"
    assert "log line " + esc in page          # the log line
    assert "error " + esc in page             # the error message
    assert esc in page and held              # the user name


async def test_events_stream_coalesces_changes_and_sends_own_job_endings(make_daemon):
    d = make_daemon(max_batch=10_000)
    conn = aiohttp.UnixConnector(path=web_sock(d))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get("http://localhost/events",
                         timeout=aiohttp.ClientTimeout(total=60)) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")

            async def message() -> dict:
                while True:
                    line = (await asyncio.wait_for(r.content.readline(), 30)).decode()
                    if line.startswith("data: "):
                        return json.loads(line[6:])
            hello = await message()
            assert hello["uid"] == os.geteuid() and len(hello["csrf"]) == 64
            await asyncio.to_thread(rpc_ok, d, "pause")
            assert (await message()) == {"type": "changed"}
            # 2000 submits: the page hears "changed" a few times, not 2000 events
            await asyncio.to_thread(rpc_ok, d, "submit_batch", jobs=[NOOP] * 2000)
            assert (await message()) == {"type": "changed"}
            await asyncio.to_thread(rpc_ok, d, "resume")
            ended = []
            changes = 0
            while len(ended) < 2000:
                m = await message()
                if m["type"] == "changed":
                    changes += 1
                elif m["type"] == "job":
                    ended.append(m)
    assert all(e["terminal"] and e["os_uid"] == os.geteuid() and e["os_user"]
               for e in ended)
    assert {e["status"] for e in ended} == {"completed"}
    assert changes < 200


async def test_events_stream_pings_when_idle(make_daemon):
    """The keepalive is a real event (a page's watchdog hears it), every web_keepalive_s."""
    d = make_daemon(web_keepalive_s=0.2)
    conn = aiohttp.UnixConnector(path=web_sock(d))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get("http://localhost/events",
                         timeout=aiohttp.ClientTimeout(total=60)) as r:
            lines = []
            while lines.count("event: ping") < 3:
                lines.append((await asyncio.wait_for(r.content.readline(), 30))
                             .decode().strip())
    hello = json.loads(lines[lines.index("event: hello") + 1][6:])
    assert hello["keepalive_s"] == 0.2
    assert lines[lines.index("event: ping") + 1] == "data: {}"


async def test_admin_actions_pause_resume(make_daemon):
    d = make_daemon()
    _, page, _ = await http(d, "GET", "/")
    hdr = {"Origin": "http://localhost", "X-CSRF-Token": csrf_of(page),
           "Accept": "application/json"}
    if os.geteuid() == 0:
        assert "Pause queue" in page
    status, _, _ = await http(d, "POST", "/queue/pause", headers=hdr)
    assert status == 200 and rpc_ok(d, "health")["paused"] is True
    _, page, _ = await http(d, "GET", "/")
    assert "The queue is paused" in page and "Resume queue" in page
    status, _, _ = await http(d, "POST", "/queue/resume", headers=hdr)
    assert status == 200 and rpc_ok(d, "health")["paused"] is False


@root_only
def test_other_user_sees_and_may_act_only_on_own_jobs(make_daemon):
    d = make_daemon(socket_mode=0o666)
    rpc_ok(d, "pause")
    mine = rpc_ok(d, "submit", **NOOP)["job_id"]          # root's
    status, body = http_as(OTHER, d, "POST", "/", b"")    # any POST without token
    assert status == 403
    # the other account submits through RPC as itself
    out = subprocess.run([OTHER_PY, "-c", _RPC_AS_UID, str(d.socket)],
                         input=json.dumps({"jsonrpc": "2.0", "method": "submit",
                                           "params": NOOP, "id": 1}).encode() + b"\n",
                         capture_output=True, timeout=60, user=OTHER, group=OTHER,
                         extra_groups=[], check=True)
    theirs = re.search(rb"JOB-\d{8}-\d{5}", out.stdout).group().decode()
    status, page = http_as(OTHER, d, "GET", "/")
    assert status == 200 and mine in page and theirs in page
    assert f'formaction="/jobs/{theirs}/cancel"' in page
    assert f'formaction="/jobs/{mine}/cancel"' not in page
    assert "Pause queue" not in page                       # not an admin
    token = csrf_of(page)
    hdr = {"Origin": "http://localhost", "X-CSRF-Token": token,
           "Accept": "application/json"}
    status, body = http_as(OTHER, d, "POST", f"/jobs/{mine}/cancel", hdr)
    assert status == 403 and "belongs to another account" in body
    status, body = http_as(OTHER, d, "POST", "/queue/resume", hdr)
    assert status == 403 and "only an admin" in body
    status, body = http_as(OTHER, d, "POST", f"/jobs/{theirs}/priority",
                           {**hdr, "Content-Type": "application/x-www-form-urlencoded"},
                           b"priority=5")
    assert status == 403 and "only an admin may raise" in body
    # root's token is not theirs: a token is bound to the account
    _, root_page, _ = asyncio.run(http(d, "GET", "/"))
    status, _ = http_as(OTHER, d, "POST", f"/jobs/{theirs}/cancel",
                        {**hdr, "X-CSRF-Token": csrf_of(root_page)})
    assert status == 403
    status, body = http_as(OTHER, d, "POST", f"/jobs/{theirs}/cancel", hdr)
    assert status == 200, body
    assert rpc_ok(d, "get", job_id=theirs)["status"] == "cancelled"
    assert rpc_ok(d, "get", job_id=mine)["status"] == "pending"


def test_wheel_ships_templates_and_static(tmp_path):
    """A non-editable install has the dashboard's templates, script and style (package
    data: no CDN, nothing fetched at run time)."""
    import zipfile
    from daemon_harness import REPO
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (whl,) = tmp_path.glob("labd-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    tdir = REPO / "labd" / "web" / "templates"
    for f in [*(f"templates/{p.name}" for p in tdir.glob("*.html")), "static/app.js",
              "static/style.css"]:
        assert f"labd/web/{f}" in names, f


async def test_history_pages(make_daemon):
    d = make_daemon()
    ids = rpc_ok(d, "submit_batch", jobs=[{**NOOP, "hold": True}] * 60)["job_ids"]
    status, page1, _ = await http(d, "GET", "/history?status=pending")
    assert status == 200
    shown1 = set(re.findall(r'<tr data-job="(JOB-[0-9-]+)"', page1))
    assert len(shown1) == 50 and ids[-1] in shown1 and ids[0] not in shown1
    nxt = re.search(r'<a href="([^"]+)" rel="next">', page1).group(1).replace("&amp;", "&")
    assert "status=pending" in nxt
    status, page2, _ = await http(d, "GET", nxt)
    shown2 = set(re.findall(r'<tr data-job="(JOB-[0-9-]+)"', page2))
    assert shown1 | shown2 == set(ids) and not shown1 & shown2
    assert 'rel="next"' not in page2


async def test_config_pages_show_versions_diff_and_main_history(make_daemon):
    d = make_daemon()
    old = rpc_ok(d, "config.pull", type="hardware_config")
    new_content = old["content"] + f"\n# {HOSTILE}\n"
    new = rpc_ok(d, "config.push", type="hardware_config", content=new_content,
                 message=HOSTILE)["version_id"]
    status, page, _ = await http(d, "GET", "/configs/hardware_config")
    assert status == 200 and new in page and old["version_id"] in page
    assert "<script>alert" not in page                      # the push message, escaped
    hist = page[page.index('id="main-history"'):]
    assert hist.index(new) < hist.index(old["version_id"])   # newest first
    status, diff, _ = await http(d, "GET", f"/configs/diff?a={old['version_id']}&b={new}")
    assert status == 200 and 'class="d-add"' in diff and "<script>alert" not in diff
    assert "+# &lt;script&gt;" in diff
    status, ver, _ = await http(d, "GET", f"/configs/version/{new}")
    assert status == 200 and "main" in ver and "# &lt;script&gt;" in ver
    status, _, _ = await http(d, "GET", "/configs/diff?a=nonsense&b=x")
    assert status == 400
    status, _, _ = await http(d, "GET", "/configs/no_such_type")
    assert status in (400, 404)


@pytest.mark.parametrize("module,cls", [
    ("amplitude_rabi", "AmplitudeRabiExperiment"), ("t2_ramsey", "T2RamseyExperiment"),
    ("resonator_spectroscopy", "ResonatorSpectroscopyExperiment")])
async def test_plot_with_fit_for_each_fitted_experiment(wd, module, cls):
    job = rpc_ok(wd, "submit", experiment_class=cls,
                 experiment_module=f"experiments.single_qubit.{module}")["job_id"]
    done = await asyncio.to_thread(rpc_ok, wd, "wait", job_id=job, timeout=120)
    assert done["status"] == "completed", done
    status, page, _ = await http(wd, "GET", f"/jobs/{job}")
    assert status == 200 and '<svg class="plot"' in page
    fit = re.search(r'<polyline class="fit" points="([^"]*)"', page).group(1)
    assert len(fit.split()) > 50     # the fit curve, inside the plot's range


async def test_queue_page_says_why_each_job_waits(make_daemon):
    d = make_daemon()
    rpc_ok(d, "pause")
    first = rpc_ok(d, "submit", **NOOP)["job_id"]
    held = rpc_ok(d, "submit", **NOOP, hold=True)["job_id"]
    after = rpc_ok(d, "submit", **NOOP, after=first)["job_id"]
    later = rpc_ok(d, "submit", **NOOP, not_before="2099-01-01T00:00:00+00:00")["job_id"]
    status, page, _ = await http(d, "GET", "/")
    assert status == 200

    def why(job: str) -> str:
        row = re.search(rf'<tr data-job="{job}">(.*?)</tr>', page, re.S).group(1)
        return re.search(r'class="why">([^<]*)', row).group(1)
    assert why(first) == "paused"
    assert why(held) == "held"
    assert why(after) == f"after {first}"
    assert why(later).startswith("not before 2099-01-01")
    assert "3 waiting" in page and "1 pending" in page


def _dd(page: str, dd_id: str) -> str:
    m = re.search(rf'<dd[^>]*id="{dd_id}"[^>]*>(.*?)</dd>', page, re.S)
    assert m, dd_id
    return m.group(1)


async def test_calibration_facts_on_job_and_queue_pages(make_daemon):
    """(#13) A job page shows update_main, fresh keys, the calibrations it waited for
    (linked), why labd held it, and its config update (applied or why not, the version,
    per key old -> new); the queue page says why a held job is held (one query)."""
    from test_calibration import FAKE, T1_KEY, _calibrating_daemon
    d = _calibrating_daemon(make_daemon, max_age_s=0, value=5000.0)
    r = rpc_ok(d, "submit", **NOOP, fresh=[T1_KEY])
    [cal] = r["calibrations"]
    job = r["job_id"]
    assert rpc_ok(d, "wait", job_id=cal, timeout=60)["status"] == "completed"
    for _ in range(3000):     # the hold's reason is stored just after the calibration ends
        if rpc_ok(d, "get", job_id=job)["hold_reason"]:
            break
        await asyncio.sleep(0.01)
    reason = rpc_ok(d, "get", job_id=job)["hold_reason"]
    assert reason and cal in reason
    # the dependent
    status, page, _ = await http(d, "GET", f"/jobs/{job}")
    assert status == 200
    assert T1_KEY in _dd(page, "fresh")
    assert f'<a href="/jobs/{cal}">{cal}</a>' in _dd(page, "calibrated-by")
    assert f"calibration {cal} did not refresh its keys" in _dd(page, "hold-reason")
    # the calibration: not applied, and why
    status, page, _ = await http(d, "GET", f"/jobs/{cal}")
    assert status == 200 and "yes (hardware_config)" in _dd(page, "update-main")
    upd = _dd(page, "config-update")
    assert "not applied" in upd and "outside its sane range" in upd
    # the queue: the held job says why, in the page and in the RPC listing
    listed = [w for w in rpc_ok(d, "queue")["waiting"] if w["job_id"] == job]
    assert listed[0]["waiting_for"] == "held" and listed[0]["hold_reason"] == reason
    status, page, _ = await http(d, "GET", "/")
    row = re.search(rf'<tr data-job="{job}">(.*?)</tr>', page, re.S).group(1)
    why = re.search(r'class="why">([^<]*)', row).group(1)
    assert why.startswith(f"held: calibration {cal} did not refresh its keys"), why
    # released by hand, then held by hand: no stale reason
    rpc_ok(d, "pause")
    rpc_ok(d, "release", job_id=job)
    rpc_ok(d, "hold", job_id=job)
    assert rpc_ok(d, "get", job_id=job)["hold_reason"] is None
    assert "hold_reason" not in [w for w in rpc_ok(d, "queue")["waiting"]
                                 if w["job_id"] == job][0]
    # an applied update: the new version (linked) and old -> new per key
    rpc_ok(d, "resume")
    applied = rpc_ok(d, "submit", experiment_class=FAKE[0], experiment_module=FAKE[1],
                     experiment_config={"value": 31.5}, update_main=True)["job_id"]
    done = rpc_ok(d, "wait", job_id=applied, timeout=60)
    assert done["config_update"]["applied"], done
    vid = done["config_update"]["version_id"]
    _, page, _ = await http(d, "GET", f"/jobs/{applied}")
    upd = _dd(page, "config-update")
    assert upd.lstrip().startswith('<span class="applied">applied</span>')
    assert f'new version <a href="/configs/version/{vid}">{vid}</a>' in upd
    old = done["config_update"]["changes"][T1_KEY]["old"]
    assert f'<span class="mono">{T1_KEY}</span>: {json.dumps(old)} → 31.5' in upd


def test_config_update_shows_merge_and_escapes_user_text():
    """The job template alone: a merged update, and hostile text in keys, values and
    reasons comes out escaped."""
    from labd.web.pages import Pages
    job = {"job_id": "JOB-20260101-00001", "status": "completed", "experiment_class": "X",
           "experiment_module": "m", "user": HOSTILE, "os_user": "u", "os_uid": 1,
           "priority": 0, "created_at": "2026-01-01T00:00:00+00:00", "config_versions": {},
           "pinned_versions": {}, "experiment_config": {}, "results": {},
           "update_main": True, "calibration": {"config_type": HOSTILE},
           "fresh": [HOSTILE], "calibrated_by": ["JOB-20260101-00002"], "held": True,
           "hold_reason": HOSTILE,
           "config_update": {"applied": False, "version_id": "CFG-HW-3",
                             "base_version": "CFG-HW-1", "merged_with": "CFG-HW-2",
                             "changes": {HOSTILE: {"old": HOSTILE, "new": 2.5}},
                             "reason": HOSTILE}}
    page = Pages(None).env.get_template("job_fragment.html").render(job=job, csrf="c")
    assert "<script>alert" not in page
    upd = _dd(page, "config-update")
    assert "not applied" in upd and 'proposed version <a href="/configs/version/CFG-HW-3">' \
        in upd
    assert 'merged with main <a href="/configs/version/CFG-HW-2">CFG-HW-2</a>' in upd
    assert 'ran with <a href="/configs/version/CFG-HW-1">' in upd
    esc = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#34;&#39;"
    assert f"{esc}</div>" in upd                                  # the reason
    assert esc in _dd(page, "hold-reason") and esc in _dd(page, "fresh")
    assert f'<span class="mono">{esc}</span>: ' in upd            # the key


async def test_pages_show_a_preemption(make_daemon):
    """(#16) The queue page says which job a preempted job yielded to and since when (and
    that the running one is yielding); its job page counts its preemptions."""
    d = make_daemon(mock_speed=0.1, mock_seed=7, preempt_margin=5)
    sweep = {"experiment_class": "T1Experiment",
             "experiment_module": "experiments.single_qubit.t1",
             "experiment_config": {"reps": 100, "expts": 24, "rounds": 40}}
    long = rpc_ok(d, "submit", **sweep)["job_id"]
    deadline = asyncio.get_running_loop().time() + 30
    while (rpc_ok(d, "get", job_id=long).get("progress") or 0) <= 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    urgent = rpc_ok(d, "submit", experiment_class="SleepExperiment",
                    experiment_module="experiments.diagnostics.sleep",
                    experiment_config={"seconds": 30, "steps": 300}, priority=10)["job_id"]
    while rpc_ok(d, "get", job_id=long)["phase"] != "preempted":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    status, page, _ = await http(d, "GET", "/")
    row = re.search(rf'<tr data-job="{long}">(.*?)</tr>', page, re.S).group(1)
    assert re.search(rf'class="why">preempted by {urgent} at \d{{4}}-', row), row
    status, page, _ = await http(d, "GET", f"/jobs/{long}")
    assert status == 200
    assert re.search(rf'1 time; last by <a href="/jobs/{urgent}">{urgent}</a> at ',
                     _dd(page, "preempted"))
    rpc_ok(d, "cancel", job_id=urgent)
