"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright,
reaching the daemon's web socket through a 127.0.0.1 forwarder (the tests' ``ssh -L``).
Screenshots land in tests/artifacts/ (git-ignored)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_web import NOOP, OTHER, OTHER_PY, T1, _RPC_AS_UID, rpc_ok

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FORWARD = Path(__file__).resolve().parent / "web_forward.py"
T = 20_000   # ms: every wait in a browser test is bounded

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed "
                               "(pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no chromium: "
                                "apt-get install -y chromium chromium-driver (.ci/run does)")


class Forwarder:
    """127.0.0.1:PORT -> the daemon's web.sock, connecting as ``uid`` (None: as us)."""

    def __init__(self, unix_path: Path, uid: int | None = None) -> None:
        kw = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [OTHER_PY if uid is not None else sys.executable, str(FORWARD),
             str(unix_path), "600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kw)
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"forwarder did not start: {line!r}"
        self.url = f"http://localhost:{int(line)}"

    def freeze(self) -> None:
        """Event streams open now go silent without closing (a half-open tunnel)."""
        self.proc.stdin.write(b"freeze\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == b"frozen"

    def close(self) -> None:
        self.proc.stdin.close()   # it exits on EOF
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True,
                               timeout=60_000)
        yield b
        b.close()


@pytest.fixture
def forward():
    made: list[Forwarder] = []

    def make(d, uid: int | None = None) -> Forwarder:
        f = Forwarder(d.root / "web.sock", uid)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    # record browser notifications instead of showing them
    ctx.add_init_script("""
      window.__notes = [];
      window.Notification = class { constructor(t, o) { window.__notes.push({title: t, body: (o||{}).body}); }
        static get permission() { return "granted"; } static requestPermission() { return Promise.resolve("granted"); } };
    """)
    p = ctx.new_page()
    p.set_default_timeout(T)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.errors = errors
    yield p
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        p.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    except Exception:
        pass
    ctx.close()


def wait_live(p) -> None:
    p.wait_for_selector('#live-status[data-state="live"]')


def test_queue_page_updates_live_and_notifies(make_daemon, forward, page):
    d = make_daemon()
    rpc_ok(d, "pause")
    f = forward(d)
    page.goto(f.url + "/")
    assert page.locator("#no-pending").is_visible()
    wait_live(page)
    page.evaluate("window.__same_document = true")
    from labd_client import Client
    with Client(d.socket) as c:
        job = c.submit(**NOOP)
    page.wait_for_selector(f'#pending-table tr[data-job="{job}"]')
    assert page.evaluate("window.__same_document") is True   # patched, not reloaded
    assert "1 pending" in page.locator("#pending-count").inner_text()
    assert page.locator(f'tr[data-job="{job}"] .why').inner_text() == "paused"
    # its end pushes a notification to its owner (the viewer here)
    rpc_ok(d, "resume")
    page.wait_for_function("() => window.__notes.length > 0")
    notes = page.evaluate("window.__notes")
    assert notes[0]["title"] == f"{job} completed"
    page.wait_for_selector("#no-pending")
    assert page.evaluate("window.__same_document") is True
    assert not page.errors


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_cancel_button_only_on_own_jobs(make_daemon, forward, page):
    d = make_daemon(socket_mode=0o666)
    rpc_ok(d, "pause")
    roots = rpc_ok(d, "submit", **NOOP)["job_id"]
    out = subprocess.run([OTHER_PY, "-c", _RPC_AS_UID, str(d.socket)],
                         input=json.dumps({"jsonrpc": "2.0", "method": "submit",
                                           "params": NOOP, "id": 1}).encode() + b"\n",
                         capture_output=True, timeout=60, user=OTHER, group=OTHER,
                         extra_groups=[], check=True)
    theirs = json.loads(out.stdout)["result"]["job_id"]
    f = forward(d, uid=OTHER)                  # the browser is the other account
    page.goto(f.url + "/")
    wait_live(page)
    assert page.locator(".who .user").inner_text().startswith("uid65533")
    own_row = page.locator(f'tr[data-job="{theirs}"]')
    other_row = page.locator(f'tr[data-job="{roots}"]')
    assert other_row.is_visible() and own_row.is_visible()
    assert other_row.locator('[data-action="cancel"]').count() == 0
    # a forged request for root's job is refused by the same rule as RPC
    status = page.evaluate("""async (job) => {
        const csrf = document.querySelector('meta[name="labd-csrf"]').content;
        const r = await fetch('/jobs/' + job + '/cancel', {method: 'POST',
            headers: {'X-CSRF-Token': csrf, 'Accept': 'application/json'}});
        return [r.status, (await r.json()).error];
    }""", roots)
    assert status[0] == 403 and "belongs to another account" in status[1]
    own_row.locator('[data-action="cancel"]').click()
    page.wait_for_selector(f'tr[data-job="{theirs}"]', state="detached")
    assert rpc_ok(d, "get", job_id=theirs)["status"] == "cancelled"
    assert rpc_ok(d, "get", job_id=roots)["status"] == "pending"
    assert other_row.is_visible()
    assert not page.errors


def test_job_page_shows_plot_in_both_themes(make_daemon, forward, page):
    d = make_daemon()
    job = rpc_ok(d, "submit", **T1)["job_id"]
    assert rpc_ok(d, "wait", job_id=job, timeout=60)["status"] == "completed"
    f = forward(d)
    page.goto(f.url + f"/jobs/{job}")
    plot = page.locator("svg.plot")
    plot.wait_for()
    box = plot.bounding_box()
    assert box["width"] > 500 and box["height"] > 250
    assert page.locator("svg.plot circle.data").count() >= 51
    fit = page.locator("svg.plot polyline.fit")
    assert len(fit.get_attribute("points").split()) > 100
    light = fit.evaluate("e => getComputedStyle(e).stroke")
    page.screenshot(path=str(ARTIFACTS / "job_plot_light.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    dark = fit.evaluate("e => getComputedStyle(e).stroke")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.screenshot(path=str(ARTIFACTS / "job_plot_dark.png"), full_page=True)
    assert light != dark and bg != "rgb(255, 255, 255)"
    assert page.locator("#download").get_attribute("href") == f"/jobs/{job}/data.h5"
    assert not page.errors


def test_page_resyncs_after_daemon_restart(make_daemon, forward, page):
    d = make_daemon()
    rpc_ok(d, "pause")
    f = forward(d)
    page.goto(f.url + "/")
    wait_live(page)
    page.evaluate("window.__same_document = true")
    old_csrf = page.evaluate("document.querySelector('input[name=csrf]').value")
    assert d.terminate() == 0
    page.wait_for_selector('#live-status[data-state="down"]')
    d.start()
    job = rpc_ok(d, "submit", **NOOP)["job_id"]       # while the page may still be away
    page.wait_for_selector(f'#pending-table tr[data-job="{job}"]', timeout=30_000)
    wait_live(page)
    # the new daemon's token was handed over on reconnect: actions work without reload
    assert page.evaluate("document.querySelector('input[name=csrf]').value") != old_csrf
    page.locator(f'tr[data-job="{job}"] [data-action="cancel"]').click()
    page.wait_for_selector(f'tr[data-job="{job}"]', state="detached")
    assert rpc_ok(d, "get", job_id=job)["status"] == "cancelled"
    assert page.evaluate("window.__same_document") is True
    assert not page.errors


def test_page_reconnects_when_its_stream_goes_silent(make_daemon, forward, page):
    """A half-open tunnel: the event stream's socket stays open but no byte arrives. The
    page hears no ping for 3x web_keepalive_s, reconnects and re-fetches what it missed."""
    d = make_daemon(web_keepalive_s=0.5)
    rpc_ok(d, "pause")
    f = forward(d)
    page.goto(f.url + "/")
    wait_live(page)
    page.evaluate("window.__same_document = true")
    f.freeze()
    job = rpc_ok(d, "submit", **NOOP)["job_id"]     # its "changed" is stuck in the tunnel
    page.wait_for_selector(f'#pending-table tr[data-job="{job}"]')
    wait_live(page)
    assert page.evaluate("window.__same_document") is True
    assert not page.errors


def test_hold_on_one_page_shows_on_another(make_daemon, forward, page):
    d = make_daemon()
    rpc_ok(d, "pause")
    job = rpc_ok(d, "submit", **NOOP)["job_id"]
    f = forward(d)
    other = page.context.new_page()
    other.set_default_timeout(T)
    for p in (page, other):
        p.goto(f.url + "/")
        wait_live(p)
    page.locator(f'#pending-table tr[data-job="{job}"] [data-action="hold"]').click()
    held = other.locator(f'.waiting tr[data-job="{job}"] .why')
    held.wait_for()
    assert held.inner_text() == "held"
    assert other.locator(f'#pending-table tr[data-job="{job}"]').count() == 0
    other.locator(f'.waiting tr[data-job="{job}"] [data-action="release"]').click()
    page.wait_for_selector(f'#pending-table tr[data-job="{job}"]')
    assert rpc_ok(d, "get", job_id=job)["held"] is False
    assert not page.errors


def test_job_page_live_log_and_progress(make_daemon, forward, page):
    d = make_daemon()
    job = rpc_ok(d, "submit", experiment_class="SleepExperiment",
                 experiment_module="experiments.diagnostics.sleep",
                 experiment_config={"seconds": 4, "steps": 8})["job_id"]
    f = forward(d)
    page.goto(f.url + f"/jobs/{job}")
    wait_live(page)
    page.evaluate("window.__same_document = true")
    # lines and progress arrive while it runs (pushed, no reload)
    page.wait_for_function("() => document.getElementById('job-log').textContent"
                           ".includes('step 2/8') && document.getElementById('job-status')"
                           ".textContent === 'running' && document.querySelector("
                           "'progress[data-progress-for]').value >= 0.25",
                           timeout=30_000)
    page.wait_for_function("() => document.getElementById('job-log').textContent"
                           ".includes('step 8/8')", timeout=30_000)
    page.wait_for_selector("#job-status.s-completed", timeout=30_000)
    assert page.evaluate("window.__same_document") is True
    assert not page.errors


def test_works_with_javascript_off(browser, make_daemon, forward):
    d = make_daemon()
    rpc_ok(d, "pause")
    job = rpc_ok(d, "submit", **NOOP)["job_id"]
    f = forward(d)
    ctx = browser.new_context(java_script_enabled=False)
    try:
        p = ctx.new_page()
        p.set_default_timeout(T)
        p.goto(f.url + "/")
        row = p.locator(f'#pending-table tr[data-job="{job}"]')
        assert row.is_visible() and "NoOpExperiment" in row.inner_text()
        row.locator('[data-action="hold"]').click()      # a plain form POST + redirect
        p.wait_for_selector(f'.waiting tr[data-job="{job}"]')
        assert rpc_ok(d, "get", job_id=job)["held"] is True
        p.goto(f.url + f"/jobs/{job}")
        assert "held" in p.locator("dl.meta").inner_text()
        p.screenshot(path=str(ARTIFACTS / "javascript_off.png"), full_page=True)
    finally:
        ctx.close()
