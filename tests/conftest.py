from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import Daemon  # noqa: E402


@pytest.fixture
def make_daemon():
    """Factory for daemons with custom settings; all are killed after the test."""
    made: list[Daemon] = []

    def make(start: bool = True, **settings) -> Daemon:
        d = Daemon(**settings)
        made.append(d)
        return d.start() if start else d
    yield make
    for d in made:
        d.close()
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon():
    """A daemon shared by the tests of one module (default settings)."""
    d = Daemon().start()
    yield d
    d.close()
    shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def client(daemon):
    from labd_client import Client
    with Client(daemon.socket) as c:
        yield c
