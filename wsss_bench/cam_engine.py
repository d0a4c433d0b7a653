"""The shared engine of gradient-based CAM methods.

:func:`activations_and_gradients` runs one forward pass, captures the target layer's output,
and takes ``torch.autograd.grad`` of each sample's target logit with respect to that output
only. Layers before the target layer run without building an autograd graph, so the cost is
about one forward pass; no parameter ``.grad`` is touched and the hook is removed even when
the model raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Capture:
    """What a CAM method needs from one pass: activation A, its gradient g, logits, targets."""

    activations: torch.Tensor  # [B,K,h,w]
    gradients: torch.Tensor  # [B,K,h,w], d(target logit)/dA per sample
    logits: torch.Tensor  # [B,num_classes]
    targets: torch.Tensor  # [B] long


@contextmanager
def _graph_from(target_layer: nn.Module, store: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run the model without autograd up to ``target_layer``; track gradients from there on."""

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer must output a tensor, got {type(output).__name__}")
        leaf = output.detach().requires_grad_(True)
        store["activation"] = leaf
        torch.set_grad_enabled(True)
        return leaf.clone()  # later in-place ops (ReLU(inplace), `out += x`) must not hit the leaf

    was_enabled = torch.is_grad_enabled()
    handle = target_layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            yield
    finally:
        handle.remove()
        torch.set_grad_enabled(was_enabled)


def resolve_targets(logits: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    """Per-sample class indices: the predicted class when ``target`` is None."""
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, int):
        return torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {logits.shape[0]}")
    return target


def activations_and_gradients(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor | int | None = None,
) -> Capture:
    """One forward pass and the gradient of each sample's target logit w.r.t. the activation.

    Samples are independent (eval-mode model), so the gradient of the sum of the selected
    logits gives every sample its own gradient.
    """
    store: dict[str, torch.Tensor] = {}
    with _graph_from(target_layer, store):
        logits = model(images)
        if "activation" not in store:
            raise RuntimeError("the target layer was not called during the forward pass")
        targets = resolve_targets(logits.detach(), target)
        selected = logits.gather(1, targets[:, None]).sum()  # grad mode is on after the layer
    activation = store["activation"]
    (gradients,) = torch.autograd.grad(selected, activation)
    return Capture(activation.detach(), gradients.detach(), logits.detach(), targets)


def finish_cam(weighted: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear upsampling to ``size``, then per-sample min-max to [0, 1].

    ``weighted`` is [B,h,w]. A flat map (max == min) becomes all zeros, never NaN.
    """
    cam = F.relu(weighted.float())[:, None]
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (cam - low) / safe, torch.zeros_like(cam)).clamp_(0.0, 1.0)
