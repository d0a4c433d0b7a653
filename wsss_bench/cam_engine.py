"""The shared engine of gradient-based CAM methods.

:func:`activations_and_gradients` runs one forward pass, captures the target layer's output,
and takes ``torch.autograd.grad`` of each sample's target logit with respect to that output
only. Layers before the target layer run without building an autograd graph, so the cost is
about one forward pass; no parameter ``.grad`` is touched and the hook is removed even when
the model raises. :func:`capture_activations` is the same pass without any gradient, for
the gradient-free methods.
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


LESION_CLASS = 1  # wsss-bench classifiers: class 0 = no lesion, class 1 = lesion

Target = torch.Tensor | None  # the CAM contract's target (wsss_bench.contracts.Cam)


def resolve_targets(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Per-sample class indices, long [B] on the logits' device.

    ``None``: each sample's predicted class (the paper); an integer tensor [B]: one class per
    sample (``--cam-target positive`` passes all ones, :data:`LESION_CLASS`). Anything else is
    a TypeError, a wrong length a ValueError.
    """
    if target is None:
        return logits.argmax(dim=1)
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"CAM target must be None or an integer tensor [B] of class indices, "
                        f"got {target!r}")
    target = target.to(device=logits.device, dtype=torch.long).reshape(-1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries for a batch of {logits.shape[0]}")
    return target


def activations_and_gradients(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    target: Target = None,
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
    # float32 for the CAM arithmetic even when the forward pass ran in mixed precision
    return Capture(activation.detach().float(), gradients.detach().float(),
                   logits.detach().float(), targets)


@dataclass(frozen=True)
class ForwardCapture:
    """What a gradient-free CAM method needs from one pass: activation A and the logits."""

    activations: torch.Tensor  # [B,K,h,w]
    logits: torch.Tensor  # [B,num_classes]


def capture_activations(model: nn.Module, target_layer: nn.Module, images: torch.Tensor
                        ) -> ForwardCapture:
    """One forward pass without autograd: the target layer's output and the logits.

    The activation is copied inside the hook, so in-place operations after the target layer
    (``ReLU(inplace=True)``, ``out += x``) cannot change it; the hook is removed even when
    the model raises, and no gradient is computed.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer must output a tensor, got {type(output).__name__}")
        store["activation"] = output.detach().clone()

    handle = target_layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    if "activation" not in store:
        raise RuntimeError("the target layer was not called during the forward pass")
    return ForwardCapture(store["activation"].float(), logits.detach().float())


def finish_cam(weighted: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear upsampling to ``size``, then per-sample min-max to [0, 1].

    ``weighted`` is [B,h,w]. A flat map (max == min) becomes all zeros, never NaN. Flatness is
    decided before upsampling: bilinear interpolation of a constant is not exactly constant in
    float32, and min-max would blow that rounding ripple up to a 0/1 pattern.
    """
    cam = F.relu(weighted.float())
    coarse = cam.flatten(1)
    varies = (coarse.max(dim=1).values > coarse.min(dim=1).values)[:, None, None]
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    ok = varies & (span > 0)
    safe = torch.where(ok, span, torch.ones_like(span))
    return torch.where(ok, (cam - low) / safe, torch.zeros_like(cam)).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class SmoothCapture:
    """Clean activations plus the gradient moments averaged over noisy copies of the input."""

    activations: torch.Tensor  # [B,K,h,w], from the clean pass
    mean_grad: torch.Tensor  # [B,K,h,w], E[g] over the copies (float64)
    mean_grad2: torch.Tensor  # E[g²] (float64)
    mean_grad3: torch.Tensor  # E[g³] (float64)
    logits: torch.Tensor  # clean logits
    targets: torch.Tensor  # resolved on the clean pass, used for every copy


def smooth_gradients(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    target: Target = None,
    *,
    samples: int,
    sigma: float,
    seed: int,
    max_batch: int = 256,
) -> SmoothCapture:
    """Gradient moments over ``samples`` noisy copies of each image (SmoothGrad).

    The noise of copy j is ``sigma * (max - min of the image) * z_j``; ``z_j`` is drawn from a
    generator seeded with ``seed`` and is the same for every image of the batch, so a sample's
    result does not depend on the rest of its batch. Copies run as batches of at most
    ``max_batch`` images (the clean pass included): cost ≈ samples + 1 forward passes.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    clean = activations_and_gradients(model, target_layer, images, target)
    b = images.shape[0]
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.randn((samples, 1, *images.shape[1:]), generator=generator,
                        device=images.device, dtype=images.dtype)
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(1, b, 1, 1, 1)
    sums = [torch.zeros_like(clean.gradients, dtype=torch.float64) for _ in range(3)]
    per_chunk = max(1, max_batch // max(b, 1))
    for start in range(0, samples, per_chunk):
        z = noise[start : start + per_chunk]
        noisy = (images.unsqueeze(0) + sigma * span * z).flatten(0, 1)
        cap = activations_and_gradients(model, target_layer, noisy,
                                        clean.targets.repeat(len(z)))
        g = cap.gradients.double().view(len(z), b, *cap.gradients.shape[1:])
        sums[0] += g.sum(0)
        sums[1] += (g * g).sum(0)
        sums[2] += (g * g * g).sum(0)
    m1, m2, m3 = (s / samples for s in sums)
    return SmoothCapture(clean.activations, m1, m2, m3, clean.logits, clean.targets)
