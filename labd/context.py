"""AppContext: the typed set of parts an RPC handler may use, built once by the daemon.
Handlers get this (and the caller's identity) instead of reaching into the daemon."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config_store import ConfigStore
from .events import EventBus
from .experiment_loader import ExperimentLoader
from .notify import WebhookSender
from .scheduler.core import Scheduler
from .settings import Settings
from .store import Store

if TYPE_CHECKING:
    from .schedules import Schedules


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    store: Store
    configs: ConfigStore
    loader: ExperimentLoader
    scheduler: Scheduler
    events: EventBus
    started_mono: float
    schedules: "Schedules | None" = None   # recurring submits (#13)
    webhooks: WebhookSender | None = None   # job/batch-end notifications (#12)
