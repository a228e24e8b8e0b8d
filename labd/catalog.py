"""The experiment catalog (``experiments`` RPC): every class a job may run, with its config
fields (type, default, unit, description) read from the pydantic model, so a user can
discover what to submit without reading the source. A class is listed only if the
daemon's own ExperimentLoader accepts it, i.e. exactly what a submit would accept."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from labd_client.protocol import InvalidParams
from .experiment_loader import ExperimentLoader


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(typing|builtins)\.", "", str(annotation))


def describe_field(name: str, f: FieldInfo) -> dict[str, Any]:
    default = f.get_default(call_default_factory=True)
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    unit = extra.get("unit")
    return {"name": name, "type": _type_name(f.annotation),
            "required": default is PydanticUndefined,
            "default": None if default is PydanticUndefined else to_jsonable_python(
                default, fallback=repr),
            "unit": unit if isinstance(unit, str) else None,
            "description": f.description}


def describe_class(module: str, cls: type) -> dict[str, Any]:
    from experiments.base import Experiment
    model = getattr(cls, "config_model", None)
    fields = [describe_field(n, f) for n, f in model.model_fields.items()] if model else []
    return {"module": module, "class": cls.__name__,
            "doc": inspect.getdoc(cls) or inspect.getdoc(inspect.getmodule(cls)) or "",
            "fields": fields, "has_analysis": cls.analyze is not Experiment.analyze,
            # (#16) safe points between rounds: a more urgent job can take the board
            "preemptible": bool(getattr(cls, "safe_points", False))}


def catalog(loader: ExperimentLoader) -> list[dict[str, Any]]:
    """Blocking (imports modules): call it off the event loop."""
    out = []
    for top in loader.allowed:
        try:
            pkg = importlib.import_module(top)
        except Exception:
            continue
        names = [top, *(i.name for i in pkgutil.walk_packages(pkg.__path__, top + "."))]
        for module in sorted(names):
            try:
                mod = importlib.import_module(module)
            except Exception:  # reported when someone submits to it
                continue
            for name, obj in sorted(vars(mod).items()):
                if not (isinstance(obj, type) and obj.__module__ == module):
                    continue
                try:
                    loaded = loader.load(module, name)
                except InvalidParams:
                    continue
                out.append(describe_class(module, loaded.cls))
    return out
