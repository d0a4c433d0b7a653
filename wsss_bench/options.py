"""Plugin options from the command line: ``--option PLUGIN.KEY=VALUE``.

A plugin object that is a dataclass can be configured: each field is an option, except
``name``, ``description``, the names in the object's ``fixed_fields`` and the declared
attributes of its kind (:data:`wsss_bench.contracts.DECLARED`: ``needs_data_dir``,
``model_name`` …), and the value is converted to the field's type. An option declares its
one-line help with :func:`option`::

    size: int = option(64, "slice side in pixels")

``wsss-bench plugins --options`` lists every option with its type, default and help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from typing import Any

from wsss_bench.errors import UsageError

FIXED_FIELDS = {"name", "description"}
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
HELP = "help"  # the field-metadata key of an option's help text
NO_HELP = "(no help)"


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
           **kwargs: Any) -> Any:
    """A dataclass field that is a plugin option with a one-line ``help`` text:
    ``size: int = option(64, "slice side in pixels")``; ``default_factory`` instead of
    ``default`` for a mutable default. Other keywords go to :func:`dataclasses.field`."""
    if (default is MISSING) == (default_factory is MISSING):
        raise TypeError("option() takes a default or a default_factory (one of them)")
    text = " ".join(help.split())
    if not text or "\n" in help.strip():
        raise ValueError(f"option(): help must be one non-empty line, got {help!r}")
    metadata = {**kwargs.pop("metadata", {}), HELP: text}
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata, **kwargs)


def parse(text: str) -> tuple[str, str, str]:
    """``"phantom.size=96"`` → ``("phantom", "size", "96")``."""
    plugin_key, sep, value = text.partition("=")
    plugin, dot, key = plugin_key.rpartition(".")
    if not sep or not dot or not plugin or not key:
        raise UsageError(f"--option {text}: expected PLUGIN.KEY=VALUE, e.g. phantom.size=96")
    return plugin, key, value


def kinds_of(obj: Any) -> list[str]:
    """The plugin kinds whose methods ``obj`` has (``cases`` for a dataset, ``region`` for a
    filter …), looked up on its class (no property is evaluated)."""
    from wsss_bench.contracts import PROTOCOLS

    out = []
    for kind, protocol in PROTOCOLS.items():
        methods = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
        if methods and all(callable(getattr(type(obj), m, None)) for m in methods):
            out.append(kind)
    return out


def declared_attributes(obj: Any, kind: str | None = None) -> set[str]:
    """The declared attributes of ``kind`` (of every kind ``obj`` has the methods of, when
    None): part of its contract, never options."""
    from wsss_bench.contracts import DECLARED

    return {a for k in ([kind] if kind else kinds_of(obj)) for a in DECLARED.get(k, {})}


def keyed_fields(obj: Any) -> dict[str, dataclasses.Field]:
    """The fields whose values go into unit keys, the slice-cache key and the recorded run
    settings: every init field but ``name``, ``description`` and ``fixed_fields``. This is
    what :func:`option_fields` was before declared attributes were left out of the options;
    it stays as it was, so that every stored key stays valid."""
    if not dataclasses.is_dataclass(obj):
        return {}
    fixed = FIXED_FIELDS | set(getattr(obj, "fixed_fields", ()))
    return {f.name: f for f in dataclasses.fields(obj) if f.name not in fixed and f.init}


def option_fields(obj: Any, kind: str | None = None) -> dict[str, dataclasses.Field]:
    """The options of plugin ``obj``: its :func:`keyed_fields` without the declared
    attributes of its kind (``kind``, or inferred from its methods when None)."""
    declared = declared_attributes(obj, kind)
    return {n: f for n, f in keyed_fields(obj).items() if n not in declared}


def help_text(f: dataclasses.Field) -> str:
    """The option's help from its field metadata; "" when it declares none."""
    return " ".join(str(f.metadata.get(HELP, "") or "").split())


def type_name(f: dataclasses.Field) -> str:
    """The field's annotation as written (``int``, ``str``, ``float | None`` …)."""
    t = f.type
    return t if isinstance(t, str) else getattr(t, "__name__", None) or str(t)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (tuples as lists, anything else unknown as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return str(value)


def describe(obj: Any, kind: str | None = None) -> list[dict[str, Any]]:
    """Each option of ``obj``: ``{"name", "type", "default", "value", "help"}`` (``value``:
    the registered object's own value; ``help``: "(no help)" when the field declares none)."""
    return [{"name": f.name, "type": type_name(f), "default": _plain(_default(f)),
             "value": _plain(getattr(obj, f.name, None)), "help": help_text(f) or NO_HELP}
            for f in option_fields(obj, kind).values()]


def option_problems(obj: Any, kind: str | None = None) -> list[str]:
    """What is wrong with the options' help texts (empty: ok), for the contract kit."""
    problems = []
    for f in option_fields(obj, kind).values():
        raw = str(f.metadata.get(HELP, "") or "")
        if not raw.strip():
            problems.append(f"option `{f.name}` has no help text: declare it with "
                            f"`{f.name}: {type_name(f)} = wsss_bench.options.option(DEFAULT, "
                            f"\"one line of help\")`")
        elif "\n" in raw.strip():
            problems.append(f"the help of option `{f.name}` must be one line")
    return problems


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


def configure(obj: Any, values: dict[str, str], kind: str | None = None) -> Any:
    """A copy of plugin ``obj`` with the options in ``values`` set (``kind``: see
    :func:`option_fields`)."""
    if not values:
        return obj
    known = option_fields(obj, kind)
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
