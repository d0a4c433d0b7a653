"""Plugin discovery: entry points in the ``wsss_bench`` group, loaded through pluggy.

Built-in plugins are found exactly like third-party ones. A plugin that fails to import (or
whose ``register_*`` hook raises) is reported with its distribution and skipped; the others
still load. ``WSSS_BENCH_BLOCK_PLUGINS=a,b`` skips the entry points named ``a`` and ``b``.

A *family* is a registered object whose ``name`` ends with ``":"`` (e.g. ``"timm:"``) and that
has ``resolve(suffix) -> object``: the name ``"timm:convnext_atto"`` is then resolved on first
use to ``family.resolve("convnext_atto")``, an object named ``"timm:convnext_atto"``, and
cached. Families are listed by ``wsss-bench plugins`` but are not keys of their kind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

import pluggy

from wsss_bench import hookspecs
from wsss_bench.contracts import KINDS, SINGULAR, declared_problems
from wsss_bench.errors import PluginError, UsageError

BLOCK_ENV = "WSSS_BENCH_BLOCK_PLUGINS"
HOOK_FOR_KIND = {kind: f"register_{kind}" for kind in KINDS}


FAMILY_SUFFIX = ":"


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to import or to register."""


@runtime_checkable
class Family(Protocol):
    """Registered as ``"<prefix>:"``; stands for every object called ``"<prefix>:<suffix>"``.

    ``resolve(suffix)`` returns the object called ``name + suffix``, or raises a UsageError
    (an unknown suffix: say so and how to list the valid ones).
    """

    name: str
    description: str

    def resolve(self, suffix: str) -> Any: ...


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
    """The registered objects of one kind, by name (read-only, dict-like).

    Iteration and ``len`` cover the objects registered by name; ``kind["timm:x"]``,
    ``"timm:x" in kind`` and :meth:`get_entry` also resolve names through a family
    (``families``, keyed by prefix) and cache what they resolve.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, Entry] = {}
        self.families: dict[str, Entry] = {}
        self._resolved: dict[str, Entry] = {}

    def __getitem__(self, name: str) -> Any:
        try:
            return self.get_entry(name).obj
        except PluginError:
            raise
        except UsageError as exc:  # Mapping semantics: `in` and `.get` expect a KeyError
            raise KeyError(str(exc)) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get_entry(self, name: str) -> Entry:
        """The entry called ``name`` (resolved through a family if need be), or a UsageError."""
        if name in self.entries:
            return self.entries[name]
        if name in self._resolved:
            return self._resolved[name]
        family = self._family_for(name)
        if family is None:
            raise UsageError(self._unknown(name))
        entry = self._resolve(family, name)
        self._resolved[name] = entry
        return entry

    def _family_for(self, name: str) -> Entry | None:
        """The family with the longest prefix of ``name``, if any."""
        prefixes = [p for p in self.families if name.startswith(p)]
        return self.families[max(prefixes, key=len)] if prefixes else None

    def _unknown(self, name: str) -> str:
        known = sorted(self.entries) + [f"{p}<name>" for p in sorted(self.families)]
        return (f"unknown {SINGULAR[self.kind]} {name!r}; choose one of: "
                f"{', '.join(known) or 'none installed'} (see `wsss-bench plugins`)")

    def _resolve(self, family: Entry, name: str) -> Entry:
        suffix = name[len(family.name):]
        what = SINGULAR[self.kind]
        if not suffix:
            raise UsageError(f"{what} {name!r} is a family, not a {what}: name one of its "
                             f"members, {name}<name> ({family.description})")
        try:
            obj = family.obj.resolve(suffix)
        except UsageError:
            raise
        except (LookupError, ValueError) as exc:
            raise UsageError(f"unknown {what} {name!r}: {exc}") from None
        if getattr(obj, "name", None) != name:
            raise PluginError(
                f"plugin {family.plugin!r} ({family.source}): family {family.name!r} resolved "
                f"{name!r} to an object named {getattr(obj, 'name', None)!r}; it must be "
                f"named {name!r}")
        check_declared(self.kind, obj, family.plugin, family.source)
        return Entry(self.kind, name, obj, family.plugin, family.source)


@dataclass
class Registry:
    """Every registered dataset, backbone, CAM method, ensemble, filter, executor and
    end-to-end method."""

    datasets: Kind = field(default_factory=lambda: Kind("datasets"))
    backbones: Kind = field(default_factory=lambda: Kind("backbones"))
    cams: Kind = field(default_factory=lambda: Kind("cams"))
    ensembles: Kind = field(default_factory=lambda: Kind("ensembles"))
    filters: Kind = field(default_factory=lambda: Kind("filters"))
    executors: Kind = field(default_factory=lambda: Kind("executors"))
    methods: Kind = field(default_factory=lambda: Kind("methods"))
    skipped: list[str] = field(default_factory=list)

    def kind(self, kind: str) -> Kind:
        return getattr(self, kind)

    def entries(self) -> Iterator[Entry]:
        """Every registered entry, families included (not the names resolved through them)."""
        for kind in KINDS:
            table = self.kind(kind)
            yield from table.entries.values()
            yield from table.families.values()

    def add(self, kind: str, obj: Any, plugin: str, source: str) -> None:
        """Register ``obj`` under ``obj.name``; a duplicate name raises a PluginError.

        A name ending with ``":"`` registers a family, which must have a ``resolve`` method.
        """
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} ({source}) registered a {SINGULAR[kind]} without a "
                f"string `name` attribute: {obj!r}"
            )
        table = self.kind(kind)
        is_family = name.endswith(FAMILY_SUFFIX)
        if is_family and not callable(getattr(obj, "resolve", None)):
            raise PluginError(
                f"plugin {plugin!r} ({source}) registered {SINGULAR[kind]} family {name!r} "
                f"(a name ending with {FAMILY_SUFFIX!r}) without a `resolve(suffix)` method")
        if not is_family:  # a family's members are checked when it resolves them
            check_declared(kind, obj, plugin, source)
        target = table.families if is_family else table.entries
        if name in target:
            first = target[name]
            raise PluginError(
                f"duplicate {SINGULAR[kind]} name {name!r}: registered by plugin "
                f"{first.plugin!r} ({first.source}) and by plugin {plugin!r} ({source}); "
                f"uninstall or block one with {BLOCK_ENV}"
            )
        target[name] = Entry(kind, name, obj, plugin, source)


def check_declared(kind: str, obj: Any, plugin: str, source: str) -> None:
    """A PluginError naming the object, its kind, plugin and distribution when its declared
    attributes (:data:`wsss_bench.contracts.DECLARED`) are missing or of the wrong type."""
    problems = declared_problems(kind, obj)
    if problems:
        raise PluginError(
            f"plugin {plugin!r} ({source}) registered {SINGULAR[kind]} "
            f"{getattr(obj, 'name', None)!r} ({type(obj).__qualname__}) that breaks its "
            f"contract: {'; '.join(problems)} (see the {SINGULAR[kind]} contract in "
            f"wsss_bench.contracts and CONTRIBUTING.md)")


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
    """The objects of ``kind`` called ``names``, through families too; unknown: a UsageError."""
    return [registry.kind(kind).get_entry(name).obj for name in names]
