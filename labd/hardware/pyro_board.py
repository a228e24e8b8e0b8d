"""The real board: a QickSoc served by Pyro4 on the RFSoC, found through a Pyro4 nameserver
(``qick.pyro.make_proxy``). Every call has a timeout (Pyro4 blocks forever by default); a
dropped connection fails the job with a clear message and the next job reconnects."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

import numpy as np
import Pyro4
import Pyro4.errors

from ..settings import PyroSettings

log = logging.getLogger(__name__)


class BoardUnavailable(RuntimeError):
    """The nameserver or the board cannot be reached; the message says which."""


class PyroBoard:
    def __init__(self, cfg: PyroSettings) -> None:
        self.cfg = cfg
        self._soc: Any = None
        self._soccfg: Any = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"kind": "pyro", "ns_host": self.cfg.ns_host, "ns_port": self.cfg.ns_port,
                "name": self.cfg.name, "connected": self._soc is not None}

    def _connect(self) -> None:
        from qick.pyro import make_proxy
        where = f"Pyro4 nameserver {self.cfg.ns_host}:{self.cfg.ns_port}"
        Pyro4.config.COMMTIMEOUT = self.cfg.timeout_s  # applies to the proxies made below
        try:
            soc, soccfg = make_proxy(self.cfg.ns_host, self.cfg.ns_port, self.cfg.name,
                                     remote_traceback=False)
        except Pyro4.errors.NamingError as exc:
            if "unknown name" in str(exc):
                raise BoardUnavailable(f"board {self.cfg.name!r} is not registered in {where}"
                                       ) from None
            raise BoardUnavailable(f"cannot reach {where}: {exc}") from None
        except (Pyro4.errors.CommunicationError, OSError) as exc:
            raise BoardUnavailable(
                f"board {self.cfg.name!r} (via {where}) is not answering: {exc}") from None
        soc._pyroTimeout = self.cfg.timeout_s
        self._soc, self._soccfg = soc, soccfg
        log.info("connected to board %s via %s", self.cfg.name, where)

    def disconnect(self) -> None:
        if self._soc is not None:
            try:
                self._soc._pyroRelease()
            except Exception:
                pass
        self._soc = self._soccfg = None

    def _connected(self) -> tuple[Any, Any]:
        """(soc proxy, QickConfig), connecting first if there is no live connection."""
        with self._lock:
            if self._soc is None:
                self._connect()
            return self._soc, self._soccfg

    @property
    def soccfg(self) -> Any:
        return self._connected()[1]

    def acquire(self, prog: Any, *, rounds: int, ctx: Any,
                model: Callable[[dict[str, float]], np.ndarray],
                shot_us: float = 0.0,
                round_index: tuple[int, int] | None = None) -> np.ndarray:
        """``model``, ``shot_us`` and ``round_index`` are for the simulated board: a real
        one just runs."""
        soc, _ = self._connected()
        try:
            prog.acquire(soc, rounds=rounds, step_rounds=True, progress=False)
            done = 0
            while True:  # round by round, so a cancel takes effect between rounds
                ctx.check_stop()
                more = prog.finish_round()
                done += 1
                ctx.progress(done, rounds)
                if not more:
                    break
                prog.prepare_round()
            data = prog.finish_acquire()
        except (Pyro4.errors.CommunicationError, OSError) as exc:
            self.disconnect()  # the next job reconnects
            raise BoardUnavailable(f"lost connection to board {self.cfg.name!r}: {exc}"
                                   ) from None
        return self._iq(data)

    @staticmethod
    def _iq(data: Any) -> np.ndarray:
        arr = np.asarray(data[0], dtype=float)  # first readout channel: (..., reads, 2)
        return (arr[..., 0] + 1j * arr[..., 1]).reshape(-1)

    def acquire_rounds(self, prog: Any, *, rounds: int, ctx: Any,
                       model: Callable[[dict[str, float]], np.ndarray] | None = None,
                       shot_us: float = 0.0) -> Iterator[np.ndarray]:
        """(#16) ``rounds`` rounds of one loaded program, yielding each round's IQ
        (averaged over reps, from qick's per-round buffer) as it completes: labd's safe
        points sit between them, and closing the generator simply stops stepping."""
        soc, _ = self._connected()
        try:
            prog.acquire(soc, rounds=rounds, step_rounds=True, progress=False)
            done = 0
            while True:
                ctx.check_stop()
                more = prog.finish_round()
                done += 1
                ctx.progress(done, rounds)
                yield self._iq(prog.rounds_buf[-1])
                if not more:
                    return
                prog.prepare_round()
        except (Pyro4.errors.CommunicationError, OSError) as exc:
            self.disconnect()  # the next job reconnects
            raise BoardUnavailable(f"lost connection to board {self.cfg.name!r}: {exc}"
                                   ) from None
