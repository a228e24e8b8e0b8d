"""A job as the client sees it, with the predecessor's convenience calls."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class JobResult:
    job_id: str
    status: str
    user: str = ""
    os_user: str = ""
    experiment_class: str = ""
    experiment_module: str = ""
    experiment_config: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    data_file_path: str | None = None
    log_path: str | None = None
    error_message: str | None = None
    batch_id: str | None = None
    config_versions: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    position: int | None = None
    progress: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "raw"}
        return cls(**known, raw=d)

    def is_done(self) -> bool:
        return self.status in TERMINAL

    def is_successful(self) -> bool:
        return self.status == "completed"

    def _repr_html_(self) -> str:
        rows = [("job", self.job_id), ("status", self.status),
                ("experiment", f"{self.experiment_module}.{self.experiment_class}"),
                ("user", f"{self.user} ({self.os_user})"), ("created", self.created_at),
                ("finished", self.finished_at), ("data file", self.data_file_path),
                ("error", self.error_message), ("results", self.results or None)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}"
                       f"</td></tr>" for k, v in rows if v is not None)
        return f"<table>{body}</table>"
