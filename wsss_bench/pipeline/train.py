"""Stage ``train``: one classifier per (backbone, fold, seed), and its prediction per slice."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench import guards
from wsss_bench.core.training import TrainConfig, autocast, on_device, train_classifier
from wsss_bench.errors import PluginOutputError, UsageError
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.plan import TrainUnit, weights_argument


@dataclass(frozen=True)
class Trained:
    """A train unit's result: the checkpoint, every slice's predicted class, the facts."""

    checkpoint: bytes  # torch.save of the state dict (CPU tensors)
    predicted: np.ndarray  # int8[N]
    info: dict[str, Any]  # losses, history per epoch, val_accuracy, output_stride, seconds, weights
    notes: tuple[str, ...] = ()  # lines for the log (e.g. a stride fallback)


def train(unit: TrainUnit, ctx: Context) -> Trained:
    """Train ``unit``'s classifier on its fold's training slices (the stage function); a
    method's unit trains the method (:func:`wsss_bench.pipeline.methods.train_method`)."""
    if unit.kind == "methods":
        from wsss_bench.pipeline.methods import train_method

        return train_method(unit, ctx)
    plan, data, device = ctx.plan, ctx.data, ctx.torch_device
    cfg = plan.config
    train_idx, val_idx = ctx.split(unit.fold)
    seed = unit.description["seed"]
    ctx.plugin("backbones", unit.backbone)  # plugin code runs before seeding, as in any process
    weights_argument(plan, ctx.plugin("backbones", unit.backbone))
    torch.manual_seed(seed)
    who = guards.label("backbones", ctx.plugin("backbones", unit.backbone), plan.versions)
    model, stride, notes = guards.call(who, build, ctx, unit.backbone, keep_usage=True)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                       amp=plan.amp, channels_last=plan.channels_last,
                       precise_bn=cfg.precise_bn == "on")
    backbone = ctx.plugin("backbones", unit.backbone)
    probe(model, backbone, data.images[train_idx[:2]], plan.versions)
    t0 = time.perf_counter()
    result = train_classifier(model, data.images[train_idx], data.labels[train_idx], tcfg, device,
                              validation=(data.images[val_idx], data.labels[val_idx]))
    if not np.isfinite(result.losses).all():
        raise PluginOutputError(f"train {unit.label}: training diverged (loss per epoch "
                                f"{result.losses}); check the data's value range, --lr and "
                                f"{who}")
    predicted = predict(result.model, data.images, cfg.cam_batch_size, device, amp=plan.amp,
                        channels_last=plan.channels_last,
                        check=lambda out, n: guards.check_logits(backbone, out, n,
                                                                 versions=plan.versions))
    val_accuracy = float((predicted[val_idx] == data.labels[val_idx]).mean())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    info = {"losses": result.losses, "history": result.history,
            "val_accuracy": val_accuracy, "output_stride": stride,
            "seconds": time.perf_counter() - t0, "weights": plan.weights.get(unit.backbone)}
    return Trained(buffer.getvalue(), predicted.astype(np.int8), info, tuple(notes))


def build(ctx: Context, name: str) -> tuple[torch.nn.Module, int, list[str]]:
    """An untrained classifier at the run's output stride (stride 32 in auto mode for a
    backbone that cannot change it), with its initial weights: a local file, timm's hub or
    random. Returns the model, the stride used and notes for the log."""
    plan = ctx.plan
    backbone = ctx.plugin("backbones", name)
    stride = plan.output_stride()
    pretrained = weights_argument(plan, backbone)
    kwargs = dict(in_chans=plan.in_chans, num_classes=2, pretrained=pretrained)
    if stride != 32:
        if stride in backbone.output_strides:
            try:
                return backbone.build(**kwargs, output_stride=stride), stride, []
            except ValueError as exc:  # e.g. an input too small for this stride
                reason = str(exc)
        else:
            reason = f"output stride {stride} not supported (declares {backbone.output_strides})"
        if plan.config.output_stride != "auto":
            raise UsageError(f"backbone {name!r}: {reason}; pass --output-stride 32 or auto")
        notes = [f"[bold]backbone[/] {name}: output stride 32 ({reason})"]
        return backbone.build(**kwargs), 32, notes
    return backbone.build(**kwargs), 32, []


def load_model(ctx: Context, name: str, checkpoint: bytes, stride: int) -> torch.nn.Module:
    """A stored classifier, in eval mode on the context's device."""
    plan = ctx.plan
    kwargs = {} if stride == 32 else {"output_stride": stride}
    model = ctx.plugin("backbones", name).build(in_chans=plan.in_chans, num_classes=2,
                                                pretrained=False, **kwargs)
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(ctx.torch_device).eval()
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def probe(model: torch.nn.Module, backbone: Any, images: np.ndarray,
          versions: dict[str, str]) -> None:
    """One forward pass (eval mode, no gradient, no randomness) of a freshly built classifier
    on two slices: logits [2, 2], finite, or a PluginOutputError naming the backbone."""
    was_training = model.training
    model.eval()
    try:
        x = as_tensor(images)
        out = guards.call(guards.label("backbones", backbone, versions), model, x)
    finally:
        model.train(was_training)
    guards.check_logits(backbone, out, len(x), versions=versions)


@torch.no_grad()
def predict(model, images: np.ndarray, batch_size: int, device: torch.device,
            amp: bool = False, channels_last: bool = False,
            check: Callable[[torch.Tensor, int], None] | None = None) -> np.ndarray:
    """Predicted class int64[N] of every slice (eval mode); ``check(logits, batch)`` sees
    every batch's output first."""
    out = []
    with autocast(device, amp):
        for s in range(0, len(images), batch_size):
            x = on_device(as_tensor(images[s : s + batch_size]), device, channels_last)
            logits = model(x)
            if check is not None:
                check(logits, len(x))
            out.append(logits.argmax(1).cpu())
    return torch.cat(out).numpy()


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """A float32 tensor of a (possibly float16, memory-mapped) slice batch."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32))


def store_files(trained: Trained, folder: Path) -> dict[str, Any]:
    """Write a train result into its store unit's folder; the unit's metadata."""
    (folder / "model.pt").write_bytes(trained.checkpoint)
    np.save(folder / "predicted.npy", trained.predicted)
    return dict(trained.info)
