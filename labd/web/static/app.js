// labd dashboard: live updates pushed by the daemon (server-sent events), no polling.
// The server renders every page; this script only patches it: progress bars and log
// lines in place, and the page's live fragment re-fetched (debounced) when a job or the
// queue changes, after a reconnect, or when the daemon says this page fell behind.
// User text is only ever inserted as text (textContent) or as server-escaped HTML.
(function () {
  "use strict";
  const meta = (n) => { const m = document.querySelector('meta[name="' + n + '"]'); return m ? m.content : null; };
  let csrf = meta("labd-csrf");
  const uid = Number(meta("labd-uid"));
  let instance = meta("labd-instance");
  const jobId = meta("labd-job");
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  const flashBox = document.getElementById("flash");
  const LOG_KEEP = 64 * 1024;

  function setStatus(state, text) {
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  function flash(text, bad) {
    if (!flashBox) return;
    flashBox.textContent = text;
    flashBox.classList.toggle("bad", !!bad);
    flashBox.hidden = false;
    clearTimeout(flash.t);
    flash.t = setTimeout(() => { flashBox.hidden = true; }, bad ? 8000 : 2500);
  }

  // ---- fragment refresh (debounced; one fetch at a time) ----
  // A burst of changes (a 10k-job batch) costs at most one fetch per second, or per ten
  // times the fetch's own cost: a big queue page never loads the daemon.
  let timer = null, inflight = false, again = false, notBefore = 0;
  function refresh(delay) {
    if (!live || timer) return;
    const wait = Math.max(delay === undefined ? 250 : delay, notBefore - Date.now());
    timer = setTimeout(doRefresh, wait);
  }
  async function doRefresh() {
    timer = null;
    if (inflight) { again = true; return; }
    inflight = true;
    const t0 = Date.now();
    try {
      const r = await fetch(live.dataset.fragment, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (r.ok) {
        live.innerHTML = await r.text();   // server-rendered, autoescaped
        live.dataset.refreshed = String(Number(live.dataset.refreshed || 0) + 1);
        scrollLogs();
      }
    } catch (e) { /* the event stream's reconnect will refresh again */ }
    finally {
      notBefore = Date.now() + Math.max(1000, 10 * (Date.now() - t0));
      inflight = false;
      if (again) { again = false; refresh(); }
    }
  }

  function scrollLogs() {
    document.querySelectorAll("pre.log").forEach((p) => { p.scrollTop = p.scrollHeight; });
  }

  // ---- events ----
  const notified = new Set();
  let lastEtaRefresh = Date.now();
  function notifyEnd(ev) {
    if (!ev.terminal || ev.os_uid !== uid || notified.has(ev.job_id)) return;
    notified.add(ev.job_id);
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    try {
      const n = new Notification(ev.job_id + " " + ev.status, {
        body: (ev.experiment_class || "") + (ev.error_message ? ": " + ev.error_message : ""),
        tag: ev.job_id,
      });
      n.onclick = () => { window.focus(); location.href = "/jobs/" + encodeURIComponent(ev.job_id); };
    } catch (e) { /* e.g. no permission on this origin */ }
  }

  function onEvent(ev) {
    if (ev.type === "progress") {
      // expected start times move with the running job: re-render them now and then
      if (Date.now() - lastEtaRefresh > 30000) { lastEtaRefresh = Date.now(); refresh(); }
      document.querySelectorAll("progress").forEach((p) => {
        if (p.dataset.progressFor === ev.job_id) p.value = ev.progress;
      });
      document.querySelectorAll("[data-progress-text-for]").forEach((s) => {
        if (s.dataset.progressTextFor === ev.job_id) s.textContent = Math.round(ev.progress * 100) + "%";
      });
    } else if (ev.type === "log") {
      document.querySelectorAll("pre.log").forEach((p) => {
        if (p.dataset.logFor !== ev.job_id) return;
        const stick = p.scrollTop + p.clientHeight >= p.scrollHeight - 4;
        p.appendChild(document.createTextNode(ev.text));
        if (p.textContent.length > LOG_KEEP * 2) p.textContent = p.textContent.slice(-LOG_KEEP);
        if (stick) p.scrollTop = p.scrollHeight;
      });
    } else if (ev.type === "job") {
      notifyEnd(ev);
      refresh();
    } else if (ev.type === "changed") {
      refresh();
    }
  }

  // A half-open connection (an ssh tunnel whose far end is gone) never errors: the
  // daemon sends a "ping" every keepalive_s seconds (told in "hello"), and a stream
  // silent for three of them is closed and opened again (the new hello re-fetches).
  let hellos = 0, keepaliveMs = 15000, watchdog = null, current = null;
  function feed(es) {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => {
      if (es !== current) return;
      es.close();
      setStatus("down", "reconnecting…");
      connect();
    }, 3 * keepaliveMs);
  }
  function connect() {
    if (!window.EventSource) return;
    const es = new EventSource("/events" + (jobId ? "?job=" + encodeURIComponent(jobId) : ""));
    current = es;
    feed(es);
    es.addEventListener("hello", (e) => {
      const h = JSON.parse(e.data);
      if (h.keepalive_s > 0) keepaliveMs = h.keepalive_s * 1000;
      feed(es);
      csrf = h.csrf;   // a restarted daemon has a new secret
      document.querySelectorAll('input[name="csrf"]').forEach((i) => { i.value = csrf; });
      // Anything may have changed while we were not listening: re-fetch.
      if (hellos > 0 || h.instance !== instance) refresh(0);
      instance = h.instance;
      hellos += 1;
      setStatus("live", "live");
    });
    es.addEventListener("ping", () => feed(es));
    es.onmessage = (e) => {
      feed(es);
      try { onEvent(JSON.parse(e.data)); } catch (err) { /* ignore */ }
    };
    es.onerror = () => {
      if (es !== current) return;
      setStatus("down", "reconnecting…");
      if (es.readyState === EventSource.CLOSED) {   // gave up (e.g. a 5xx): retry ourselves
        clearTimeout(watchdog);
        setTimeout(connect, 3000);
      }
    };
  }

  // ---- actions: the same rules as labctl; forms work without JS too ----
  document.addEventListener("submit", async (e) => {
    const form = e.target;
    if (!form.classList || !form.classList.contains("act")) return;
    e.preventDefault();
    const btn = e.submitter;
    const url = btn && btn.formAction ? btn.formAction : form.action;
    const body = new URLSearchParams(new FormData(form, btn));
    if (btn) btn.disabled = true;
    try {
      const r = await fetch(url, { method: "POST", body, cache: "no-store",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" } });
      let j = {};
      try { j = await r.json(); } catch (err) { j = { error: await r.text().catch(() => r.statusText) }; }
      if (r.ok) { flash("done"); } else { flash(j.error || ("refused: " + r.status), true); }
    } catch (err) {
      flash("labd is not reachable", true);
    } finally {
      if (btn) btn.disabled = false;
      refresh(0);
    }
  });

  // ---- browser notifications for your own jobs ----
  const nb = document.getElementById("notify-btn");
  if (nb && "Notification" in window && Notification.permission === "default") {
    nb.hidden = false;
    nb.addEventListener("click", () => Notification.requestPermission().then(() => { nb.hidden = true; }));
  }

  // after the first paint: reading scrollHeight forces a layout of the whole page
  window.addEventListener("load", () => requestAnimationFrame(scrollLogs));
  connect();
})();
