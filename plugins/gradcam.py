"""Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of the gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.cam_engine import activations_and_gradients, finish_cam


@dataclass(frozen=True)
class GradCAM:
    name: str = "gradcam"
    description: str = "Grad-CAM: activations weighted by their spatially averaged gradients"

    def cam(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cap = activations_and_gradients(model, target_layer, images, target)
        weights = cap.gradients.mean(dim=(2, 3), keepdim=True)
        return finish_cam((weights * cap.activations).sum(dim=1), tuple(images.shape[-2:]))


@hookimpl
def register_cams(register) -> None:
    register(GradCAM())
