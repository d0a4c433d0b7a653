"""The boundary: every plugin output is checked before it is stored or used.

:meth:`Context.plugin <wsss_bench.pipeline.context.Context.plugin>` hands the stages guarded
CAM methods, ensembles and filters; the slice collection checks every dataset case
(:func:`check_case`) and training checks the backbone's logits (:func:`check_logits`). The
checks themselves are the contract's (``*_problem`` in :mod:`wsss_bench.contracts`). A
violation, or an exception raised inside the plugin, is a :class:`PluginOutputError` naming the
plugin and its distribution: the unit fails and nothing of it is stored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import numpy as np

from wsss_bench import contracts
from wsss_bench.contracts import SINGULAR
from wsss_bench.errors import PluginOutputError, UsageError


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(obj: Any) -> str:
    """``"<distribution> <version>"`` of the package that defines ``obj``'s class."""
    top = type(obj).__module__.split(".")[0]
    if top not in _distributions():  # installed since the first look
        _distributions.cache_clear()
    for name in _distributions().get(top, []):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"module {type(obj).__module__}, no installed distribution"


def label(kind: str, obj: Any, versions: dict[str, str] | None = None) -> str:
    """``CAM method 'eigencam' (wsss-eigencam 0.1.0)``: how errors name a plugin object."""
    name = getattr(obj, "name", type(obj).__name__)
    where = (versions or {}).get(name) or distribution_of(obj)
    return f"{SINGULAR.get(kind, kind)} {name!r} ({where})"


def fail(who: str, problem: str) -> PluginOutputError:
    return PluginOutputError(f"{who} broke its contract: {problem} (see CONTRIBUTING.md; "
                             f"report it to the plugin's authors)")


def raised(who: str, exc: BaseException) -> PluginOutputError:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
    return PluginOutputError(f"{who} raised {text}")


def call(who: str, method: Any, *args: Any, keep_usage: bool = False) -> Any:
    """``method(*args)``; an exception becomes a PluginOutputError naming ``who`` (a
    UsageError is kept as it is when ``keep_usage``: a dataset's one-line data errors)."""
    try:
        return method(*args)
    except PluginOutputError:
        raise
    except UsageError as exc:
        if keep_usage:
            raise
        raise raised(who, exc) from exc
    except Exception as exc:  # noqa: BLE001 (the plugin's own failure, named)
        raise raised(who, exc) from exc


class Guarded:
    """A plugin object whose outputs are checked; every other attribute is the object's."""

    def __init__(self, obj: Any, who: str) -> None:
        self.__dict__.update(_obj=obj, _who=who)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__dict__["_obj"], attr)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), (self._obj, self._who)

    @property
    def unwrapped(self) -> Any:
        return self._obj


class GuardedCam(Guarded):
    def cam(self, model: Any, target_layer: Any, images: Any, target: Any = None) -> Any:
        out = call(self._who, self._obj.cam, model, target_layer, images, target)
        if problem := contracts.cam_output_problem(out, tuple(images.shape)):
            raise fail(self._who, problem)
        return out


class GuardedEnsemble(Guarded):
    def combine(self, masks: np.ndarray) -> np.ndarray:
        out = call(self._who, self._obj.combine, masks)
        if problem := contracts.mask_output_problem(out, masks.shape[1:], "combine"):
            raise fail(self._who, problem)
        return out

    def fuse(self, cams: np.ndarray) -> Any:
        out = call(self._who, self._obj.fuse, cams)
        if problem := contracts.fuse_output_problem(out, cams.shape[1:]):
            raise fail(self._who, problem)
        return out


class GuardedFilter(Guarded):
    def region(self, images: np.ndarray) -> np.ndarray:
        out = call(self._who, self._obj.region, images)
        expected = (images.shape[0], *images.shape[2:])
        if problem := contracts.mask_output_problem(out, expected, "region"):
            raise fail(self._who, problem)
        return out

    def fit(self, images: np.ndarray, masks: np.ndarray) -> GuardedFilter:
        fitted = call(self._who, self._obj.fit, images, masks)
        if not callable(getattr(fitted, "region", None)):
            raise fail(self._who, f"fit returned a {type(fitted).__name__}, not a filter")
        return GuardedFilter(fitted, self._who)


GUARDS = {"cams": GuardedCam, "ensembles": GuardedEnsemble, "filters": GuardedFilter}


def guard(kind: str, obj: Any, versions: dict[str, str] | None = None) -> Any:
    """``obj`` with its outputs checked (kinds without per-call outputs: ``obj`` itself)."""
    wrapper = GUARDS.get(kind)
    return obj if wrapper is None else wrapper(obj, label(kind, obj, versions))


def check_case(dataset: Any, case: Any) -> Any:
    """``case`` as a dataset plugin gave it, or a PluginOutputError naming the dataset."""
    if problem := contracts.case_problem(case):
        raise fail(label("datasets", dataset), problem)
    return case


def guarded_cases(dataset: Any, data_dir: Any) -> Iterator[Any]:
    """``dataset.cases(data_dir)``, each case checked; an exception inside the plugin becomes
    a PluginOutputError naming it (a UsageError it raises stays as it is)."""
    who = label("datasets", dataset)
    cases = iter(call(who, dataset.cases, data_dir, keep_usage=True))
    while True:
        try:
            case = next(cases)
        except StopIteration:
            return
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 (the plugin's own failure, named)
            raise raised(who, exc) from exc
        yield check_case(dataset, case)


def check_stored_case(dataset: Any, case_id: str, arrays: dict[str, Any]) -> None:
    """The float16 arrays a case is cached as: finite (values beyond float16's ±65504 would
    become Inf), or a PluginOutputError naming the dataset."""
    for name, arr in arrays.items():
        if arr is not None and not np.isfinite(arr).all():
            raise fail(label("datasets", dataset),
                       f"case {case_id!r}: {name} exceed float16's range (±65504) and cannot "
                       f"be cached; normalise the intensities in the dataset's load()")


def check_logits(backbone: Any, out: Any, batch: int, num_classes: int = 2,
                 versions: dict[str, str] | None = None) -> None:
    """A PluginOutputError naming the backbone when its model's output is not finite logits
    [batch, num_classes]."""
    if problem := contracts.logits_problem(out, batch, num_classes):
        raise fail(label("backbones", backbone, versions), problem)
