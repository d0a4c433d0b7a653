"""Classifier training as the authors did it: SGD, cross-entropy over {no lesion, lesion}."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    seed: int = 0
    precise_bn: bool = True  # recompute BatchNorm statistics of the final weights
    amp: bool = False  # mixed precision (float16 on CUDA, bfloat16 on CPU)
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor cores)


@dataclass
class TrainResult:
    model: nn.Module
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    # per epoch: train_loss and train_accuracy (over the epoch's batches, train mode), and
    # val_loss and val_accuracy (eval mode, after the epoch) when validation slices are given
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision for ``device``: float16 on CUDA, bfloat16 elsewhere (or a no-op)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def on_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device`` in the model's memory format."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def keep_on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The whole training set on the GPU when it takes at most a quarter of the free memory
    (no host-to-device copy per batch); otherwise pinned host memory for fast copies."""
    if device.type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() * 4 <= free:
        return x.to(device)
    return x.pin_memory()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; "
                         "use --device cpu")
    return torch.device(device)


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``model`` on ``images`` float[N,C,H,W] with slice labels int[N]; keep the last epoch.

    Shuffling uses its own seeded generator, so the order depends only on ``config.seed``.
    ``on_step(epoch, loss)`` is called after every batch. ``validation`` (images, labels) is
    scored after every epoch in eval mode without gradients (no weight, BatchNorm statistic or
    random state changes: the trained model is the same with or without it).
    """
    seed_everything(config.seed)
    model.to(device).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    x_all = keep_on_device(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
                           device)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(x_all.device)
    order_rng = torch.Generator().manual_seed(config.seed)
    result = TrainResult(model=model)
    for epoch in range(config.epochs):
        order = torch.randperm(len(x_all), generator=order_rng)
        total, count, right = 0.0, 0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size].to(x_all.device)
            if len(idx) < 2 and len(order) > 1:  # BatchNorm cannot train on one sample
                continue
            x = on_device(x_all[idx], device, config.channels_last)
            y = y_all[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.amp):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            right += int((logits.detach().argmax(dim=1) == y).sum())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            value = float(loss.detach())
            total += value * len(idx)
            count += len(idx)
            if on_step is not None:
                on_step(epoch, value)
        result.losses.append(total / max(count, 1))
        epoch_stats = {"train_loss": result.losses[-1], "train_accuracy": right / max(count, 1)}
        if validation is not None:
            epoch_stats.update(evaluate_classifier(model, *validation, device, config))
            model.train()
        result.history.append(epoch_stats)
    optimizer.zero_grad(set_to_none=True)
    if config.precise_bn:
        with autocast(device, config.amp):
            recompute_batchnorm(model, x_all, device, config.batch_size, config.channels_last)
    model.eval()
    return result


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                        device: torch.device, config: TrainConfig) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy) and ``val_accuracy`` of ``model`` in eval mode."""
    model.eval()
    total, right = 0.0, 0
    for start in range(0, len(images), config.batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + config.batch_size],
                                                  dtype=np.float32))
        y = torch.from_numpy(np.asarray(labels[start:start + config.batch_size],
                                        dtype=np.int64)).to(device)
        with autocast(device, config.amp):
            logits = model(on_device(x, device, config.channels_last))
        total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        right += int((logits.argmax(dim=1) == y).sum())
    n = max(len(images), 1)
    return {"val_loss": total / n, "val_accuracy": right / n}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, device: torch.device,
                        batch_size: int, channels_last: bool = False) -> None:
    """Replace BatchNorm running statistics by the exact averages under the final weights.

    The running averages of a short training run lag behind its fast-moving weights, and an
    eval-mode model can then be far worse than the training loss says ("precise BN", Wu &
    Johnson 2021). One forward pass over the training slices in train mode fixes that: each
    batch enters the running mean with a weight proportional to its size, so the mean is the
    exact mean over all slices and the variance the sample-weighted mean of batch variances.
    Batches are split evenly (sizes differ by at most one), so none has a single sample.
    No weight changes; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) == 0:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for batch in torch.tensor_split(x, -(-len(x) // batch_size)):
            for m in norms:
                m.momentum = len(batch) / (seen + len(batch))
            model(on_device(batch, device, channels_last))
            seen += len(batch)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
