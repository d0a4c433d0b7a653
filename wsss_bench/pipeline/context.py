"""What every stage function gets besides its unit: the plan, the data, where things are.

A context is picklable: executors send it to worker processes or to a Ray cluster once.
Plugin objects are not pickled; a context resolves them again (from the installed plugins'
entry points) where it is unpickled. Two bounded caches (CAMs read from the store, filter
regions) save repeated work within one process; they never change a result.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench import guards, options
from wsss_bench.core.slices import SliceSet
from wsss_bench.pipeline.plan import EvalUnit, Plan
from wsss_bench.registry import Registry, resolve

REGION_CHUNK = 512  # slices per filter call: bounded memory on memory-mapped float16 data


@dataclass
class Context:
    plan: Plan
    data: SliceSet
    store_root: Path  # <workdir>/units: where stored CAMs and checkpoints are read
    device: str
    cam_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # sent instead of the store
    registry: Registry | None = None  # None: load the installed plugins on first use
    threads: int = field(default_factory=torch.get_num_threads)  # CPU threads (same everywhere)
    in_memory: bool = False  # the slices travel with the context (else a worker re-opens them)
    _plugins: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _cams: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)
    _regions: OrderedDict[tuple[str, int], np.ndarray] = field(default_factory=OrderedDict,
                                                               repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(registry=None, _plugins={}, _cams=OrderedDict(), _regions=OrderedDict())
        if not self.in_memory and self.data.origin.startswith("cache/"):
            state["data"] = None  # a worker on this machine maps the slice cache itself
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.data is None:
            from wsss_bench.core import slice_cache

            cache = self.store_root.parent / self.plan.data_origin
            self.data = slice_cache.load(cache)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def on(self, device: str) -> Context:
        """This context computing on ``device`` (a worker's GPU, say)."""
        return dataclasses.replace(self, device=device, _plugins={}, _cams=OrderedDict(),
                                   _regions=OrderedDict())

    def portable(self, units: Sequence[Any]) -> Context:
        """A copy that needs no filesystem, for workers on other machines: the slices in
        memory and the stored CAMs that ``units`` (evaluate units) read."""
        d = self.data
        data = dataclasses.replace(d, images=np.asarray(d.images), masks=np.asarray(d.masks),
                                   cam_images=None if d.cam_images is None
                                   else np.asarray(d.cam_images))
        keys = sorted({k for u in units if isinstance(u, EvalUnit)
                       for fold_keys in u.cam_keys for k in fold_keys})
        arrays = {k: np.load(self.store_root / "cams" / k / "cams.npy") for k in keys}
        return dataclasses.replace(self, data=data, cam_arrays=arrays, registry=None,
                                   in_memory=True, _plugins={}, _cams=OrderedDict(),
                                   _regions=OrderedDict())

    def plugin(self, kind: str, name: str) -> Any:
        """The named plugin object, configured with the run's options; a CAM method, ensemble
        or filter has its outputs checked (:mod:`wsss_bench.guards`)."""
        if (kind, name) not in self._plugins:
            if self.registry is None:
                from wsss_bench.registry import load_registry

                self.registry = load_registry()
            obj = resolve(self.registry, kind, [name])[0]
            obj = options.configure(obj, self.plan.options.get(name, {}))
            self._plugins[(kind, name)] = guards.guard(kind, obj, self.plan.versions)
        return self._plugins[(kind, name)]

    def cams(self, key: str) -> np.ndarray:
        """The CAMs of a unit as stored: float16[N,H,W], memory-mapped (no copy: calibration
        reads them in blocks and compares them exactly as their float32 conversion); the last
        few are kept (as many as one method's backbones need)."""
        if key not in self._cams:
            stored = self.cam_arrays.get(key)
            if stored is None:
                stored = np.load(self.store_root / "cams" / key / "cams.npy", mmap_mode="r")
            self._cams[key] = stored
            while len(self._cams) > self._cam_slots():
                self._cams.popitem(last=False)
        self._cams.move_to_end(key)
        return self._cams[key]

    def _cam_slots(self) -> int:
        """CAM arrays kept: one method's backbones, on every fold for across-folds."""
        across = self.plan.config.calibrate == "across-folds"
        return max(2, len(self.plan.config.backbones)) * (len(self.plan.folds) if across else 1)

    def region(self, filter_name: str, fold: int) -> np.ndarray:
        """The filter's region bool[N,H,W] of every slice, a learned filter fitted on the
        fold's training slices only (a filter that learns nothing: one region for all folds)."""
        filt = self.plugin("filters", filter_name)
        key = (filter_name, fold if filt.learned else -1)
        if key not in self._regions:
            train, _ = self.split(fold)
            self._regions[key] = regions(filt, self.data, train)
            while len(self._regions) > len(self.plan.config.filters) * max(1, len(self.plan.folds)):
                self._regions.popitem(last=False)
        self._regions.move_to_end(key)
        return self._regions[key]

    def split(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation slice indices of ``fold``."""
        val_mask = np.isin(self.data.case_ids, list(self.plan.folds[fold]))
        return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def regions(filt: Any, data: SliceSet, train: np.ndarray) -> np.ndarray:
    """``filt``'s region of every slice, in chunks; a learned filter is first fitted (a copy)
    on the ``train`` slices only."""
    if filt.learned:
        filt = filt.fit(np.asarray(data.images[train], dtype=np.float32), data.masks[train])
    parts = [np.asarray(filt.region(np.asarray(data.images[s : s + REGION_CHUNK],
                                               dtype=np.float32)), dtype=bool)
             for s in range(0, len(data), REGION_CHUNK)]
    return np.concatenate(parts)
