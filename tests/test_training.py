"""Classifier training: seeding, learning, clean end state, precise BatchNorm, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsss_bench.core.training import (
    TrainConfig,
    recompute_batchnorm,
    resolve_device,
    train_classifier,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCNN(nn.Module):
    """Conv-BN-ReLU-Dropout-GAP/GMP-Linear: has BatchNorm and randomness (dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def tiny_model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


def square_data(n: int = 64, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; label 1 iff a bright 6x6 square sits somewhere in the image."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.2, 0.05, size=(n, 1, size, size)).astype(np.float32)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 6, size=2)
        images[i, 0, y : y + 6, x : x + 6] += 0.8
    return images, labels.astype(np.int64)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((pred == labels).mean())


# ---------------------------------------------------------------- seeding


def _train(seed: int, global_noise: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    images, labels = square_data(n=24)
    model = tiny_model(0)
    torch.manual_seed(global_noise)  # the global RNG state must not matter
    np.random.seed(global_noise)
    result = train_classifier(model, images, labels,
                              TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=seed), CPU)
    assert result.model is model
    return state(model), result.losses


def test_same_seed_gives_identical_weights_and_losses():
    w1, l1 = _train(seed=5, global_noise=1)
    w2, l2 = _train(seed=5, global_noise=2)
    assert len(l1) == 2
    assert l1 == l2
    assert same_state(w1, w2)


def test_different_seed_gives_different_training():
    w1, l1 = _train(seed=5, global_noise=1)
    w2, l2 = _train(seed=6, global_noise=1)
    assert l1 != l2
    assert not torch.equal(w1["conv.weight"], w2["conv.weight"])


def test_training_changes_the_weights():
    before = state(tiny_model(0))
    after, _ = _train(seed=5, global_noise=1)
    assert not torch.equal(before["conv.weight"], after["conv.weight"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


# ---------------------------------------------------------------- learning and end state


def test_learns_a_trivially_separable_problem_and_ends_clean():
    images, labels = square_data(n=64)
    model = tiny_model(0)
    assert accuracy(model.eval(), images, labels) < 0.8  # not solved before training
    result = train_classifier(model, images, labels,
                              TrainConfig(epochs=8, batch_size=8, lr=1e-2, seed=0), CPU)
    assert len(result.losses) == 8
    assert all(np.isfinite(result.losses))
    assert result.losses[-1] < result.losses[0]
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert accuracy(model, images, labels) > 0.9
    # and it generalises to new images of the same kind
    test_images, test_labels = square_data(n=64, seed=99)
    assert accuracy(model, test_images, test_labels) > 0.9


def test_on_step_is_called_per_batch_and_losses_are_epoch_means():
    images, labels = square_data(n=17)  # batches of 8, 8 and 1: the single one is skipped
    calls: list[tuple[int, float]] = []
    result = train_classifier(tiny_model(0), images, labels,
                              TrainConfig(epochs=3, batch_size=8, lr=1e-2, seed=1,
                                          precise_bn=False),
                              CPU, on_step=lambda epoch, loss: calls.append((epoch, loss)))
    assert [e for e, _ in calls] == [0, 0, 1, 1, 2, 2]
    for epoch in range(3):
        batch_losses = [loss for e, loss in calls if e == epoch]
        assert result.losses[epoch] == pytest.approx(np.mean(batch_losses), rel=1e-6)


def test_history_scores_validation_each_epoch_without_changing_the_training():
    """Per-epoch validation (eval mode, no gradients) leaves weights, BatchNorm statistics
    and the dropout's random stream untouched; its numbers are the model's after each epoch."""
    images, labels = square_data(n=40)
    val_images, val_labels = square_data(n=12, seed=7)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, seed=2, precise_bn=False)
    plain = train_classifier(tiny_model(0), images, labels, cfg, CPU)
    seen = train_classifier(tiny_model(0), images, labels, cfg, CPU,
                            validation=(val_images, val_labels))
    assert same_state(state(plain.model), state(seen.model))
    assert plain.losses == seen.losses
    assert [set(h) for h in plain.history] == [{"train_loss", "train_accuracy"}] * 3
    assert [h["train_loss"] for h in seen.history] == seen.losses
    assert all(0 <= h["train_accuracy"] <= 1 for h in seen.history)
    with torch.no_grad():  # the last epoch's validation is the final model's (no precise BN)
        logits = seen.model.eval()(torch.from_numpy(val_images))
        loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(val_labels)))
    assert seen.history[-1]["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert seen.history[-1]["val_accuracy"] == accuracy(seen.model, val_images, val_labels)
    assert len({h["val_loss"] for h in seen.history}) == 3  # one value per epoch


# ---------------------------------------------------------------- precise BatchNorm


def test_recompute_batchnorm_sets_the_exact_mean_and_restores_momentum():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    x = torch.randn(8, 3, 5, 5) * 2 + torch.arange(8.0)[:, None, None, None]
    recompute_batchnorm(bn, x, CPU, batch_size=4)
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    assert bn.momentum == 0.3
    # a plain momentum update (the bug this replaces) would be far from the mean
    assert (x.mean(dim=(0, 2, 3)) - 0.3 * x[:4].mean(dim=(0, 2, 3))).abs().max() > 0.5


def test_recompute_batchnorm_in_one_batch_gives_the_exact_variance_too():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(6, 3, 4, 4) * torch.tensor([0.5, 1.0, 3.0])[None, :, None, None] + 2.0
    recompute_batchnorm(bn, x, CPU, batch_size=16)
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    var = x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True)
    torch.testing.assert_close(bn.running_var, var, atol=1e-4, rtol=1e-5)
    assert bn.momentum == 0.1


def test_recompute_batchnorm_uses_the_layer_input_and_changes_no_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                          nn.BatchNorm2d(2, momentum=None))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(12, 2, 7, 7) + 1.5
    params = {k: v.clone() for k, v in model.named_parameters()}
    recompute_batchnorm(model, x, CPU, batch_size=4)
    with torch.no_grad():
        conv_out = model[0](x)
        expected1 = conv_out.mean(dim=(0, 2, 3))
        # the second BN sees its input under batch statistics of the first, batch by batch
        second_in = torch.cat([
            model[3](torch.relu(model[1].weight[None, :, None, None]
                                * (c - c.mean(dim=(0, 2, 3), keepdim=True))
                                / torch.sqrt(c.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
                                             + model[1].eps)
                                + model[1].bias[None, :, None, None]))
            for c in conv_out.split(4)
        ])
        expected2 = second_in.mean(dim=(0, 2, 3))
    torch.testing.assert_close(model[1].running_mean, expected1, atol=1e-5, rtol=0)
    torch.testing.assert_close(model[4].running_mean, expected2, atol=1e-5, rtol=0)
    assert model[1].momentum == 0.1 and model[4].momentum is None
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_recompute_batchnorm_without_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    before = state(model)
    recompute_batchnorm(model, torch.randn(4, 1, 8, 8), CPU, batch_size=2)
    assert same_state(before, state(model))


@pytest.mark.parametrize("n", [10, 9])  # batches of 4, 4, 2 and 4, 4, 1 (split evenly)
def test_recompute_batchnorm_mean_is_exact_with_uneven_batches(n):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(n, 3, 5, 5) + torch.arange(float(n))[:, None, None, None]
    recompute_batchnorm(bn, x, CPU, batch_size=4)
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-4, rtol=0)


def test_train_classifier_recomputes_batchnorm_statistics():
    images, labels = square_data(n=16)
    model = tiny_model(0)
    train_classifier(model, images, labels,
                     TrainConfig(epochs=1, batch_size=8, lr=1e-2, seed=0, precise_bn=True), CPU)
    with torch.no_grad():
        conv_out = model.conv(torch.from_numpy(images))
    torch.testing.assert_close(model.bn.running_mean, conv_out.mean(dim=(0, 2, 3)),
                               atol=1e-5, rtol=0)
    assert model.bn.momentum == 0.1


def test_without_precise_bn_the_running_mean_is_the_momentum_average():
    images, labels = square_data(n=16)
    model = tiny_model(0)
    train_classifier(model, images, labels,
                     TrainConfig(epochs=1, batch_size=8, lr=1e-2, seed=0, precise_bn=False), CPU)
    with torch.no_grad():
        conv_out = model.conv(torch.from_numpy(images))
    # two momentum-0.1 updates from zero cannot reach the data mean
    assert (model.bn.running_mean - conv_out.mean(dim=(0, 2, 3))).abs().max() > 1e-3


# ---------------------------------------------------------------- devices


def test_resolve_device_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_a_gpu_is_a_value_error(name):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device(name)
