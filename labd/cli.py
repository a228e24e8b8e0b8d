"""``labd``: run the daemon. Start-up order: settings, lock the state dir, check the state
disk, database and socket (``startup_checks``), then the daemon. Exit codes are in
``startup_checks`` (0 after a clean stop)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import queue
import sys
from pathlib import Path

from . import __version__, startup_checks
from .job_log import UnlockedHandler
from .settings import Settings
from .startup_checks import EXIT_FAILED, EXIT_SETTINGS, StartupError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labd", description="labd job scheduler daemon")
    ap.add_argument("--config", type=Path, help="settings file (TOML); default $LABD_CONFIG")
    ap.add_argument("--mock", action="store_true", help="simulated board (the default "
                    "unless the settings file says hardware = \"pyro\")")
    ap.add_argument("--socket", type=Path, help="socket path (overrides settings)")
    ap.add_argument("--state-dir", type=Path, help="state directory (overrides settings)")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--version", action="version", version=f"labd {__version__}")
    args = ap.parse_args(argv)
    # The daemon's log (stderr: the journal under systemd) is written by one listener
    # thread: a slow journal never stalls the event loop, and a log line from the board
    # thread costs it no system call between two acquisitions.
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream)
    queued = _QueueHandler(records)
    queued.setFormatter(logging.Formatter("%(message)s"))  # the listener's adds the rest
    logging.basicConfig(level=args.log_level.upper(), handlers=[queued])
    listener.start()
    try:
        return _run(args, listener)
    finally:
        listener.stop()


class _QueueHandler(logging.handlers.QueueHandler, UnlockedHandler):
    """Puts records on the listener's queue (thread-safe by itself: no handler lock)."""


def _run(args: argparse.Namespace, listener: logging.handlers.QueueListener) -> int:
    try:
        settings = Settings.load(args.config, socket_path=args.socket,
                                 state_dir=args.state_dir,
                                 hardware="mock" if args.mock else None)
    except Exception as exc:
        print(f"labd: bad settings: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    try:  # first of all, the state dir's lock: its fd stays open until the process ends
        startup_checks.run_all(settings.state_dir, settings.db_path, settings.socket_path)
    except StartupError as exc:
        print(f"labd: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(settings.fit_threads)   # numpy is not loaded yet
    from .daemon import Daemon
    try:
        asyncio.run(Daemon(settings).run())
    except Exception as exc:
        # One line, then leave at once: a failed start must not hang on the threads it
        # already started (database, executor). Everything acknowledged is committed.
        logging.getLogger("labd").debug("start-up or run failed", exc_info=True)
        listener.stop()
        print(f"labd: stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
