"""Client: the synchronous face of AsyncClient for notebooks and scripts. It runs its own
event loop in a background thread, so it works the same inside Jupyter's running loop."""
from __future__ import annotations

import asyncio
import functools
import os
import threading
from typing import Any, Callable, Iterator

from .async_client import AsyncClient
from .results import JobResult
from .views import format_queue


def _sync(name: str) -> Callable[..., Any]:
    target = getattr(AsyncClient, name)

    @functools.wraps(target)
    def method(self: "Client", *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._async, name)(*args, **kwargs))
    return method


class Client:
    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = 60.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="labd-client",
                                        daemon=True)
        self._thread.start()
        self._async = AsyncClient(socket_path, timeout)
        self.socket_path = self._async.socket_path

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    call = _sync("call")
    health = _sync("health")
    submit = _sync("submit")
    submit_batch = _sync("submit_batch")
    get = _sync("get")
    cancel = _sync("cancel")
    cancel_batch = _sync("cancel_batch")
    rerun = _sync("rerun")
    retry = _sync("retry")
    cancel_user = _sync("cancel_user")
    hold = _sync("hold")
    release = _sync("release")
    set_priority = _sync("set_priority")
    pause = _sync("pause")
    resume = _sync("resume")
    queue = _sync("queue")
    history = _sync("history")
    wait = _sync("wait")
    logs = _sync("logs")
    load_data = _sync("load_data")
    config_push = _sync("config_push")
    config_pull = _sync("config_pull")
    config_versions = _sync("config_versions")
    config_show = _sync("config_show")
    config_set_main = _sync("config_set_main")
    config_history = _sync("config_history")
    config_diff = _sync("config_diff")
    config_verify = _sync("config_verify")
    config_types = _sync("config_types")

    def follow_logs(self, job_id: str, offset: int = 0) -> Iterator[str]:
        """Yield the job's log text live until the job ends."""
        agen = self._async.follow_logs(job_id, offset)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())


class JobClient(Client):
    """The predecessor's client calls, kept so existing notebooks run unchanged."""

    def health_check(self) -> dict[str, Any]:
        return self.health()

    def submit_job(self, experiment_class: str, experiment_module: str,
                   expt_config: dict[str, Any] | None = None, user: str | None = None,
                   priority: int | None = None, **kwargs: Any) -> str:
        return self.submit(experiment_class, experiment_module, expt_config, user=user,
                           priority=priority, **kwargs)

    def get_status(self, job_id: str) -> JobResult:
        return self.get(job_id)

    def wait_for_completion(self, job_id: str, timeout: float | None = None,
                            show_progress: bool = True) -> JobResult:
        return self.wait(job_id, timeout=timeout, progress=show_progress)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.cancel(job_id)

    def get_history(self, user: str | None = None, status: str | None = None,
                    limit: int = 50) -> list[JobResult]:
        return self.history(user=user, status=status, limit=limit)

    def print_queue(self, user: str | None = None) -> None:
        print(format_queue(self.queue(user=user)))

