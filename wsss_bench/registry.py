"""Plugin discovery: entry points in the ``wsss_bench`` group, loaded through pluggy.

Built-in plugins are found exactly like third-party ones. A plugin that fails to import (or
whose ``register_*`` hook raises) is reported with its distribution and skipped; the others
still load. ``WSSS_BENCH_BLOCK_PLUGINS=a,b`` skips the entry points named ``a`` and ``b``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from wsss_bench import hookspecs
from wsss_bench.contracts import KINDS
from wsss_bench.errors import PluginError, UsageError

BLOCK_ENV = "WSSS_BENCH_BLOCK_PLUGINS"
HOOK_FOR_KIND = {kind: f"register_{kind}" for kind in KINDS}
SINGULAR = {
    "datasets": "dataset",
    "backbones": "backbone",
    "cams": "CAM method",
    "ensembles": "ensemble",
    "filters": "filter",
}


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register."""


@dataclass(frozen=True)
class Entry:
    """A registered object and where it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str  # entry-point name (or the name given to register_plugin)
    source: str  # distribution name

    @property
    def description(self) -> str:
        return str(getattr(self.obj, "description", "") or "").strip()


class Kind(Mapping[str, Any]):
    """The registered objects of one kind, by name (read-only, dict-like)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    def __getitem__(self, name: str) -> Any:
        return self.entries[name].obj

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get_entry(self, name: str) -> Entry:
        """The entry called ``name``, or a UsageError that lists the known names."""
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none installed"
            raise UsageError(
                f"unknown {SINGULAR[self.kind]} {name!r}; choose one of: {known} "
                f"(see `wsss-bench plugins`)"
            ) from None


@dataclass
class Registry:
    """Every registered dataset, backbone, CAM method, ensemble and filter."""

    datasets: Kind = field(default_factory=lambda: Kind("datasets"))
    backbones: Kind = field(default_factory=lambda: Kind("backbones"))
    cams: Kind = field(default_factory=lambda: Kind("cams"))
    ensembles: Kind = field(default_factory=lambda: Kind("ensembles"))
    filters: Kind = field(default_factory=lambda: Kind("filters"))
    skipped: list[str] = field(default_factory=list)

    def kind(self, kind: str) -> Kind:
        return getattr(self, kind)

    def entries(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from self.kind(kind).entries.values()

    def add(self, kind: str, obj: Any, plugin: str, source: str) -> None:
        """Register ``obj`` under ``obj.name``; a duplicate name raises a PluginError."""
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} ({source}) registered a {SINGULAR[kind]} without a "
                f"string `name` attribute: {obj!r}"
            )
        table = self.kind(kind)
        if name in table.entries:
            first = table.entries[name]
            raise PluginError(
                f"duplicate {SINGULAR[kind]} name {name!r}: registered by plugin "
                f"{first.plugin!r} ({first.source}) and by plugin {plugin!r} ({source}); "
                f"uninstall or block one with {BLOCK_ENV}"
            )
        table.entries[name] = Entry(kind, name, obj, plugin, source)


def blocked_plugins() -> set[str]:
    """Entry-point names listed in ``WSSS_BENCH_BLOCK_PLUGINS`` (comma-separated)."""
    raw = os.environ.get(BLOCK_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown distribution"


def _skip(registry: Registry, message: str) -> None:
    registry.skipped.append(message)
    warnings.warn(message, PluginLoadWarning, stacklevel=3)


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(extra_plugins: Mapping[str, Any] | None = None) -> Registry:
    """Load every entry point of the ``wsss_bench`` group and collect what they register.

    ``extra_plugins`` maps a name to a plugin object registered in addition (for library use
    and tests); its source is reported as ``"<extra>"``.
    """
    pm = plugin_manager()
    sources: dict[str, str] = {}
    blocked = blocked_plugins()
    registry = Registry()
    for ep in sorted(entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
        if ep.name in blocked or ep.name in sources:
            continue
        source = _distribution(ep)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must never stop the others
            _skip(registry, f"plugin {ep.name!r} from {source} failed to load and was "
                            f"skipped: {type(exc).__name__}: {exc}")
            continue
        sources[ep.name] = source
    for name, plugin in (extra_plugins or {}).items():
        pm.register(plugin, name=name)
        sources[name] = "<extra>"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook (misspelt?): {exc}") from None

    for kind, hook_name in HOOK_FOR_KIND.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin, source = impl.plugin_name, sources.get(impl.plugin_name, "unknown")
            staged: list[Any] = []
            try:
                impl.function(register=staged.append)
            except Exception as exc:
                _skip(registry, f"plugin {plugin!r} from {source} raised in {hook_name} and "
                                f"was skipped: {type(exc).__name__}: {exc}")
                continue
            for obj in staged:
                registry.add(kind, obj, plugin, source)
    return registry


def resolve(registry: Registry, kind: str, names: list[str]) -> list[Any]:
    """The objects of ``kind`` called ``names``; an unknown name is a UsageError."""
    return [registry.kind(kind).get_entry(name).obj for name in names]
