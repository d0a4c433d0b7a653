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


# --- help texts and which fields are options --------------------------------------------------

@dataclass(frozen=True)
class Helped:
    name: str = "helped"
    description: str = "test object with documented options"
    size: int = options.option(64, "slice side in pixels")
    tags: tuple = options.option(default_factory=lambda: ("a", "b"), help="labels, in order")


def test_option_declares_a_default_and_a_one_line_help():
    f = options.option_fields(Helped())
    assert options.help_text(f["size"]) == "slice side in pixels"
    assert Helped().size == 64 and Helped().tags == ("a", "b")
    assert options.configure(Helped(), {"size": "96"}).size == 96
    with pytest.raises(TypeError, match="default or a default_factory"):
        options.option(help="no default")
    for bad in ("", "   ", "two\nlines"):
        with pytest.raises(ValueError, match="one non-empty line"):
            options.option(1, bad)


def test_describe_lists_name_type_default_value_and_help():
    assert options.describe(Helped(size=96)) == [
        {"name": "size", "type": "int", "default": 64, "value": 96,
         "help": "slice side in pixels"},
        {"name": "tags", "type": "tuple", "default": ["a", "b"], "value": ["a", "b"],
         "help": "labels, in order"}]
    size = {o["name"]: o for o in options.describe(Phantom())}["size"]
    assert size["default"] == 64 and size["type"] == "int" and "slice side" in size["help"]


def test_an_option_without_help_shows_no_help_and_is_a_problem():
    assert {o["name"]: o["help"] for o in options.describe(Thing())} == {
        "count": "(no help)", "scale": "(no help)", "enabled": "(no help)", "label": "(no help)"}
    problems = options.option_problems(Thing())
    assert len(problems) == 4 and "option `count` has no help text" in problems[0]
    assert options.option_problems(Helped()) == []


def test_declared_attributes_are_neither_options_nor_settable_but_stay_in_keys():
    phantom = Phantom()
    assert "needs_data_dir" not in options.option_fields(phantom)
    assert "needs_data_dir" not in {o["name"] for o in options.describe(phantom)}
    with pytest.raises(UsageError, match="'phantom' has no option 'needs_data_dir' .*n_cases"):
        options.configure(phantom, {"needs_data_dir": "true"})
    # unit keys and recorded settings keep every field they always held
    assert list(options.keyed_fields(phantom)) == ["needs_data_dir", *options.option_fields(
        phantom)]


@dataclass(frozen=True)
class FieldDeclaring:
    """A third-party filter that declares ``learned`` as a dataclass field."""

    name: str = "field-declaring"
    description: str = "declares learned as a field"
    learned: bool = False
    level: float = options.option(0.0, "threshold")

    def region(self, images):
        return images[:, 0] > self.level


def test_declared_attributes_of_the_objects_kind_are_left_out_inferred_or_given():
    assert options.kinds_of(FieldDeclaring()) == ["filters"]
    assert list(options.option_fields(FieldDeclaring())) == ["level"]
    assert list(options.option_fields(FieldDeclaring(), "filters")) == ["level"]
    # declared attributes of another kind are options like any field
    assert list(options.option_fields(FieldDeclaring(), "cams")) == ["learned", "level"]
    with pytest.raises(UsageError, match="no option 'learned'"):
        options.configure(FieldDeclaring(), {"learned": "true"})
