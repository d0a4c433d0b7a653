"""Plugin options from the command line: ``--option PLUGIN.KEY=VALUE``.

A plugin object that is a dataclass can be configured: each field (other than ``name``,
``description`` and those listed in the object's ``fixed_fields``) is an option, and the value
is converted to the field's type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wsss_bench.errors import UsageError

FIXED_FIELDS = {"name", "description"}
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse(text: str) -> tuple[str, str, str]:
    """``"phantom.size=96"`` → ``("phantom", "size", "96")``."""
    plugin_key, sep, value = text.partition("=")
    plugin, dot, key = plugin_key.rpartition(".")
    if not sep or not dot or not plugin or not key:
        raise UsageError(f"--option {text}: expected PLUGIN.KEY=VALUE, e.g. phantom.size=96")
    return plugin, key, value


def option_fields(obj: Any) -> dict[str, dataclasses.Field]:
    if not dataclasses.is_dataclass(obj):
        return {}
    fixed = FIXED_FIELDS | set(getattr(obj, "fixed_fields", ()))
    return {f.name: f for f in dataclasses.fields(obj) if f.name not in fixed and f.init}


def convert(current: Any, text: str, where: str) -> Any:
    """``text`` as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            lowered = text.lower()
            if lowered not in TRUE | FALSE:
                raise ValueError("expected true or false")
            return lowered in TRUE
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError as exc:
        raise UsageError(f"--option {where}={text}: {exc}; expected a "
                         f"{type(current).__name__}") from None
    return text


def configure(obj: Any, values: dict[str, str]) -> Any:
    """A copy of plugin ``obj`` with the options in ``values`` set."""
    if not values:
        return obj
    known = option_fields(obj)
    for key in values:
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise UsageError(f"--option {obj.name}.{key}: {obj.name!r} has no option {key!r} "
                             f"(its options: {names})")
    changes = {k: convert(getattr(obj, k), v, f"{obj.name}.{k}") for k, v in values.items()}
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--option for {obj.name!r}: {exc}") from None
