"""FullGrad (Srinivas & Fleuret 2019, "Full-Gradient Representation for Neural Network
Visualization", arXiv:1905.00780).

The full-gradient decomposition of a piecewise-linear network writes the target logit as
``f(x) = ∇_x f · x + Σ_l Σ_c ⟨∇_{z_l} f, b_l⟩``: the input-gradient plus, for every layer l
with a bias b_l, the gradient of f with respect to that layer's output z_l times the bias.
The saliency map (the paper's Eq. 5) is

    S(x) = ψ(∇_x f ⊙ x) + Σ_l Σ_c ψ(∇_{z_l} f ⊙ b_l)_c,

with ψ = bilinear upsampling ∘ rescale-to-[0, 1] ∘ abs, applied to each channel of each term
(each input channel of the first). Biases come from every ``nn.Conv2d`` with a bias and every
``nn.BatchNorm2d`` in eval mode, whose effective bias is ``β − μ·γ/√(σ² + ε)``. ``nn.Linear``
biases after global pooling have no spatial extent and are left out of the map (as in the
paper and its code). The target layer plays no part.

ψ rescales exactly (no ε), so the map does not depend on the scale of the logits; being
per channel, it keeps only whether a channel's bias is non-zero, not its size (the bias values
enter the decomposition, :func:`full_gradients`, whose terms sum to the logit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn

from wsss_bench.cam_engine import Target, finish_cam, resolve_targets

SUPPORTED = ("Conv2d, BatchNorm2d and timm's BatchNormAct2d in eval mode, and Linear after "
             "global pooling")
_NORMS: tuple[type[nn.Module], ...] = tuple(
    n for n in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                nn.LocalResponseNorm, getattr(nn, "RMSNorm", None))  # RMSNorm: torch >= 2.4
    if n is not None)


def architecture(model: nn.Module) -> str:
    """timm's ``pretrained_cfg["architecture"]`` when there is one, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _cannot(model: nn.Module, name: str, module: nn.Module, why: str) -> ValueError:
    return ValueError(f"fullgrad cannot handle {architecture(model)}: {type(module).__name__} "
                      f"layer {name!r} {why}; FullGrad supports the biases of {SUPPORTED}")


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose biases enter the map: plain ``nn.Conv2d`` with a bias, and plain
    ``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` using running statistics (eval mode; for
    ``BatchNormAct2d`` the output before its activation, see :func:`output_of`).

    Any other layer with a bias, or any other normalisation layer (LayerNorm, GroupNorm,
    BatchNorm with a fused activation, …), is a ValueError naming the architecture and the
    layer type; so is a model without a single bias layer. ``nn.Linear`` is accepted here and
    checked during the pass (its output must be [B, features]).
    """
    layers: list[nn.Module] = []
    for name, module in model.named_modules():
        kind = type(module)
        if isinstance(module, nn.BatchNorm2d) and kind.forward in _BATCHNORM_FORWARDS:
            if module.training or module.running_mean is None or module.running_var is None:
                raise _cannot(model, name, module, "normalises with batch statistics (train "
                                                   "mode or no running stats): call model.eval()")
            layers.append(module)
        elif isinstance(module, nn.Conv2d) and kind.forward is nn.Conv2d.forward:
            if module.bias is not None:
                layers.append(module)
        elif isinstance(module, nn.Linear):
            continue
        elif isinstance(module, _NORMS):
            raise _cannot(model, name, module, "is a normalisation whose bias FullGrad cannot "
                                               "attribute")
        elif isinstance(getattr(module, "bias", None), torch.Tensor):
            raise _cannot(model, name, module, "has a bias FullGrad cannot attribute")
    if not layers:
        raise ValueError(f"fullgrad cannot handle {architecture(model)}: it has no layer with "
                         f"a bias (FullGrad needs {SUPPORTED})")
    return layers


_BATCHNORM_FORWARDS = (nn.BatchNorm2d.forward, BatchNormAct2d.forward)


def output_of(layer: nn.Module) -> nn.Module:
    """Where a bias layer's output is captured: the layer itself, or for timm's
    ``BatchNormAct2d`` (batch norm, then ``drop``, then ``act``) its ``drop`` submodule, whose
    output is the normalised tensor before the activation (``drop`` is the identity in eval
    mode)."""
    return layer.drop if isinstance(layer, BatchNormAct2d) else layer


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The bias added to a layer's output: a Conv2d's bias; for an eval-mode BatchNorm2d
    ``β − μ·γ/√(σ² + ε)`` (γ = 1, β = 0 without affine parameters)."""
    if isinstance(layer, nn.BatchNorm2d):
        mean, var = layer.running_mean, layer.running_var
        assert mean is not None and var is not None
        gamma = layer.weight if layer.weight is not None else torch.ones_like(mean)
        beta = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        return (beta - mean * gamma / torch.sqrt(var + layer.eps)).detach()
    assert isinstance(layer, nn.Conv2d) and layer.bias is not None
    return layer.bias.detach()


@dataclass(frozen=True)
class Decomposition:
    """The full gradients of each sample's target logit."""

    input_gradient: torch.Tensor  # [B,C,H,W], d f / d x
    bias_terms: list[tuple[torch.Tensor, torch.Tensor]]  # (bias [K], d f / d z_l [B,K,h,w])
    logits: torch.Tensor  # [B,num_classes]
    targets: torch.Tensor  # [B] long


def full_gradients(model: nn.Module, images: torch.Tensor, target: Target = None
                   ) -> Decomposition:
    """One forward pass; ``torch.autograd.grad`` of the summed target logits with respect to
    the input and every output of a bias layer (a layer called twice gives two terms).

    No parameter ``.grad`` is filled and every hook is removed, also when the model raises.
    Each captured output is handed on as a clone, so in-place operations after the layer
    (``ReLU(inplace=True)``, ``out += shortcut``) do not change what is differentiated.
    """
    layers = bias_layers(model)
    outputs: list[tuple[nn.Module, torch.Tensor]] = []

    def capture_for(layer: nn.Module):
        def capture(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            outputs.append((layer, output))
            return output.clone()
        return capture

    def check_linear(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if module.bias is not None and output.dim() != 2:  # type: ignore[union-attr]
            name = next(n for n, m in model.named_modules() if m is module)
            raise _cannot(model, name, module, f"adds its bias to a {output.dim()}-D output "
                                               f"(tokens or space), not after global pooling")

    handles = [output_of(layer).register_forward_hook(capture_for(layer)) for layer in layers]
    handles += [m.register_forward_hook(check_linear) for m in model.modules()
                if isinstance(m, nn.Linear)]
    try:
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            targets = resolve_targets(logits.detach(), target)
            selected = logits.gather(1, targets[:, None]).sum()
        wrt = [x] + [out for _, out in outputs if out.requires_grad]
        grads = list(torch.autograd.grad(selected, wrt, allow_unused=True))
    finally:
        for handle in handles:
            handle.remove()
    input_grad = grads.pop(0)
    terms = []
    for layer, out in outputs:
        g = grads.pop(0) if out.requires_grad else None
        terms.append((effective_bias(layer),
                      torch.zeros_like(out).detach() if g is None else g.detach()))
    return Decomposition(torch.zeros_like(x) if input_grad is None else input_grad.detach(),
                         terms, logits.detach(), targets)


def rescale(maps: torch.Tensor) -> torch.Tensor:
    """Min-max of each [h,w] slice of ``maps`` [B,K,h,w] to [0, 1]; a flat slice gives 0
    (exact: no ε, so the map does not depend on the scale of the logits)."""
    flat = maps.flatten(2)
    low = flat.min(dim=2).values[:, :, None, None]
    span = flat.max(dim=2).values[:, :, None, None] - low
    ok = span > 0
    return torch.where(ok, (maps - low) / torch.where(ok, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


@dataclass(frozen=True)
class FullGrad:
    """FullGrad saliency: ψ(|∇_x f ⊙ x|) plus ψ(|∇_z f ⊙ b|) of every channel of every
    Conv2d/BatchNorm2d, where ψ rescales each channel to [0, 1] and upsamples it bilinearly;
    the sum is min-maxed to [0, 1]. Uses all bias layers: ``target_layer`` is ignored."""

    name: str = "fullgrad"
    description: str = ("FullGrad: |input-gradient × input| + |bias-gradient × bias| of every "
                        "Conv2d/BatchNorm2d, each channel rescaled; ignores the target layer")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        dec = full_gradients(model, images, target)
        total = rescale((dec.input_gradient.float() * images.float()).abs()).sum(dim=1)
        for bias, grad in dec.bias_terms:
            # ψ per channel; upsampling is linear, so the channels are summed first
            coarse = rescale((grad.float() * bias.float()[None, :, None, None]).abs()).sum(1)
            total = total + F.interpolate(coarse[:, None], size=size, mode="bilinear",
                                          align_corners=False)[:, 0]
        return finish_cam(total, size)


CAMS = (FullGrad(),)
