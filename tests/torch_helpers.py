"""Helpers shared by the torch tests: hooks left behind, a backbone's target output."""

from __future__ import annotations

import torch
from torch import nn


def all_hooks(model: nn.Module) -> list[object]:
    """Every forward, forward-pre and backward hook registered on any module of ``model``."""
    hooks: list[object] = []
    for mod in model.modules():
        hooks += list(mod._forward_hooks.values()) + list(mod._forward_pre_hooks.values())
        hooks += list(mod._backward_hooks.values())
    return hooks


def assert_clean(model: nn.Module) -> None:
    """No hooks left and no parameter ``.grad`` filled."""
    assert all_hooks(model) == []
    assert all(p.grad is None for p in model.parameters())


def target_output(backbone, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The target layer's output during a forward pass (which must call it exactly once)."""
    seen: list[torch.Tensor] = []
    handle = backbone.target_layer(model).register_forward_hook(
        lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(seen) == 1, "the target layer must run exactly once per forward pass"
    return seen[0]
