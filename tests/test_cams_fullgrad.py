"""FullGrad: a float64 reference from the paper's formula, the completeness of the full-gradient
decomposition, pytorch-grad-cam's FullGrad (and its ε), batching, cleanup, unsupported models.

Randomly initialised timm models have BatchNorm γ = 1, β = 0, μ = 0, σ² = 1 and zero conv
biases, so every bias term would vanish: :func:`randomise_biases` gives them non-trivial values.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_helpers import all_hooks, assert_clean
from wsss_bench_plugins.cams_fullgrad import FullGrad, bias_layers, full_gradients

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")


# ================================================================ fixtures


def randomise_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters and conv biases; eval mode."""
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (high - low) + low)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                fill(m.running_mean, -0.2, 0.2)
                fill(m.running_var, 0.5, 2.0)
                fill(m.weight, 0.5, 1.5)
                fill(m.bias, -0.2, 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                fill(m.bias, -0.1, 0.1)
    return model.eval()


@functools.cache
def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomise_biases(timm.create_model("resnet18", in_chans=1, num_classes=2))


def resnet18() -> nn.Module:
    """A seeded timm resnet18 (1 channel in, 2 classes) with random biases, in eval mode."""
    return copy.deepcopy(_resnet18())


def small_vgg(norm: bool = False) -> nn.Module:
    """timm's VGG class (Conv2d with biases, ConvMlp head of 1x1 maps) at a small width."""
    from timm.models.vgg import VGG

    torch.manual_seed(0)
    model = VGG([8, "M", 16, "M", 32, 32, "M", 32, "M"], num_classes=2, in_chans=1,
                mlp_ratio=1 / 64, norm_layer=nn.BatchNorm2d if norm else None)
    return randomise_biases(model)


def scale_logits(model: nn.Module, head: nn.Linear, power: int) -> nn.Module:
    """A copy whose logits are multiplied by 2**power (exact in floating point)."""
    other = copy.deepcopy(model)
    fc = other.get_submodule(next(n for n, m in model.named_modules() if m is head))
    with torch.no_grad():
        fc.weight.mul_(2.0**power)
        fc.bias.mul_(2.0**power)
    return other


def images(b: int = 3, size: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ================================================================ the paper's formula, float64


def reference_fullgrad(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """S = ψ(∇_x f ⊙ x) + Σ_l Σ_c ψ(∇_{z_l} f ⊙ b_l)_c, ψ = upsample ∘ rescale ∘ abs, per
    channel, then min-max; float64, one sample at a time. The bias-gradients come from tensor
    hooks (the gradient w.r.t. each output as the layer produced it), not from the plugin."""
    m = copy.deepcopy(model).double().eval()
    layers = [mod for mod in m.modules()
              if (type(mod) is nn.Conv2d and mod.bias is not None) or type(mod) is nn.BatchNorm2d]

    def bias_of(mod: nn.Module) -> torch.Tensor:
        if isinstance(mod, nn.BatchNorm2d):
            return mod.bias - mod.running_mean * mod.weight / torch.sqrt(mod.running_var
                                                                          + mod.eps)
        return mod.bias

    def psi(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # [K,h,w] -> [K,H,W]
        t = t.abs()
        lo = t.amin(dim=(1, 2), keepdim=True)
        span = t.amax(dim=(1, 2), keepdim=True) - lo
        r = torch.where(span > 0, (t - lo) / span, 0.0)  # each channel on its own
        return F.interpolate(r[None], size=size, mode="bilinear", align_corners=False)[0]

    maps = []
    for i, c in enumerate(targets):
        xi = x[i : i + 1].double().requires_grad_(True)
        grads: list[tuple[nn.Module, torch.Tensor]] = []

        def keep(mod: nn.Module, _inputs: object, out: torch.Tensor,
                 grads: list[tuple[nn.Module, torch.Tensor]] = grads) -> None:
            out.register_hook(lambda grad: grads.append((mod, grad)))

        handles = [layer.register_forward_hook(keep) for layer in layers]
        try:
            (gx,) = torch.autograd.grad(m(xi)[0, c], xi)
        finally:
            for h in handles:
                h.remove()
        size = tuple(x.shape[-2:])
        s = psi((gx * xi)[0].detach(), size).sum(0)
        for mod, g in grads:
            s = s + psi((g[0] * bias_of(mod)[:, None, None]).detach(), size).sum(0)
        lo, hi = s.min(), s.max()
        maps.append(torch.zeros_like(s) if hi == lo else (s - lo) / (hi - lo))
    return torch.stack(maps)


def test_matches_a_float64_reference_from_the_paper_on_resnet18():
    model, x, targets = resnet18(), images(), [1, 0, 1]
    ours = FullGrad().cam(model, model.layer4, x, torch.tensor(targets))
    ref = reference_fullgrad(model, x, targets)
    assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32)
    assert all(float(r.max()) == 1.0 for r in ref)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    # the bias terms matter: the input-gradient term alone is a different map
    dec = full_gradients(model, x, torch.tensor(targets))
    alone = (dec.input_gradient * x).abs()[:, 0]
    lo, hi = alone.amin(dim=(1, 2), keepdim=True), alone.amax(dim=(1, 2), keepdim=True)
    assert ((alone - lo) / (hi - lo) - ours).abs().max() > 0.3
    # and so does the target class
    other = FullGrad().cam(model, None, x, 1 - torch.tensor(targets))
    assert (other - ours).abs().amax(dim=(1, 2)).min() > 0.03


def test_completeness_of_the_decomposition_on_resnet18():
    """f_c(x) = ∇_x f_c · x + Σ_l ⟨∇_{z_l} f_c, b_l⟩ + fc bias (the paper's Eq. 2): ReLU,
    max-pool and average pooling are piecewise linear, so only the biases are missing from the
    input-gradient. Gradients taken after the in-place ReLUs would break it."""
    model, x = resnet18(), images()
    targets = torch.tensor([1, 0, 1])
    dec = full_gradients(model, x, targets)
    assert len(dec.bias_terms) == 20  # every BatchNorm2d of resnet18; its convs have no bias
    total = (dec.input_gradient.double() * x.double()).sum(dim=(1, 2, 3))
    for bias, grad in dec.bias_terms:
        total += (grad.double() * bias.double()[None, :, None, None]).sum(dim=(1, 2, 3))
    total += model.fc.bias.detach().double()[targets]
    with torch.no_grad():
        logits = model(x).double().gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dec.logits.double().gather(1, targets[:, None])[:, 0], logits)


# ================================================================ pytorch-grad-cam


def peer_fullgrad(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    other = copy.deepcopy(model)  # pytorch-grad-cam fills parameter grads
    with pgc.FullGrad(model=other, target_layers=[]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("arch", ["resnet18", "vgg"])
def test_agrees_with_pytorch_grad_cam(arch):
    """Same per-channel ψ (rescale, then bilinear resize with half-pixel centres) and the same
    BatchNorm bias. The logits are scaled by 2**12 (ours is exactly scale-invariant) so that
    pytorch-grad-cam's ε = 1e-7 in its rescale is negligible; see the next test."""
    base = resnet18() if arch == "resnet18" else small_vgg()
    head = base.fc if arch == "resnet18" else base.head.fc
    model, x, targets = scale_logits(base, head, 12), images(), [1, 0, 1]
    ours = FullGrad().cam(model, None, x, torch.tensor(targets))
    assert_clean(model)
    ref = peer_fullgrad(model, x, targets)
    assert ref.shape == (3, 32, 32)
    assert np.ptp(ref, axis=(1, 2)).min() > 0.99
    assert np.abs(ours.numpy() - ref).max() <= 1e-4
    assert torch.equal(ours, FullGrad().cam(base, None, x, torch.tensor(targets)))


@pytest.mark.filterwarnings("ignore")
def test_pytorch_grad_cam_epsilon_makes_its_map_depend_on_the_logit_scale():
    """pytorch-grad-cam rescales each channel as (t - min) / (1e-7 + max(t - min)): channels
    whose bias-gradient spans less than about 1e-6 (common: sparse gradients) are damped, so
    its map changes when the logits are scaled. The paper's rescale has no ε; ours is
    bit-identical at every scale."""
    base, x, targets = resnet18(), images(), [1, 0, 1]
    small = scale_logits(base, base.fc, -10)
    ours = FullGrad().cam(small, None, x, torch.tensor(targets))
    # bit-identical to the unscaled map, which matches the float64 reference (test above)
    assert torch.equal(ours, FullGrad().cam(base, None, x, torch.tensor(targets)))
    assert np.abs(peer_fullgrad(small, x, targets) - ours.numpy()).max() > 0.01


# ================================================================ batching, targets, cleanup


def test_batched_equals_per_sample_with_mixed_targets_and_none_is_predicted():
    model, x = resnet18(), images(b=4)
    target = torch.tensor([0, 1, 1, 0])
    batched = FullGrad().cam(model, None, x, target)
    single = torch.cat([FullGrad().cam(model, None, x[i : i + 1], target[i : i + 1])
                        for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    torch.testing.assert_close(FullGrad().cam(model, None, x, None),
                               FullGrad().cam(model, None, x, predicted))


def test_vgg_with_batchnorm_matches_the_reference():
    model, x, targets = small_vgg(norm=True), images(b=2), [0, 1]
    torch.testing.assert_close(FullGrad().cam(model, None, x, torch.tensor(targets)).double(),
                               reference_fullgrad(model, x, targets), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["vgg19", "resnet50"])
def test_the_built_in_backbones_are_supported(name):
    with torch.device("meta"):  # structure only: no weights, no memory
        model = timm.create_model(name, in_chans=1, num_classes=2).eval()
    layers = bias_layers(model)
    if name == "vgg19":  # 16 convs and the two convs of the ConvMlp head
        assert len(layers) == 18 and all(type(m) is nn.Conv2d for m in layers)
    else:
        assert len(layers) == 53 and all(type(m) is nn.BatchNorm2d for m in layers)


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_no_hooks_no_grads_parameters_and_grad_mode_unchanged(grad_enabled):
    model, x = resnet18(), images(b=2)
    before = copy.deepcopy(model.state_dict())
    expected = FullGrad().cam(model, None, x)
    with torch.set_grad_enabled(grad_enabled):
        got = FullGrad().cam(model, model.layer4, x)
        assert torch.is_grad_enabled() is grad_enabled
    torch.testing.assert_close(got, expected)
    assert_clean(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not x.requires_grad


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_hooks_are_removed_when_the_model_raises():
    model = resnet18()
    model.global_pool = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        FullGrad().cam(model, None, images(b=2))
    assert_clean(model)
    assert torch.is_grad_enabled()


# ================================================================ unsupported models


def one_line_error(model: nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(ValueError) as info:
        FullGrad().cam(model, None, x)
    assert_clean(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("fullgrad cannot handle ")
    return message


def test_vit_is_a_clear_error_naming_architecture_and_layer_type():
    model = timm.create_model("test_vit", in_chans=1, num_classes=2).eval()
    message = one_line_error(model, torch.zeros(1, 1, 64, 64))
    assert "test_vit" in message and "LayerNorm" in message


class TokenMixer(nn.Module):
    """Conv stem, then a Linear on tokens [B,N,C]: a bias added at every spatial position."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("case", ["no-bias", "train-mode", "linear-tokens"])
def test_unsupported_models_are_clear_errors(case):
    x = images(b=2, size=16)
    if case == "no-bias":
        model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2, bias=False))
        expected = ("Sequential", "no layer with a bias")
    elif case == "train-mode":
        model = resnet18().train()
        expected = ("resnet18", "BatchNorm2d", "eval")
    else:
        model = TokenMixer().eval()
        expected = ("TokenMixer", "Linear", "'mix'")
    message = one_line_error(model, x)
    assert all(word in message for word in expected), message
    assert all_hooks(model) == []


def test_timm_batchnorm_act_counts_its_bias_before_the_activation():
    """timm's BatchNormAct2d (test_byobnet, EfficientNets): its term is the gradient w.r.t. the
    normalised output before the activation, times β − μ·γ/√(σ²+ε) — the same as a plain
    BatchNorm2d followed by the same activation."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    fused = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), BatchNormAct2d(4),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        bn = fused[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    plain = nn.Sequential(fused[0], nn.BatchNorm2d(4), nn.ReLU(), fused[2], fused[3],
                          fused[4]).eval()
    plain[1].load_state_dict(bn.state_dict())
    x = images(b=3, size=16)
    assert [type(m) for m in bias_layers(fused)] == [BatchNormAct2d]
    a, b = full_gradients(fused, x), full_gradients(plain, x)
    [(bias_a, grad_a)], [(bias_b, grad_b)] = a.bias_terms, b.bias_terms
    torch.testing.assert_close(bias_a, bias_b)
    torch.testing.assert_close(grad_a, grad_b)
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(FullGrad().cam(fused, fused[0], x),
                               FullGrad().cam(plain, plain[0], x))
    assert all_hooks(fused) == []
