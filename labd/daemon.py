"""Wires the daemon together and runs it: open the database, recover, start the executor and
the socket, then serve until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time
from typing import Any

from . import __version__
from .api import Call, load_methods
from .config_store import ConfigStore
from .context import AppContext
from .events import EventBus
from .executor import Executor
from .experiment_loader import ExperimentLoader
from .hardware import make_board
from .hardware.setpoint import Setpoint
from .identity import AdminPolicy
from .job_log import LogRouter
from .notify import WebhookSender
from .rpc_server import RpcServer, bind_socket, systemd_sockets
from .scheduler.core import Scheduler
from .schedules import Schedules
from .sd_notify import Notifier
from .settings import Settings
from .store import Store

log = logging.getLogger("labd")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_mono = time.monotonic()
        self.events = EventBus()
        self.notifier = Notifier()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        s = self.settings
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:  # one fd per client connection: allow as many as the system does
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        for d in (s.state_dir, s.output_root):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store(s.db_path)
        await self.store.open()
        # notifications listen before recovery, so jobs a crash interrupted notify too
        self.webhooks = WebhookSender(s, self.store)
        await self.webhooks.start()
        self.events.listeners.append(self.webhooks.on_event)
        counters = await self.store.counters()
        self.configs = ConfigStore(s, self.store)
        await self.configs.open(counters)
        self.loader = ExperimentLoader(s.allowed_packages)
        n = await asyncio.to_thread(self.loader.preload)
        self.router = LogRouter()
        self.router.install()
        self.board = make_board(s)
        self.executor = Executor(self.loader, self.board, Setpoint(s.setpoint),
                                 self.configs.content, s.max_log_bytes, self.router,
                                 s.fit_backlog_bytes, s.data_writer)
        self.scheduler = Scheduler(s, self.store, self.configs, self.executor, self.events)
        interrupted = await self.scheduler.start(counters)
        self.app = AppContext(settings=s, store=self.store, configs=self.configs,
                              loader=self.loader, scheduler=self.scheduler,
                              events=self.events, started_mono=self.started_mono,
                              schedules=Schedules(s, self.store), webhooks=self.webhooks)
        for job_id in interrupted:
            log.warning("%s was running when labd stopped: marked failed (interrupted)", job_id)
        self.events.listeners.append(self._on_event)
        await self.app.schedules.start(self.app)  # overdue schedules fire once, now

        # socket activation: the sockets are systemd's, not ours (RPC, then dashboard)
        activated = systemd_sockets()
        self.socket_activated = bool(activated)
        sock = activated[0] if activated else \
            bind_socket(s.socket_path, s.socket_mode, s.socket_group)
        self.server = RpcServer(load_methods(), AdminPolicy(s.admin_group, s.admin_users),
                                lambda conn: Call(self.app, conn), s.max_frame_bytes,
                                s.max_connections, s.max_connections_per_user,
                                self.events.unsubscribe, max_reply_bytes=s.max_reply_bytes,
                                max_unsent_bytes=s.max_unsent_bytes)
        await self.server.start(sock)
        self.web = await self._start_web(activated[1] if len(activated) > 1 else None)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("labd %s ready on %s (%s hardware, %d experiment modules, %d pending)",
                 __version__, sock.getsockname() if activated else s.socket_path,
                 s.hardware, n, self.scheduler.runnable_count)
        self.notifier.send(ready=1, status=self.status_line())
        watchdog = asyncio.create_task(self._watchdog()) if self.notifier.watchdog_s else None
        await self._stop.wait()

        log.info("stopping: no new jobs; stopping the running job at a safe point")
        self.notifier.send(stopping=1, status="stopping")
        await self.server.close()
        await self.app.schedules.stop()   # before the scheduler stops taking jobs
        if self.web is not None:   # dashboard: its event streams end before the scheduler
            await self.web.close()
        await self.scheduler.stop()
        await self.server.drain(timeout=10)  # calls in flight finish before the store closes
        await self.webhooks.stop(s.notify_drain_s)  # bounded: a dead receiver waits no longer
        if watchdog:
            watchdog.cancel()
        self.executor.shutdown()
        await self.store.close()
        self.router.uninstall()
        if not self.socket_activated:
            s.socket_path.unlink(missing_ok=True)
        if self.web is not None and len(activated) < 2:
            s.web_socket_path.unlink(missing_ok=True)
        log.info("stopped")

    async def _start_web(self, sock: Any = None):
        """The dashboard (labd.web) on its own Unix socket beside the RPC one, same mode
        and group, same identity policy; never TCP. ``sock``: systemd's, when activated."""
        s = self.settings
        if not s.web_enabled:
            return None
        from .web import WebServer
        passed = sock is not None
        try:  # a dashboard that cannot start must not keep the scheduler from serving
            if sock is None:
                sock = bind_socket(s.web_socket_path, s.socket_mode, s.socket_group)
        except (OSError, RuntimeError) as exc:
            log.error("dashboard not started: %s (set web_socket_path to a directory labd "
                      "may write, or web_enabled = false)", exc)
            return None
        web = WebServer(self.app, self.server.policy)  # the RPC calls' own policy
        await web.start(sock)
        where = sock.getsockname() if passed else s.web_socket_path
        log.info("dashboard on %s (ssh -L 8080:%s HOST, then http://localhost:8080)",
                 where, where)
        return web

    def status_line(self) -> str:
        sched = self.scheduler
        run = sched.running
        job = f"running {run.job.job_id} ({run.job.experiment_class}, {run.job.user}, " \
              f"{run.progress:.0%})" if run else "idle"
        extra = " PAUSED" if sched.paused else ""
        if sched.dispatcher.stuck_since is not None:
            extra += " EXECUTOR STUCK"
        return f"{job}; {sched.runnable_count} pending{extra}"

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "job" and event.get("status") != "pending":
            self.notifier.send(status=self.status_line())

    async def _watchdog(self) -> None:
        """Ping systemd from the loop (so a blocked loop is noticed), but not while the
        executor is stuck past its job's limit + grace: then systemd restarts us."""
        assert self.notifier.watchdog_s
        while True:
            if self.scheduler.dispatcher.stuck_since is None:
                self.notifier.send(watchdog=1)
            await asyncio.sleep(self.notifier.watchdog_s / 3)
