"""Stages ``train`` and ``cams`` for end-to-end methods (:class:`wsss_bench.contracts.Method`).

A method's train unit trains its model on a fold's training slices (image labels only) and
stores the state dict, like a classifier's; its map unit rebuilds the model, loads the state
dict and stores one ``cams`` store unit per named output (and per CAM method when the model has
a CAM head). Evaluate units read those maps as one-member groups, so thresholds are chosen on
the training folds exactly as for CAMs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from wsss_bench import contracts, guards
from wsss_bench.contracts import MethodContext
from wsss_bench.core.training import autocast
from wsss_bench.errors import PluginOutputError


def backbone_builder(registry: Any = None) -> Callable[[str, int, int], nn.Module]:
    """``build_backbone(name, in_chans, output_stride)``: an untrained two-class classifier
    of the backbone registry (random initialisation; stride 32 builds without a stride)."""

    def build_backbone(name: str, in_chans: int, output_stride: int = 32) -> nn.Module:
        nonlocal registry
        if registry is None:
            from wsss_bench.registry import load_registry

            registry = load_registry()
        backbone = registry.kind("backbones")[name]
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        return backbone.build(in_chans=in_chans, num_classes=2, pretrained=False, **kwargs)

    return build_backbone


def method_context(seed: int = 0, epochs: int = 1, batch_size: int = 8, lr: float = 0.01,
                   device: str | torch.device = "cpu", amp: bool = False,
                   progress: Callable[[int, dict[str, float]], None] | None = None,
                   registry: Any = None) -> MethodContext:
    """A :class:`MethodContext` for tests and notebooks (the run builds its own)."""
    return MethodContext(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=torch.device(device), amp=amp,
                         progress=progress or (lambda epoch, losses: None),
                         build_backbone=backbone_builder(registry))


def run_context(unit: Any, ctx: Any, progress: Callable[[int, dict[str, float]], None]
                ) -> MethodContext:
    """The context a method's train unit gives the method: the run's settings, the unit's
    derived seed, the worker's device."""
    plan = ctx.plan
    cfg = plan.config
    return MethodContext(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                         seed=unit.description["seed"], device=ctx.torch_device, amp=plan.amp,
                         progress=progress, build_backbone=backbone_builder(ctx.registry))


def train_method(unit: Any, ctx: Any) -> Any:
    """Train ``unit``'s method on its fold's training slices (image labels only); the state
    dict, every slice's predicted class and the facts, as a classifier's train unit stores
    them. Non-finite losses or weights fail the unit with one line naming the method."""
    from wsss_bench.pipeline.train import Trained

    data = ctx.data
    method = ctx.plugin("methods", unit.backbone)
    who = guards.label("methods", method, ctx.plan.versions)
    train_idx, val_idx = ctx.split(unit.fold)
    history: list[dict[str, float]] = []

    def progress(epoch: int, losses: dict[str, float]) -> None:
        terms = {k: float(v) for k, v in losses.items()}
        # train_loss: the total, as the training curves draw it for classifiers
        history.append({"epoch": int(epoch), "train_loss": terms.get("total", float("nan")),
                        **terms})

    context = run_context(unit, ctx, progress)
    torch.manual_seed(context.seed)
    t0 = time.perf_counter()
    model = guards.call(who, method.train, np.asarray(data.images[train_idx], dtype=np.float32),
                        np.asarray(data.labels[train_idx], dtype=np.int64), context)
    seconds = time.perf_counter() - t0
    if not isinstance(model, nn.Module):
        raise guards.fail(who, f"train returned a {type(model).__name__}, not an nn.Module")
    losses = [h.get("total", float("nan")) for h in history]
    if len(history) != ctx.plan.config.epochs or not np.isfinite(losses).all():
        raise guards.fail(who, f"training reported losses {losses} over {len(history)} of "
                               f"{ctx.plan.config.epochs} epochs; every epoch must report a "
                               f"finite 'total' through context.progress")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise guards.fail(who, f"trained weights are not finite ({bad[0]} and {len(bad) - 1} "
                               f"more); check its learning rate")
    model.eval()
    predicted = predict_slices(method, model, data.images, ctx)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    info = {"losses": losses, "history": history,
            "val_accuracy": float((predicted[val_idx] == data.labels[val_idx]).mean()),
            "seconds": seconds, "method": True}
    return Trained(buffer.getvalue(), predicted.astype(np.int8), info)


@torch.no_grad()
def predict_slices(method: Any, model: nn.Module, images: np.ndarray, ctx: Any) -> np.ndarray:
    """Every slice's predicted class from the method's logits: the model's forward for a
    model with a CAM head, else the logits ``maps`` returns."""
    from wsss_bench.pipeline.train import as_tensor

    plan, device = ctx.plan, ctx.torch_device
    who = guards.label("methods", method, plan.versions)
    out = []
    for start in range(0, len(images), plan.config.cam_batch_size):
        x = as_tensor(images[start : start + plan.config.cam_batch_size]).to(device)
        forward = model if method.cam_head else (lambda t: method.maps(model, t)[1])
        with autocast(device, plan.amp):
            logits = guards.call(who, forward, x)
        if problem := contracts.logits_problem(logits, len(x), 2):
            raise guards.fail(who, problem)
        out.append(logits.float().argmax(1).cpu())
    return torch.cat(out).numpy()


def load_method_model(ctx: Any, unit: Any) -> tuple[Any, nn.Module]:
    """The method of a map unit and its stored model, in eval mode on the context's device."""
    method = ctx.plugin("methods", unit.train.backbone)
    who = guards.label("methods", method, ctx.plan.versions)
    context = run_context(unit.train, ctx, lambda epoch, losses: None)
    model = guards.call(who, method.build, ctx.plan.in_chans, context)
    state = torch.load(io.BytesIO(unit.checkpoint()), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise guards.fail(who, "its stored state dict does not load into build(): "
                               + str(exc).splitlines()[0]) from exc
    return method, model.to(ctx.torch_device).eval()


def make_maps(unit: Any, ctx: Any) -> Any:
    """The maps of every slice for the outputs (and CAM methods) ``unit.todo`` of a trained
    method (the ``cams`` stage function for a method's unit)."""
    from wsss_bench.pipeline.cams import Mapped, compute_cams

    plan = ctx.plan
    method, model = load_method_model(ctx, unit)
    images = ctx.data.cam_input  # what the CAM methods see, as on every CAM row
    gate = np.asarray(unit.predicted) == 1 if plan.config.gate else None
    outputs = [o for o in unit.todo if o in plan.outputs[unit.train.backbone]]
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    if outputs:
        t0 = time.perf_counter()
        try:
            # the view the method was trained on (a dataset's CAM view is for classifiers)
            made = method_maps(method, model, ctx.data.images, plan, ctx.torch_device, gate)
        except PluginOutputError as exc:
            failed.update({o: str(exc) for o in outputs})
        else:
            names = plan.outputs[unit.train.backbone]
            per = (time.perf_counter() - t0) / len(outputs)
            for o in outputs:
                maps[o] = made[names.index(o)]
                seconds[o] = per
    for name in [c for c in unit.todo if c not in outputs]:  # CAM methods on its CAM head
        t0 = time.perf_counter()
        who = guards.label("methods", method, plan.versions)
        out = np.empty((len(images), *images.shape[2:]), dtype=np.float16)
        try:  # a failing target layer fails this CAM method only, not the outputs made above
            layer = guards.call(who, method.target_layer, model)
            maps[name] = compute_cams(ctx.plugin("cams", name), model, layer, images,
                                      plan.config.cam_batch_size, ctx.torch_device,
                                      target=plan.config.cam_target, gate=gate, amp=plan.amp,
                                      out=out)
        except PluginOutputError as exc:
            failed[name] = str(exc)
            continue
        seconds[name] = time.perf_counter() - t0
    return Mapped(maps, seconds, failed)


def method_maps(method: Any, model: nn.Module, images: np.ndarray, plan: Any,
                device: torch.device, gate: np.ndarray | None = None) -> np.ndarray:
    """float16[K,N,H,W]: the method's K maps of every slice, in batches, each batch's output
    checked at the boundary; ``gate`` bool[N] zeroes the maps of slices predicted negative."""
    from wsss_bench.pipeline.train import as_tensor

    k = len(plan.outputs[method.name])
    out = np.empty((k, len(images), *images.shape[2:]), dtype=np.float16)
    who = guards.label("methods", method, plan.versions)
    batch = plan.config.cam_batch_size
    for start in range(0, len(images), batch):
        x = as_tensor(images[start : start + batch]).to(device)
        with torch.no_grad(), autocast(device, plan.amp):
            result = guards.call(who, method.maps, model, x)
        if problem := contracts.method_maps_problem(result, tuple(x.shape), k):
            raise guards.fail(who, problem)
        out[:, start : start + len(x)] = result[0].float().clamp(0, 1).cpu().numpy()
    if gate is not None:
        out[:, ~gate] = 0.0
    return out
