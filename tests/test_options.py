"""Plugin options from the command line (``--option PLUGIN.KEY=VALUE``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wsss_bench import options
from wsss_bench.errors import UsageError
from wsss_bench_plugins.phantom import Phantom


@dataclass(frozen=True)
class Thing:
    name: str = "thing"
    description: str = "test object"
    count: int = 1
    scale: float = 0.5
    enabled: bool = False
    label: str = "a"


def test_parse_splits_at_the_last_dot_before_equals():
    assert options.parse("timm:resnet.v1.size=3") == ("timm:resnet.v1", "size", "3")
    assert options.parse("phantom.seed=7") == ("phantom", "seed", "7")
    for bad in ("phantom", "phantom=3", ".x=1", "phantom.=1"):
        with pytest.raises(UsageError, match="PLUGIN.KEY=VALUE"):
            options.parse(bad)


def test_configure_converts_to_each_fields_type():
    thing = options.configure(Thing(), {"count": "4", "scale": "2", "enabled": "yes",
                                        "label": "b"})
    assert thing == Thing(count=4, scale=2.0, enabled=True, label="b")
    assert isinstance(thing.scale, float)


def test_configure_rejects_unknown_keys_bad_values_and_fixed_fields():
    with pytest.raises(UsageError, match="no option 'colour'.*count, enabled, label, scale"):
        options.configure(Thing(), {"colour": "red"})
    with pytest.raises(UsageError, match="expected a int"):
        options.configure(Thing(), {"count": "many"})
    with pytest.raises(UsageError, match="expected true or false"):
        options.configure(Thing(), {"enabled": "maybe"})
    with pytest.raises(UsageError, match="no option 'name'"):
        options.configure(Thing(), {"name": "other"})


def test_configure_surfaces_the_plugins_own_validation():
    with pytest.raises(UsageError, match="size"):
        options.configure(Phantom(), {"size": "8"})
    assert options.configure(Phantom(), {"n_cases": "5"}).n_cases == 5


def test_fixed_fields_are_not_options():
    from wsss_bench_plugins.backbones import TimmBackbone

    backbone = TimmBackbone(name="resnet18", model_name="resnet18", description="d")
    assert "model_name" not in options.option_fields(backbone)
    with pytest.raises(UsageError, match="no option 'model_name'"):
        options.configure(backbone, {"model_name": "resnet50"})
