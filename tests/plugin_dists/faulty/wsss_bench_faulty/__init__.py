"""Plugins that behave until ``WSSS_FAULT`` names them, as a plugin author's bug would.

``WSSS_FAULT=<kind>:<fault>`` (read at every call, so a later run can change it): ``cam`` nan,
range, shape, raise; ``ensemble`` shape, int, raise; ``filter`` shape, float, raise;
``dataset`` nan, float64, uint8, raise; ``backbone`` shape, nan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.contracts import Case
from wsss_bench_plugins.backbones import TimmBackbone
from wsss_bench_plugins.cams import GradCAM
from wsss_bench_plugins.phantom import Phantom


def fault(kind: str) -> str | None:
    text = os.environ.get("WSSS_FAULT", "")
    k, _, what = text.partition(":")
    return what if k == kind else None


@dataclass(frozen=True)
class FaultyCam:
    name: str = "faultycam"
    description: str = "Grad-CAM, or a broken map when WSSS_FAULT=cam:<fault>"

    def cam(self, model, target_layer, images, target=None):
        out = GradCAM().cam(model, target_layer, images, target)
        what = fault("cam")
        if what == "nan":
            out = out.clone()
            out[:, 0, 0] = float("nan")
        elif what == "range":
            out = out * 3.0 - 1.0
        elif what == "shape":
            out = out[:, :-1]
        elif what == "raise":
            raise RuntimeError("faultycam exploded")
        return out


@dataclass(frozen=True)
class FaultyEnsemble:
    name: str = "faultyens"
    description: str = "and, or a broken mask when WSSS_FAULT=ensemble:<fault>"
    symbol: ClassVar[None] = None
    pixel_rule: ClassVar[None] = None  # calibrated through combine (the generic path)
    slice_rule: ClassVar[None] = None
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        out = np.all(masks, axis=0)
        what = fault("ensemble")
        if what == "shape":
            return out[:, :-1]
        if what == "int":
            return out.astype(np.uint8)
        if what == "raise":
            raise ValueError("faultyens cannot combine")
        return out


@dataclass(frozen=True)
class FaultyFilter:
    name: str = "faultyfilter"
    description: str = "everything, or a broken region when WSSS_FAULT=filter:<fault>"
    learned: ClassVar[bool] = False

    def region(self, images: np.ndarray) -> np.ndarray:
        out = np.ones((images.shape[0], *images.shape[2:]), dtype=bool)
        what = fault("filter")
        if what == "shape":
            return out[:, :-1]
        if what == "float":
            return out.astype(np.float32)
        if what == "raise":
            raise KeyError("faultyfilter region")
        return out


@dataclass(frozen=True)
class FaultySet(Phantom):
    name: str = "faultyset"
    description: str = "phantom, or broken cases when WSSS_FAULT=dataset:<fault>"

    def cases(self, data_dir=None):
        what = fault("dataset")
        for case in super().cases(data_dir):
            images, masks = case.images, case.masks
            if what == "nan":
                images = images.copy()
                images[0, 0, 0, 0] = np.nan
            elif what == "float64":
                images = images.astype(np.float64)
            elif what == "uint8":
                masks = masks.astype(np.uint8)
            elif what == "raise":
                raise OSError("faultyset cannot read its files")
            yield Case(case.case_id, images, masks)


class _Broken(nn.Module):
    def __init__(self, inner: nn.Module, what: str) -> None:
        super().__init__()
        self.inner, self.what = inner, what

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.what == "shape":
            return out[:, :1]
        return out * float("nan")


@dataclass(frozen=True)
class FaultyBackbone(TimmBackbone):
    name: str = "faultynet"
    description: str = "resnet18, or broken logits when WSSS_FAULT=backbone:<fault>"
    model_name: str = "resnet18"

    def build(self, *args, **kwargs):
        model = super().build(*args, **kwargs)
        what = fault("backbone")
        return _Broken(model, what) if what else model

    def target_layer(self, model):
        return super().target_layer(getattr(model, "inner", model))


@hookimpl
def register_cams(register):
    register(FaultyCam())


@hookimpl
def register_ensembles(register):
    register(FaultyEnsemble())


@hookimpl
def register_filters(register):
    register(FaultyFilter())


@hookimpl
def register_datasets(register):
    register(FaultySet())


@hookimpl
def register_backbones(register):
    register(FaultyBackbone())
