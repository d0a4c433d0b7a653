"""The built-in gradient CAM methods, all on the core engine (:mod:`wsss_bench.cam_engine`).

Notation: ``A`` is the target layer's activation [B,K,h,w], ``g = dy_c/dA`` the gradient of
each sample's target logit, ``S_k = Σ_ij A_kij``. Every method ends with
:func:`~wsss_bench.cam_engine.finish_cam` (ReLU, bilinear upsampling, per-sample min-max).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.cam_engine import (
    Target,
    activations_and_gradients,
    finish_cam,
    smooth_gradients,
)
from wsss_bench.options import option
from wsss_bench_plugins.cams_activation import CAMS as ACTIVATION_CAMS
from wsss_bench_plugins.cams_fullgrad import CAMS as FULLGRAD_CAMS
from wsss_bench_plugins.cams_perturbation import CAMS as PERTURBATION_CAMS


def _size(images: torch.Tensor) -> tuple[int, int]:
    return (int(images.shape[-2]), int(images.shape[-1]))


def _gradient_cam(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
                  target: Target, saliency) -> torch.Tensor:
    """One engine pass, then ``finish_cam(saliency(g, A))`` with ``saliency -> [B,h,w]``."""
    cap = activations_and_gradients(model, target_layer, images, target)
    return finish_cam(saliency(cap.gradients, cap.activations), _size(images))


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k A_k for per-sample channel weights [B,K]."""
    return (weights[:, :, None, None] * activations).sum(dim=1)


def plusplus_weights(g: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhay et al., Eq. 19 with the exponential trick).

    α = g² / (2g² + S·g³) equals 1 / (2 + S·g) wherever g ≠ 0, and only g > 0 contributes
    (weights = Σ_ij relu(g)·α), so no ε is needed: the denominator is exactly what the
    formula says, in the activation's precision.
    """
    s = activations.sum(dim=(2, 3), keepdim=True)
    denom = 2 + s * g
    ok = (g > 0) & (denom != 0)
    alpha_relu = torch.where(ok, g / torch.where(ok, denom, torch.ones_like(denom)),
                             torch.zeros_like(g))
    return alpha_relu.sum(dim=(2, 3))


def xgrad_weights(g: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM channel weights Σ_ij g·A / S_k, no ε (S_k = 0 gives weight 0)."""
    s = activations.sum(dim=(2, 3))
    num = (g * activations).sum(dim=(2, 3))
    return torch.where(s != 0, num / torch.where(s != 0, s, torch.ones_like(s)),
                       torch.zeros_like(s))


@dataclass(frozen=True)
class GradCAM:
    name: str = "gradcam"
    description: str = "Grad-CAM: activations weighted by their spatially averaged gradients"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        return _gradient_cam(model, target_layer, images, target,
                             lambda g, a: _weighted_sum(g.mean(dim=(2, 3)), a))


@dataclass(frozen=True)
class GradCAMPlusPlus:
    name: str = "gradcam++"
    description: str = "Grad-CAM++: pixel-weighted positive gradients (exact, no epsilon)"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        return _gradient_cam(model, target_layer, images, target,
                             lambda g, a: _weighted_sum(plusplus_weights(g, a), a))


@dataclass(frozen=True)
class SmoothGradCAMPlusPlus:
    """SmoothGrad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with E[g], E[g²], E[g³] over noisy
    copies; activations from the clean pass; σ relative to each image's intensity range."""

    name: str = "smoothgradcam++"
    description: str = "SmoothGrad-CAM++: Grad-CAM++ with gradient moments over noisy copies"
    samples: int = option(8, "noisy copies of each image whose gradient moments are averaged")
    sigma: float = option(0.15, "noise std as a fraction of each image's intensity range "
                                "(max - min); 0 = Grad-CAM++")
    seed: int = option(0, "seed of the noise (the same noise for every image of a batch)")
    max_batch: int = option(256, "most images per forward pass of the noisy copies (bounds "
                                 "memory; the clean pass included)")

    def __post_init__(self) -> None:
        if self.samples < 1 or self.sigma < 0 or self.max_batch < 1:
            raise ValueError(f"smoothgradcam++ needs samples >= 1, sigma >= 0, max_batch >= 1 "
                             f"(got {self.samples}, {self.sigma}, {self.max_batch})")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        cap = smooth_gradients(model, target_layer, images, target, samples=self.samples,
                               sigma=self.sigma, seed=self.seed, max_batch=self.max_batch)
        a = cap.activations.double()
        s = a.sum(dim=(2, 3), keepdim=True)
        m2, m3 = cap.mean_grad2, cap.mean_grad3
        # α = E[g²] / (2E[g²] + S·E[g³]); with σ = 0 this is Grad-CAM++'s α exactly.
        denom = 2 * m2 + s * m3
        ok = (m2 > 0) & (denom != 0)
        alpha = torch.where(ok, m2 / torch.where(ok, denom, torch.ones_like(denom)),
                            torch.zeros_like(m2))
        weights = (torch.relu(cap.mean_grad) * alpha).sum(dim=(2, 3))
        return finish_cam(_weighted_sum(weights, a).float(), _size(images))


@dataclass(frozen=True)
class HiResCAM:
    name: str = "hirescam"
    description: str = "HiResCAM: element-wise gradient × activation, summed over channels"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        return _gradient_cam(model, target_layer, images, target,
                             lambda g, a: (g * a).sum(dim=1))


@dataclass(frozen=True)
class XGradCAM:
    name: str = "xgradcam"
    description: str = "XGrad-CAM: gradients weighted by the normalised activation"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        return _gradient_cam(model, target_layer, images, target,
                             lambda g, a: _weighted_sum(xgrad_weights(g, a), a))


@dataclass(frozen=True)
class LayerCAM:
    name: str = "layercam"
    description: str = "LayerCAM: element-wise positive gradient × activation"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        return _gradient_cam(model, target_layer, images, target,
                             lambda g, a: (torch.relu(g) * a).sum(dim=1))


@hookimpl
def register_cams(register) -> None:
    for cam in (GradCAM(), GradCAMPlusPlus(), SmoothGradCAMPlusPlus(), HiResCAM(), XGradCAM(),
                LayerCAM(), *ACTIVATION_CAMS, *FULLGRAD_CAMS, *PERTURBATION_CAMS):
        register(cam)
