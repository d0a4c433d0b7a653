"""Training speed: the pipeline's training loop against a bare model-only training step on the
same in-memory tensors, side by side in one run (CPU; the same on a GPU when one is there).

* bare: per batch ``zero_grad``, forward, cross-entropy, ``backward``, SGD step, over a seeded
  shuffle of torch tensors already in memory; nothing else.
* loop: :func:`wsss_bench.core.training.train_classifier` on the same slices (numpy, as the
  pipeline passes them), no validation, no BatchNorm recompute: what the pipeline adds per step
  (the batch gather, the loss and accuracy bookkeeping, the GradScaler, the shuffle).
  Target (issue): at most 10 % slower than bare.
* unit: the loop plus what a train unit adds to it: the validation after the epoch (on a third
  of the slices) and the BatchNorm recompute (``--precise-bn on``, the default); information.

Each call trains a fresh copy of the same initial model for one epoch. Backbones: the default
run's ``timm:test_resnet`` at 64×64 and resnet18 at 128×128 (batch 32, 256 slices).
Skipped unless benchmarks are enabled (``conftest.py``). Run::

    .venv/bin/python -m pytest tests/benchmarks/test_train_speed.py -p no:xdist \\
        --benchmark-enable -s
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.benchmarks.report import cpu_name, report_targets
from wsss_bench.core.training import TrainConfig, train_classifier

N, BATCH, ROUNDS = 256, 32, 5
MAX_OVERHEAD = 1.10
CASES = {"test_resnet": 64, "resnet18": 128}  # timm model -> slice size
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module", params=list(CASES))
def setup(request):
    timm = pytest.importorskip("timm")
    name, size = request.param, CASES[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=2)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, N)
    return name, model, images, labels


def _measure(benchmark, key: str, fn) -> None:
    benchmark.group = f"train one epoch, {N} slices, batch {BATCH}"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        MEDIANS[key] = float(benchmark.stats.stats.median)


def bare_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(x), BATCH):
        idx = order[start : start + BATCH]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()


def test_bare(benchmark, setup):
    name, model, images, labels = setup
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    _measure(benchmark, f"{name} bare", lambda: bare_epoch(copy.deepcopy(model), x, y))


def test_loop(benchmark, setup):
    name, model, images, labels = setup
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, precise_bn=False)
    _measure(benchmark, f"{name} loop", lambda: train_classifier(
        copy.deepcopy(model), images, labels, config, torch.device("cpu")))


def test_unit(benchmark, setup):
    name, model, images, labels = setup
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, precise_bn=True)
    held_out = (images[: N // 3], labels[: N // 3])
    _measure(benchmark, f"{name} unit", lambda: train_classifier(
        copy.deepcopy(model), images, labels, config, torch.device("cpu"), validation=held_out))


def test_report():
    if not MEDIANS:
        pytest.skip("no medians (benchmarks disabled)")
    lines = [f"Training one epoch ({N} slices, batch {BATCH}), {cpu_name()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__} (medians of {ROUNDS})",
             "", "| backbone | bare s | loop s | loop / bare | images/s (loop) |",
             "|---|---:|---:|---:|---:|"]
    checks = []
    for name, size in CASES.items():
        bare, loop = MEDIANS.get(f"{name} bare"), MEDIANS.get(f"{name} loop")
        if bare and loop:
            lines.append(f"| {name} {size}×{size} | {bare:.3f} | {loop:.3f} | "
                         f"{loop / bare:.3f} | {N / loop:.1f} |")
            checks.append((f"{name} loop ≤ {MAX_OVERHEAD:g} × bare", loop, MAX_OVERHEAD * bare))
    units = [f"{name}: {MEDIANS[f'{name} unit']:.3f} s" for name in CASES
             if f"{name} unit" in MEDIANS]
    lines += ["", "With validation on a third of the slices after the epoch and the BatchNorm "
              "recompute (a train unit's loop): " + "; ".join(units)]
    report_targets("\n".join(lines), checks)
