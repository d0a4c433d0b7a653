"""Backbone families: ``timm:<model_name>`` and the generic registry mechanism behind it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import timm
import torch
from torch import nn

import wsss_bench
from tests.torch_helpers import target_output
from wsss_bench import cli
from wsss_bench.contracts import Backbone
from wsss_bench.errors import PluginError, UsageError
from wsss_bench.registry import load_registry, resolve
from wsss_bench_plugins import backbones as timm_plugin

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = wsss_bench.load_registry()




# --- timm: ---------------------------------------------------------------------------------

def test_timm_resnet18_resolves_and_targets_layer4():
    table = load_registry().backbones
    entry = table.get_entry("timm:resnet18")
    assert entry.name == "timm:resnet18" and entry.source == "wsss-bench"
    assert entry.obj.model_name == "resnet18" and isinstance(entry.obj, Backbone)
    assert table.get_entry("timm:resnet18") is entry  # cached
    assert "timm:resnet18" in table and table["timm:resnet18"] is entry.obj
    assert "timm:resnet18" not in list(table) and "timm:" not in list(table)
    model = entry.obj.build(in_chans=1, num_classes=2, pretrained=False).eval()
    assert entry.obj.target_layer(model) is model.layer4
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_resolve_helper_goes_through_the_family():
    objs = resolve(REGISTRY, "backbones", ["resnet18", "timm:convnext_atto"])
    assert objs[0] is REGISTRY.backbones["resnet18"]
    assert objs[1].name == "timm:convnext_atto" and objs[1].model_name == "convnext_atto"


def test_a_tiny_timm_model_targets_its_last_feature_stage():
    backbone = REGISTRY.backbones["timm:mobilenetv3_small_050"]
    torch.manual_seed(0)
    model = backbone.build(in_chans=1, num_classes=2, pretrained=False).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 2)
    info = model.feature_info[-1]
    assert backbone.target_layer(model) is model.get_submodule(info["module"])
    feat = target_output(backbone, model, x)
    assert feat.shape == (2, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
    with pytest.raises(RuntimeError), torch.no_grad():  # the stem really has one channel
        model(torch.randn(1, 3, 64, 64))


class PoolLast(nn.Module):
    """Lists a bare pooling layer as its last feature stage, as timm's VGG does."""

    def __init__(self, pool_chs: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.feature_info = [{"module": "features.1", "num_chs": 4, "reduction": 1},
                             {"module": "features.2", "num_chs": pool_chs, "reduction": 2}]


def test_a_trailing_pool_is_skipped_for_the_conv_output_before_it():
    obj = timm_plugin.TimmBackbone(name="x", model_name="x", description="d")
    model = PoolLast()
    assert obj.target_layer(model) is model.features[1]
    odd = PoolLast(pool_chs=8)  # not the same stage: keep timm's choice
    assert obj.target_layer(odd) is odd.features[2]
    plain = timm.create_model("resnet18", num_classes=2)
    assert obj.target_layer(plain) is plain.layer4


def test_unknown_timm_model_is_a_usage_error_with_suggestions():
    with pytest.raises(UsageError, match=r"unknown timm model 'resnt18'.*did you mean resnet18"):
        REGISTRY.backbones.get_entry("timm:resnt18")
    with pytest.raises(UsageError, match=r"'not_a_model'.*timm\.list_models\(\)"):
        resolve(REGISTRY, "backbones", ["timm:not_a_model"])
    assert "timm:not_a_model" not in REGISTRY.backbones
    with pytest.raises(KeyError):
        REGISTRY.backbones["timm:not_a_model"]
    with pytest.raises(UsageError, match="'timm:' is a family"):
        REGISTRY.backbones.get_entry("timm:")


def test_unknown_plain_name_lists_the_family():
    with pytest.raises(UsageError, match=r"unknown backbone 'resnet999'.*resnet34.*timm:<name>"):
        REGISTRY.backbones.get_entry("resnet999")


def test_plugins_json_lists_the_timm_family(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    (row,) = [r for r in rows if r["name"] == "timm:"]
    assert row["kind"] == "backbones" and row["source"] == "wsss-bench"
    assert "any timm model" in row["description"] and "timm:<model_name>" in row["description"]


# --- output stride -------------------------------------------------------------------------

def test_a_timm_model_without_output_stride_raises_a_value_error():
    backbone = REGISTRY.backbones["timm:mobilenetv3_small_050"]
    with pytest.raises(ValueError, match="mobilenetv3_small_050 cannot change its output stride"):
        backbone.build(in_chans=1, num_classes=2, pretrained=False, output_stride=16)


def test_timm_convnext_dilates():
    backbone = REGISTRY.backbones["timm:convnext_atto"]
    model = backbone.build(in_chans=1, num_classes=2, pretrained=False, output_stride=16).eval()
    assert target_output(backbone, model, torch.randn(1, 1, 64, 64)).shape[-2:] == (4, 4)


def _fake_create(real, *, consume: bool = False, ignore: bool = False, error=None):
    def create(name: str, **kwargs):
        if "output_stride" in kwargs:
            if consume:
                torch.randn(1000)  # a model that fails half-built has drawn random numbers
            if error is not None:
                raise error
            if ignore:
                kwargs.pop("output_stride")
        return real(name, **kwargs)
    return create


def test_a_failed_strided_build_leaves_the_rng_as_it_was(monkeypatch):
    backbone = timm_plugin.TimmBackbone(name="x", model_name="resnet18", description="d")
    monkeypatch.setattr(timm, "create_model",
                        _fake_create(timm.create_model, consume=True, error=AssertionError()))
    torch.manual_seed(5)
    with pytest.raises(ValueError, match="resnet18 cannot change its output stride to 8"):
        backbone.build(1, 2, output_stride=8)
    after_failure = backbone.build(1, 2).state_dict()
    torch.manual_seed(5)
    direct = backbone.build(1, 2).state_dict()
    assert all(torch.equal(after_failure[k], direct[k]) for k in direct)


def test_a_silently_ignored_output_stride_is_detected(monkeypatch):
    backbone = timm_plugin.TimmBackbone(name="x", model_name="resnet18", description="d")
    monkeypatch.setattr(timm, "create_model", _fake_create(timm.create_model, ignore=True))
    with pytest.raises(ValueError, match="cannot change its output stride.*stays at stride 32"):
        backbone.build(1, 2, output_stride=16)


def test_an_unrelated_type_error_is_not_blamed_on_the_stride(monkeypatch):
    backbone = timm_plugin.TimmBackbone(name="x", model_name="resnet18", description="d")
    monkeypatch.setattr(timm, "create_model",
                        _fake_create(timm.create_model, error=TypeError("bad in_chans")))
    with pytest.raises(TypeError, match="bad in_chans"):
        backbone.build(1, 2, output_stride=16)


# --- the generic mechanism -----------------------------------------------------------------

@dataclass(frozen=True)
class Toy:
    name: str
    description: str = "a toy backbone"
    model_name: ClassVar[str] = "toy"  # declared backbone attributes
    output_strides: ClassVar[tuple[int, ...]] = (32,)


@dataclass(frozen=True)
class ToyFamily:
    name: str = "toy:"
    description: str = "toy:<n>"
    misname: bool = False

    def resolve(self, suffix: str) -> Toy:
        if not suffix.isdigit():
            raise ValueError(f"{suffix!r} is not a number")
        return Toy(name="wrong" if self.misname else f"{self.name}{suffix}")


def _plugin(*objs: object, hook: str = "register_backbones") -> object:
    def register_all(register) -> None:
        for obj in objs:
            register(obj)

    register_all.__name__ = hook
    plugin = type("Plugin", (), {hook: staticmethod(wsss_bench.hookimpl(register_all))})
    return plugin()


def test_a_family_from_a_test_plugin_resolves():
    registry = load_registry(extra_plugins={"toys": _plugin(ToyFamily())})
    entry = registry.backbones.get_entry("toy:7")
    assert entry.obj == Toy(name="toy:7")
    assert (entry.plugin, entry.source, entry.kind) == ("toys", "<extra>", "backbones")
    assert resolve(registry, "backbones", ["toy:7"])[0] is entry.obj
    assert [(e.kind, e.name) for e in registry.entries() if e.name.startswith("toy")] == [
        ("backbones", "toy:")]
    with pytest.raises(UsageError, match=r"unknown backbone 'toy:x': 'x' is not a number"):
        registry.backbones.get_entry("toy:x")


def test_the_longest_family_prefix_wins_and_plain_names_come_first():
    plugin = _plugin(ToyFamily(), ToyFamily(name="toy:big:", description="big"), Toy("toy:1"))
    table = load_registry(extra_plugins={"toys": plugin}).backbones
    assert table["toy:big:3"] == Toy(name="toy:big:3")
    assert table.get_entry("toy:1").obj.description == "a toy backbone"  # the registered one
    assert table.get_entry("toy:2").obj.description == "a toy backbone"


def test_families_work_for_any_kind():
    plugin = _plugin(ToyFamily(name="mycam:"), hook="register_cams")
    registry = load_registry(extra_plugins={"toycams": plugin})
    assert registry.cams["mycam:3"] == Toy(name="mycam:3")
    assert registry.cams.get_entry("mycam:3").kind == "cams"
    assert "mycam:3" not in registry.backbones


def test_a_family_that_misnames_its_member_is_a_plugin_error():
    registry = load_registry(extra_plugins={"toys": _plugin(ToyFamily(misname=True))})
    with pytest.raises(PluginError, match="named 'wrong'"):
        registry.backbones.get_entry("toy:1")
    with pytest.raises(PluginError):
        registry.backbones["toy:1"]


def test_a_family_without_resolve_or_a_duplicate_family_is_a_plugin_error():
    with pytest.raises(PluginError, match="without a `resolve"):
        load_registry(extra_plugins={"toys": _plugin(Toy(name="toy:"))})
    with pytest.raises(PluginError, match="duplicate backbone name 'toy:'"):
        load_registry(extra_plugins={"toys": _plugin(ToyFamily(), ToyFamily())})
    with pytest.raises(PluginError, match="duplicate backbone name 'timm:'"):
        load_registry(extra_plugins={"toys": _plugin(ToyFamily(name="timm:"))})


@dataclass(frozen=True)
class BareToy:
    name: str
    description: str = "a toy backbone without its declared attributes"


@dataclass(frozen=True)
class BareFamily(ToyFamily):
    def resolve(self, suffix: str) -> BareToy:
        return BareToy(name=f"{self.name}{suffix}")


def test_a_family_member_without_declared_attributes_is_a_plugin_error():
    registry = load_registry(extra_plugins={"toys": _plugin(BareFamily())})
    with pytest.raises(PluginError, match=r"plugin 'toys' \(<extra>\) registered backbone "
                                          r"'toy:1' \(BareToy\).*`model_name`"):
        registry.backbones.get_entry("toy:1")
