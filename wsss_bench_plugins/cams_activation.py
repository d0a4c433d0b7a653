"""Activation-based CAM methods: the original CAM and the two Eigen-CAMs.

Notation as in :mod:`wsss_bench_plugins.cams`: ``A`` is the target layer's activation
[B,K,h,w], ``g = dy_c/dA``. The maps are computed in float64 and end, like every built-in
CAM, with :func:`~wsss_bench.cam_engine.finish_cam` (ReLU, bilinear upsampling, per-sample
min-max; a flat map is all zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wsss_bench.cam_engine import (
    Target,
    activations_and_gradients,
    capture_activations,
    finish_cam,
    resolve_targets,
)

# The linear-head check of `cam`: |logits - (W·mean_ij(A) + b)| <= HEAD_RTOL · Σ|terms| +
# HEAD_ATOL. Loose enough for a forward pass under fp16/bf16 autocast (float32 agrees to
# ~1e-6); any non-linear layer between A and the classifier misses it by far.
HEAD_RTOL = 1e-2
HEAD_ATOL = 1e-5
# Eigen-CAMs: a sample whose channels vary over space by at most FLAT_ULPS float32 epsilons
# of its largest magnitude is flat (rounding ripple that centring would blow up to a map).
FLAT_ULPS = 8


def _size(images: torch.Tensor) -> tuple[int, int]:
    return (int(images.shape[-2]), int(images.shape[-1]))


def architecture(model: nn.Module) -> str:
    """``model.pretrained_cfg["architecture"]`` (timm) when present, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return str(cfg["architecture"])
    return type(model).__name__


def _classifier(model: nn.Module) -> nn.Module | None:
    """timm's ``get_classifier()``, else the model's only ``nn.Linear`` (None if not one)."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        return get()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[0] if len(linears) == 1 else None


def linear_head_weights(model: nn.Module, activations: torch.Tensor, logits: torch.Tensor
                        ) -> torch.Tensor:
    """The classifier's weights W [classes, K] in float64, once this batch shows that the
    head right after the target layer is global average pooling + that linear layer:
    ``logits == W·mean_ij(A) + b`` (tolerance :data:`HEAD_RTOL`). ValueError otherwise."""
    head = _classifier(model)
    k = activations.shape[1]
    if not isinstance(head, nn.Linear):
        reason = ("no single linear classifier" if head is None
                  else f"its classifier is {type(head).__name__}, not one nn.Linear")
    elif head.in_features != k:
        reason = (f"its classifier takes {head.in_features} features, the target layer "
                  f"gives {k} channels")
    else:
        weight = head.weight.detach().double()
        bias = (head.bias.detach().double() if head.bias is not None
                else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device))
        pooled = activations.double().mean(dim=(2, 3))  # [B,K]
        expected = pooled @ weight.T + bias
        bound = HEAD_RTOL * (pooled.abs() @ weight.abs().T + bias.abs()) + HEAD_ATOL
        error = (logits.double() - expected).abs()
        if bool((error <= bound).all()):
            return weight
        reason = (f"its logits are not W·mean(A) + b of the target layer's output, off by up "
                  f"to {float(error.max()):.3g}")
    raise ValueError(f"cam (the original CAM) needs global average pooling and one linear "
                     f"layer right after the target layer; {architecture(model)} does not "
                     f"have that ({reason}): use a gradient CAM instead, e.g. gradcam")


def eigen_projection(maps: torch.Tensor) -> torch.Tensor:
    """Each sample's projection on its first principal component, float64 [B,h,w].

    As pytorch-grad-cam's ``get_2d_projection``: ``maps`` [B,K,h,w] is reshaped per sample
    to X [h*w, K], centred (the per-channel mean subtracted), p = X_c·v₁ with v₁ the first
    right singular vector of X_c. Sign rule (the SVD's sign is arbitrary): p is negated
    unless Σ_ij p_ij·(s_ij − mean s) > 0 for the channel sum s = Σ_k maps_k, i.e. p
    correlates positively with s; at exactly 0 the entry of largest |p| (the first in
    row-major order) is made positive. The rule is exact under p → −p. A sample whose
    channels vary over space by at most :data:`FLAT_ULPS` float32 epsilons of its largest
    magnitude gives zeros. Equal top singular values leave v₁ undefined (any result).
    """
    b, _, h, w = maps.shape
    x = maps.double().flatten(2).transpose(1, 2)  # [B, h*w, K]
    xc = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    p = (xc @ vh[:, 0, :, None])[..., 0]  # [B, h*w]
    return fix_sign(p, x.sum(dim=2), flat=_flat(x, xc)).view(b, h, w)


def fix_sign(p: torch.Tensor, s: torch.Tensor, flat: torch.Tensor | None = None
             ) -> torch.Tensor:
    """The sign rule of :func:`eigen_projection` on flattened projections p [B,n] and channel
    sums s [B,n]; ``flat`` bool [B] samples become zeros."""
    corr = (p * (s - s.mean(dim=1, keepdim=True))).sum(dim=1)
    largest = p.gather(1, p.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(corr != 0, corr.sign(), largest.sign())
    out = p * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    if flat is not None:
        out = torch.where(flat[:, None], torch.zeros_like(out), out)
    return out


def _flat(x: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(torch.float32).eps
    return xc.abs().amax(dim=(1, 2)) <= FLAT_ULPS * eps * x.abs().amax(dim=(1, 2))


@dataclass(frozen=True)
class ClassActivationMap:
    """CAM (Zhou et al. 2016): Σ_k w_ck A_k with the classifier weights w_c of the target class
    (no bias). Defined only when the target layer feeds global average pooling + one linear
    layer (timm ResNets at ``layer4``); checked on every batch (ValueError otherwise).
    Gradient-free: one forward pass."""

    name: str = "cam"
    description: str = ("CAM: classifier weights of the target class over the activations "
                        "(pooling + linear heads only)")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        cap = capture_activations(model, target_layer, images)
        weight = linear_head_weights(model, cap.activations, cap.logits)
        classes = resolve_targets(cap.logits, target)
        weighted = torch.einsum("bk,bkhw->bhw", weight[classes], cap.activations.double())
        return finish_cam(weighted.float(), _size(images))


@dataclass(frozen=True)
class EigenCAM:
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component
    (:func:`eigen_projection`, centred, sign rule there). Class-agnostic and gradient-free:
    ``target`` is accepted and ignored."""

    name: str = "eigencam"
    description: str = ("Eigen-CAM: first principal component of the activations "
                        "(class-agnostic, gradient-free)")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        cap = capture_activations(model, target_layer, images)
        return finish_cam(eigen_projection(cap.activations).float(), _size(images))


@dataclass(frozen=True)
class EigenGradCAM:
    """Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of g ⊙ A
    (:func:`eigen_projection`; the sign follows the channel sum Σ_k g_k A_k, HiResCAM's
    map)."""

    name: str = "eigengradcam"
    description: str = "Eigen-Grad-CAM: first principal component of gradient × activation"

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        cap = activations_and_gradients(model, target_layer, images, target)
        product = cap.gradients.double() * cap.activations.double()
        return finish_cam(eigen_projection(product).float(), _size(images))


CAMS = (ClassActivationMap(), EigenCAM(), EigenGradCAM())
