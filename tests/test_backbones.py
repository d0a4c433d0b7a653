"""The timm backbones: build, target layer, output stride, local weights, seeding."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import wsss_bench
from tests.torch_helpers import target_output
from wsss_bench.contracts import Backbone
from wsss_bench_plugins.backbones import TimmBackbone

pytestmark = pytest.mark.usefixtures("one_thread")


REGISTRY = wsss_bench.load_registry()
BACKBONES = sorted(REGISTRY.backbones)
# the CAM target's stride at output stride 32 (VGG-19: conv5_4, before the last max-pool)
TARGET_STRIDE = {"vgg19": 16}
FIXED_STRIDE = {"vgg19"}  # timm cannot dilate these
STRIDABLE = [n for n in BACKBONES if n not in FIXED_STRIDE]




def test_builtin_backbones_are_registered():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "vgg19"} <= set(BACKBONES)
    assert "timm:" not in BACKBONES  # a family, not a backbone


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_backbone_contract(name, in_chans):
    backbone = REGISTRY.backbones[name]
    assert isinstance(backbone, Backbone)
    torch.manual_seed(0)
    model = backbone.build(in_chans=in_chans, num_classes=2, pretrained=False).eval()
    x = torch.randn(2, in_chans, 64, 64)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    layer = backbone.target_layer(model)
    assert any(layer is m for m in model.modules())
    feat = target_output(backbone, model, x)
    assert feat.ndim == 4 and feat.shape[0] == 2
    assert feat.shape[1] == model.feature_info[-1]["num_chs"]
    stride = TARGET_STRIDE.get(name, 32)
    assert feat.shape[-2:] == (64 // stride, 64 // stride)
    if name.startswith("resnet"):
        assert layer is model.layer4
    if name == "vgg19":  # the ReLU after conv5_4, not timm's last entry (the max-pool after it)
        assert model.feature_info[-1]["module"] == "features.36"
        assert layer is model.features[35] and isinstance(layer, nn.ReLU)
        assert isinstance(model.features[34], nn.Conv2d) and feat.shape[1] == 512
        with torch.no_grad():  # timm's ConvMlp head pools a map under its 7x7 kernel up to 7x7
            assert model(torch.randn(1, in_chans, 32, 32)).shape == (1, 2)
    if in_chans == 1:  # Grad-CAM runs on the target layer
        maps = REGISTRY.cams["gradcam"].cam(model, layer, x[:1], None)
        assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
    wrong = 2 if in_chans == 1 else 1
    with pytest.raises(RuntimeError), torch.no_grad():  # the stem really has in_chans
        model(torch.randn(1, wrong, 64, 64))


@pytest.mark.parametrize("name", STRIDABLE)
def test_output_stride_16_doubles_the_cam_resolution_with_the_same_parameters(name):
    backbone = REGISTRY.backbones[name]
    torch.manual_seed(0)
    m32 = backbone.build(in_chans=1, num_classes=2, pretrained=False).eval()
    torch.manual_seed(0)
    m16 = backbone.build(in_chans=1, num_classes=2, pretrained=False, output_stride=16).eval()
    x = torch.randn(1, 1, 64, 64)
    f32, f16 = target_output(backbone, m32, x), target_output(backbone, m16, x)
    assert f32.shape[-2:] == (2, 2)
    assert f16.shape[-2:] == (4, 4)
    assert f16.shape[1] == f32.shape[1]
    assert sum(p.numel() for p in m16.parameters()) == sum(p.numel() for p in m32.parameters())
    with torch.no_grad():
        assert m16(x).shape == (1, 2)


@pytest.mark.parametrize("name", sorted(FIXED_STRIDE))
@pytest.mark.parametrize("stride", [16, 8])
def test_a_model_that_cannot_dilate_raises_a_value_error(name, stride):
    with pytest.raises(ValueError, match=f"{name} cannot change its output stride to {stride}"):
        REGISTRY.backbones[name].build(in_chans=1, num_classes=2, pretrained=False,
                                       output_stride=stride)


def test_same_seed_gives_identical_initial_weights():
    backbone = REGISTRY.backbones["resnet18"]

    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return backbone.build(in_chans=1, num_classes=2, pretrained=False).state_dict()

    a, b, c = build(3), build(3), build(4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.conv1.weight"], c["layer1.0.conv1.weight"])
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def _imagenet_like_state(seed: int) -> dict[str, torch.Tensor]:
    """A resnet18 state dict as an ImageNet checkpoint has it: 3 channels, 1000 classes."""
    torch.manual_seed(seed)
    state = timm.create_model("resnet18", in_chans=3, num_classes=1000).state_dict()
    with torch.no_grad():  # make BN statistics distinguishable from a fresh init
        for k, v in state.items():
            if k.endswith("running_mean"):
                v.uniform_(-1, 1)
    return {k: v.clone().contiguous() for k, v in state.items()}


def _check_loaded(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key in ["layer1.0.conv1.weight", "layer4.1.bn2.weight", "layer2.0.bn1.running_mean",
                "layer3.0.downsample.0.weight", "bn1.weight"]:
        assert torch.equal(own[key], saved[key]), key
    matching = [k for k in own if own[k].shape == saved[k].shape]
    assert all(torch.equal(own[k], saved[k]) for k in matching)
    # the 3-channel stem is adapted to 1 channel: the sum over its input channels
    assert own["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(own["conv1.weight"],
                               saved["conv1.weight"].sum(dim=1, keepdim=True))
    # the head keeps its own (new) shape and initialisation
    assert own["fc.weight"].shape == (2, 512) and own["fc.bias"].shape == (2,)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("as_path", [False, True])
def test_pretrained_accepts_a_local_pth_file(tmp_path, as_path):
    saved = _imagenet_like_state(seed=11)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(saved, path)
    torch.manual_seed(0)
    model = REGISTRY.backbones["resnet18"].build(
        in_chans=1, num_classes=2, pretrained=path if as_path else str(path))
    _check_loaded(model, saved)


def test_pretrained_accepts_a_checkpoint_with_a_state_dict_key(tmp_path):
    saved = _imagenet_like_state(seed=12)
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": saved, "epoch": 3}, path)
    torch.manual_seed(0)
    model = REGISTRY.backbones["resnet18"].build(in_chans=1, num_classes=2, pretrained=path)
    _check_loaded(model, saved)


def test_pretrained_accepts_a_local_safetensors_file(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    saved = _imagenet_like_state(seed=13)
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(saved, str(path))
    torch.manual_seed(0)
    model = REGISTRY.backbones["resnet18"].build(in_chans=1, num_classes=2, pretrained=str(path))
    _check_loaded(model, saved)


def test_local_weights_differ_from_random_init(tmp_path):
    # guards the tests above: without loading, the same seed gives other weights
    saved = _imagenet_like_state(seed=11)
    torch.manual_seed(0)
    fresh = REGISTRY.backbones["resnet18"].build(in_chans=1, num_classes=2, pretrained=False)
    assert not torch.equal(fresh.state_dict()["layer1.0.conv1.weight"],
                           saved["layer1.0.conv1.weight"])


def test_timm_backbone_is_a_backbone():
    obj = TimmBackbone(name="x", model_name="resnet18", description="d")
    assert isinstance(obj, Backbone)
    model = obj.build(1, 2)
    assert obj.target_layer(model) is model.layer4


def test_three_channel_model_loads_the_stem_unchanged(tmp_path):
    saved = _imagenet_like_state(seed=14)
    path = tmp_path / "rgb.pth"
    torch.save(saved, path)
    model = REGISTRY.backbones["resnet18"].build(in_chans=3, num_classes=2, pretrained=path)
    assert torch.equal(model.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_a_weights_file_that_matches_nothing_is_an_error_naming_it(tmp_path):
    path = tmp_path / "someone-elses-model.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="someone-elses-model.pth.*0 of its 2 tensors"):
        REGISTRY.backbones["resnet18"].build(in_chans=1, num_classes=2, pretrained=path)


@pytest.mark.parametrize("extra, fails", [(0, False), (1, True)])
def test_fewer_than_half_matching_tensors_is_an_error(tmp_path, extra, fails):
    saved = _imagenet_like_state(seed=15)
    kept = {k: saved[k] for k in ["layer1.0.conv1.weight", "layer1.0.bn1.weight",
                                  "layer1.0.bn1.bias", "layer1.0.bn1.running_mean"]}
    junk = {f"junk.{i}": torch.zeros(1) for i in range(len(kept) + extra)}
    path = tmp_path / "half.safetensors"
    pytest.importorskip("safetensors.torch").save_file({**kept, **junk}, str(path))
    build = REGISTRY.backbones["resnet18"].build
    if fails:
        with pytest.raises(ValueError, match=r"half\.safetensors.*4 of its 9 tensors"):
            build(in_chans=1, num_classes=2, pretrained=path)
    else:
        own = build(in_chans=1, num_classes=2, pretrained=path).state_dict()
        assert torch.equal(own["layer1.0.conv1.weight"], kept["layer1.0.conv1.weight"])


def test_a_ddp_checkpoint_with_module_prefixes_loads(tmp_path):
    saved = _imagenet_like_state(seed=16)
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in saved.items()}}, path)
    torch.manual_seed(0)
    _check_loaded(REGISTRY.backbones["resnet18"].build(in_chans=1, num_classes=2,
                                                       pretrained=path), saved)
