"""``labd``: run the daemon."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import __version__
from .settings import Settings


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
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.load(args.config, socket_path=args.socket,
                                 state_dir=args.state_dir,
                                 hardware="mock" if args.mock else None)
    except Exception as exc:
        print(f"labd: bad settings: {exc}", file=sys.stderr)
        return 2
    from .daemon import Daemon
    try:
        asyncio.run(Daemon(settings).run())
    except RuntimeError as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
