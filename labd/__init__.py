"""labd: one-at-a-time job scheduler for a shared QICK quantum-control station."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labd")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
