"""A job as the client sees it: the daemon's Job model plus the predecessor's convenience
calls and field names. It reads like the predecessor's dicts too (``job['status']``), so
old notebooks keep working. Unknown fields from a newer daemon are kept, not rejected."""
from __future__ import annotations

import html
from typing import Any, Iterator

from pydantic import ConfigDict

from .protocol import Job

_PREDECESSOR_VERSION_FIELDS = ("hardware_config", "multiphoton_config",
                               "floquet_storage_swap", "man1_storage_swap")


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

    # ---- the predecessor's names ------------------------------------------------------
    @property
    def completed_at(self) -> str | None:
        return self.finished_at

    @property
    def queue_position(self) -> int | None:
        return self.position

    @property
    def hardware_config_version_id(self) -> str | None:
        return self.config_versions.get("hardware_config")

    @property
    def multiphoton_config_version_id(self) -> str | None:
        return self.config_versions.get("multiphoton_config")

    @property
    def floquet_storage_swap_version_id(self) -> str | None:
        return self.config_versions.get("floquet_storage_swap")

    @property
    def man1_storage_swap_version_id(self) -> str | None:
        return self.config_versions.get("man1_storage_swap")

    def to_dict(self) -> dict[str, Any]:
        """JSON fields plus the predecessor's names."""
        out = self.raw
        out.update((k, getattr(self, k)) for k in _ALIASES)
        return out

    # ---- read like a dict -------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in self.keys():
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.keys() else default

    def keys(self) -> list[str]:
        return [*type(self).model_fields, *(self.model_extra or {}), *_ALIASES]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        """Keys, as iterating a dict gives (pydantic's pairs would surprise dict users)."""
        return iter(self.keys())

    def _repr_html_(self) -> str:
        rows = [("job", self.job_id), ("status", self.status.value),
                ("experiment", f"{self.experiment_module}.{self.experiment_class}"),
                ("user", f"{self.user} ({self.os_user})"), ("created", self.created_at),
                ("finished", self.finished_at), ("data file", self.data_file_path),
                ("error", self.error_message), ("results", self.results or None)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}"
                       f"</td></tr>" for k, v in rows if v is not None)
        return f"<table>{body}</table>"


_ALIASES = ("completed_at", "queue_position",
            *(f"{t}_version_id" for t in _PREDECESSOR_VERSION_FIELDS))
