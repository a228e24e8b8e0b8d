"""A job as the client sees it: the daemon's Job model plus the predecessor's convenience
calls. Unknown fields from a newer daemon are kept, not rejected."""
from __future__ import annotations

import html
from typing import Any

from pydantic import ConfigDict

from labd.models import Job


class JobResult(Job):
    model_config = ConfigDict(extra="allow")
    position: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        return cls.model_validate(d)

    @property
    def raw(self) -> dict[str, Any]:
        """All fields as plain JSON types (what ``--json`` prints)."""
        return self.model_dump(mode="json")

    def is_done(self) -> bool:
        return self.is_terminal()

    def is_successful(self) -> bool:
        return self.status == "completed"

    def _repr_html_(self) -> str:
        rows = [("job", self.job_id), ("status", self.status.value),
                ("experiment", f"{self.experiment_module}.{self.experiment_class}"),
                ("user", f"{self.user} ({self.os_user})"), ("created", self.created_at),
                ("finished", self.finished_at), ("data file", self.data_file_path),
                ("error", self.error_message), ("results", self.results or None)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}"
                       f"</td></tr>" for k, v in rows if v is not None)
        return f"<table>{body}</table>"
