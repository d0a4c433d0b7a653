"""The CAM engine and the built-in Grad-CAM: golden values, contract, no side effects."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsss_bench
from tests.torch_helpers import all_hooks, assert_clean
from wsss_bench import testing
from wsss_bench.cam_engine import activations_and_gradients, finish_cam, resolve_targets
from wsss_bench.contracts import Cam
from wsss_bench_plugins.cams import GradCAM

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-Conv-ReLU -> target -> Conv-ReLU -> GAP -> Linear(2).

    The head after the target layer makes the gradient vary over space, so the spatial mean in
    the Grad-CAM weights and the per-sample targets both matter. ``target`` is a Conv (its
    output can be negative, so the ReLU of the CAM matters too).
    """

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.target = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU())
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.target(self.features(x))).mean(dim=(2, 3)))


def small_cnn(seed: int = 4) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    # Non-trivial BatchNorm statistics, so a model switched to train mode would differ.
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    # Make the decision depend on the input and centre it: the fixture images (seed 1) are
    # then predicted as both classes, with a clear margin.
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        logits = model(images(b=8, seed=1))
        diff = (logits[:, 1] - logits[:, 0]).sort().values
        model.fc.bias[1] -= (diff[3] + diff[4]) / 2
    return model


def images(b: int = 4, h: int = 20, w: int = 28, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, h, w, generator=g)


def reference_gradcam(model: SmallCNN, x: torch.Tensor, target: torch.Tensor | None
                      ) -> torch.Tensor:
    """Grad-CAM from the formula, in float64, one sample at a time."""
    m = copy.deepcopy(model).double().eval()
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].double()
        with torch.no_grad():
            a = m.target(m.features(xi))
        a = a.detach().requires_grad_(True)
        logits = m.fc(m.head(a).mean(dim=(2, 3)))
        c = int(logits[0].argmax()) if target is None else int(target[i])
        (g,) = torch.autograd.grad(logits[0, c], a)
        w = g.mean(dim=(2, 3))  # [1,K]
        cam = torch.relu((w[:, :, None, None] * a).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        lo, hi = cam.min(), cam.max()
        out.append(torch.zeros_like(cam) if hi == lo else (cam - lo) / (hi - lo))
    return torch.stack(out)






# ---------------------------------------------------------------- golden values


@pytest.mark.parametrize("target", [None, [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
def test_gradcam_matches_a_float64_reference_from_the_formula(target):
    model = small_cnn()
    x = images()
    t = None if target is None else torch.tensor(target)
    ref = reference_gradcam(model, x, t)
    # the fixture is not degenerate: every reference map has structure
    assert all(float(r.max()) == 1.0 for r in ref.detach())
    got = GradCAM().cam(model, model.target, x, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


def test_the_two_classes_give_different_maps():
    # guards the golden test: the target really changes the answer on this model
    model = small_cnn()
    x = images()
    zero = GradCAM().cam(model, model.target, x, torch.zeros(4, dtype=torch.long))
    one = GradCAM().cam(model, model.target, x, torch.ones(4, dtype=torch.long))
    assert (zero - one).abs().amax(dim=(1, 2)).min() > 0.05


def test_batched_result_equals_per_sample_results_with_mixed_targets():
    model = small_cnn()
    x = images()
    target = torch.tensor([0, 1, 1, 0])
    batched = GradCAM().cam(model, model.target, x, target)
    single = torch.cat([
        GradCAM().cam(model, model.target, x[i : i + 1], target[i : i + 1]) for i in range(4)
    ])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)


def test_target_none_is_each_samples_predicted_class():
    model = small_cnn()
    x = images(b=8)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    assert 0 < int(predicted.sum()) < 8, "fixture must predict both classes"
    torch.testing.assert_close(GradCAM().cam(model, model.target, x, None),
                               GradCAM().cam(model, model.target, x, predicted))
    cap = activations_and_gradients(model, model.target, x, None)
    assert torch.equal(cap.targets, predicted)


def test_resolve_targets():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.7]])
    assert resolve_targets(logits, None).tolist() == [1, 0, 1]
    assert resolve_targets(logits, torch.ones(3, dtype=torch.long)).tolist() == [1, 1, 1]
    assert resolve_targets(logits, torch.tensor([0, 1, 0])).tolist() == [0, 1, 0]
    assert resolve_targets(logits, torch.tensor([0, 1, 0])).dtype == torch.long
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        resolve_targets(logits, torch.tensor([0, 1]))


def test_capture_gradients_are_per_sample_target_logit_gradients():
    model = small_cnn()
    x = images()
    target = torch.tensor([1, 0, 0, 1])
    cap = activations_and_gradients(model, model.target, x, target)
    assert cap.activations.shape == cap.gradients.shape == (4, 8, 10, 14)
    assert cap.logits.shape == (4, 2)
    for i in range(4):
        a = model.target(model.features(x[i : i + 1])).detach().requires_grad_(True)
        y = model.fc(model.head(a).mean(dim=(2, 3)))[0, int(target[i])]
        (g,) = torch.autograd.grad(y, a)
        torch.testing.assert_close(cap.gradients[i : i + 1], g)
        torch.testing.assert_close(cap.activations[i : i + 1], a.detach())
    assert not cap.activations.requires_grad and not cap.gradients.requires_grad


# ---------------------------------------------------------------- shape and range


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 64), (20, 28)])
def test_output_is_float_at_input_resolution_in_unit_range(h, w):
    model = small_cnn()
    x = images(b=3, h=h, w=w)
    cam = GradCAM().cam(model, model.target, x)
    assert cam.shape == (3, h, w)
    assert cam.dtype == torch.float32
    assert torch.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1
    for m in cam:
        assert float(m.max()) == 1.0 and float(m.min()) == 0.0


def test_finish_cam_relu_upsample_minmax():
    weighted = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]],
                             [[-1.0, -2.0], [-3.0, -0.5]]])
    out = finish_cam(weighted, (2, 2))
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # flat positive map -> zeros, not NaN/ones
    assert torch.equal(out[2], torch.zeros(2, 2))  # all negative -> ReLU -> flat -> zeros
    up = finish_cam(weighted[:1], (4, 6))
    assert up.shape == (1, 4, 6)
    assert float(up.max()) == 1.0 and float(up.min()) == 0.0


def _flat_model() -> SmallCNN:
    model = small_cnn()
    with torch.no_grad():  # the target layer outputs its bias only: a constant activation
        model.target.weight.zero_()
        model.target.bias.fill_(0.3)
    return model


@pytest.mark.parametrize("kind", ["constant-activation", "zero-activation"])
def test_flat_map_is_all_zeros_never_nan(kind):
    model = _flat_model()
    if kind == "zero-activation":
        with torch.no_grad():
            model.target.bias.zero_()
    x = torch.full((2, 1, 16, 16), 0.7)
    cam = GradCAM().cam(model, model.target, x, torch.tensor([0, 1]))
    assert cam.shape == (2, 16, 16)
    assert not torch.isnan(cam).any()
    assert torch.equal(cam, torch.zeros_like(cam))


# ---------------------------------------------------------------- side effects


def test_no_hooks_no_grads_and_parameters_unchanged():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    requires = [p.requires_grad for p in model.parameters()]
    GradCAM().cam(model, model.target, images(), torch.tensor([0, 1, 1, 0]))
    assert_clean(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == requires
    assert not model.training and not any(m.training for m in model.modules())


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_grad_mode_is_restored_and_result_is_the_same(grad_enabled):
    model = small_cnn()
    x = images()
    expected = GradCAM().cam(model, model.target, x)
    with torch.set_grad_enabled(grad_enabled):
        got = GradCAM().cam(model, model.target, x)
        assert torch.is_grad_enabled() is grad_enabled
    assert torch.is_grad_enabled()
    torch.testing.assert_close(got, expected)
    assert_clean(model)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom after the target layer")


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_cleanup_when_the_model_raises_after_the_target_layer(grad_enabled):
    model = small_cnn()
    model.head = nn.Sequential(nn.ReLU(), Boom())
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(RuntimeError, match="boom after the target layer"):
            GradCAM().cam(model, model.target, images())
        assert torch.is_grad_enabled() is grad_enabled
    assert_clean(model)
    # the model still works afterwards, without stray hooks changing its output
    model.head = small_cnn().head
    with torch.no_grad():
        out = model(images())
    assert out.shape == (4, 2)


def test_target_layer_not_in_the_forward_pass_is_a_clear_error():
    model = small_cnn()
    stranger = nn.Conv2d(6, 8, 3)
    with pytest.raises(RuntimeError, match="target layer was not called"):
        activations_and_gradients(model, stranger, images())
    with pytest.raises(RuntimeError, match="target layer was not called"):
        GradCAM().cam(model, stranger, images())
    assert all_hooks(stranger) == []
    assert_clean(model)
    assert torch.is_grad_enabled()


class InplaceAfterTarget(nn.Module):
    """The target layer's output is modified in place next, like torchvision's
    ``out = self.bn2(out); out += identity`` or a Conv followed by ``ReLU(inplace=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.target = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.target(torch.relu(self.conv(x)))).mean(dim=(2, 3)))


def test_target_layer_followed_by_an_inplace_op():
    torch.manual_seed(0)
    model = InplaceAfterTarget().eval()
    x = images(b=2, h=16, w=16)
    cam = GradCAM().cam(model, model.target, x, torch.tensor([0, 1]))
    # reference: the same network with an out-of-place ReLU
    plain = copy.deepcopy(model)
    plain.act = nn.ReLU()
    torch.testing.assert_close(cam, GradCAM().cam(plain, plain.target, x, torch.tensor([0, 1])))


# ---------------------------------------------------------------- against pytorch-grad-cam


def test_gradcam_agrees_with_pytorch_grad_cam_on_timm_resnet18():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", in_chans=1, num_classes=2).eval()
    # 64x64 input: layer4 is 2x2, so min-max before (theirs) and after (ours) the bilinear
    # upsampling coincide (every feature pixel is reached exactly in a clamped corner).
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [1, 0, 1]
    ours = GradCAM().cam(model, model.layer4, x, torch.tensor(targets))
    assert_clean(model)
    other = copy.deepcopy(model)  # pytorch-grad-cam fills parameter grads
    with pgc.GradCAM(model=other, target_layers=[other.layer4]) as ref_cam:
        ref = ref_cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ref.shape == (3, 64, 64)
    assert np.ptp(ref, axis=(1, 2)).min() > 0.5  # not flat maps
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- contract over the registry


def test_gradcam_satisfies_the_cam_protocol():
    obj = GradCAM()
    assert isinstance(obj, Cam)
    assert obj.name == "gradcam"
    assert "gradcam" in wsss_bench.load_registry().cams
    assert isinstance(wsss_bench.load_registry().cams["gradcam"], GradCAM)


REGISTERED_CAMS = sorted(wsss_bench.load_registry().cams)


@pytest.mark.parametrize("name", REGISTERED_CAMS)
def test_cam_contract(name):
    check_cam_contract(wsss_bench.load_registry().cams[name])


def test_cam_contract_holds_for_third_party_cams_installed_at_test_time(use_dist):
    use_dist("example")  # a separately installed distribution, found by its entry point
    registry = wsss_bench.load_registry()
    third_party = [e for e in registry.entries()
                   if e.kind == "cams" and e.source != "wsss-bench"]
    assert [e.name for e in third_party] == ["activation-mean"]
    for entry in third_party:
        check_cam_contract(entry.obj)


def check_cam_contract(method) -> None:
    """The CAM contract of CONTRIBUTING.md, as the shipped kit checks it (every target the core
    passes: None, all ones, mixed)."""
    assert isinstance(method, Cam)
    testing.check_cam(method)


def test_only_the_original_cam_refuses_the_kits_spatial_head():
    """The kit lets a method refuse the spatial head with a ValueError; of the built-ins only
    `cam` (defined for pooling + linear heads alone) may use that."""
    model = testing.tiny_net()
    x = torch.rand(2, 1, 20, 28, generator=torch.Generator().manual_seed(1))
    refusing = set()
    for name, method in wsss_bench.load_registry().cams.items():
        try:
            method.cam(model, model.target, x, None)
        except ValueError:
            refusing.add(name)
    assert refusing == {"cam"}


class _RefusesDirtily:
    """A CAM that refuses the spatial head but leaves its hook behind (and Grad-CAM else)."""

    name, description = "dirty", "refuses the spatial head, leaving a hook"

    def cam(self, model, target_layer, images, target=None):
        if not isinstance(model.head, nn.Identity):
            target_layer.register_forward_hook(lambda *a: None)
            raise ValueError("spatial heads are not supported")
        return GradCAM().cam(model, target_layer, images, target)


class _RefusesInManyLines(_RefusesDirtily):
    name = "wordy"

    def cam(self, model, target_layer, images, target=None):
        if not isinstance(model.head, nn.Identity):
            raise ValueError("spatial heads\nare not supported")
        return GradCAM().cam(model, target_layer, images, target)


@pytest.mark.parametrize("broken,needle", [(_RefusesDirtily(), "left hooks"),
                                           (_RefusesInManyLines(), "one-line message")])
def test_a_refusal_must_be_clean_and_one_line(broken, needle):
    with pytest.raises(AssertionError, match=needle):
        testing.check_cam(broken)
