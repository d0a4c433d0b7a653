"""An example third-party plugin: an activation CAM and a 'first backbone wins' ensemble."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.cam_engine import activations_and_gradients, finish_cam


@dataclass(frozen=True)
class ActivationCAM:
    """Channel mean of the target layer's activation (no gradient weighting)."""

    name: str = "activation-mean"
    description: str = "mean activation of the target layer (example plugin)"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: torch.Tensor | None = None) -> torch.Tensor:
        cap = activations_and_gradients(model, target_layer, images, target)
        return finish_cam(cap.activations.mean(dim=1), tuple(images.shape[-2:]))


@dataclass(frozen=True)
class First:
    """The first backbone's mask, ignoring the others."""

    name: str = "first"
    description: str = "the first backbone's mask (example plugin)"
    # declared (wsss_bench.contracts.Ensemble): no rule, so calibrated through combine()
    symbol: ClassVar[str | None] = None
    pixel_rule: ClassVar[str | None] = None
    slice_rule: ClassVar[str | None] = None
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return np.asarray(masks[0], dtype=bool)


@hookimpl
def register_cams(register) -> None:
    register(ActivationCAM())


@hookimpl
def register_ensembles(register) -> None:
    register(First())
