"""Plugin discovery through real entry points of installed distributions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import wsss_bench
from wsss_bench.contracts import Backbone, Cam, Dataset, Ensemble, Filter
from wsss_bench.errors import PluginError
from wsss_bench.registry import BLOCK_ENV, PluginLoadWarning, load_registry

BUILTINS = {
    "datasets": {"phantom", "brats", "decathlon", "msd-brain"},
    "backbones": {"resnet18", "resnet34", "resnet50", "resnet101", "vgg19"},
    "cams": {"gradcam", "gradcam++", "smoothgradcam++", "hirescam", "xgradcam", "layercam",
             "scorecam", "sscam", "iscam", "ablationcam", "cam", "eigencam", "eigengradcam",
             "fullgrad"},
    "ensembles": {"and", "or"},
    "filters": {"none"},
}
PROTOCOLS = {"datasets": Dataset, "backbones": Backbone, "cams": Cam, "ensembles": Ensemble,
             "filters": Filter}


def test_builtins_are_found_through_entry_points_with_their_source():
    registry = wsss_bench.load_registry()
    for kind, names in BUILTINS.items():
        table = registry.kind(kind)
        assert names <= set(table), kind
        for name in names:
            entry = table.get_entry(name)
            assert entry.source == "wsss-bench"
            assert entry.description
            assert isinstance(table[name], PROTOCOLS[kind])


def test_third_party_distribution_is_discovered_without_hand_registration(use_dist):
    use_dist("example")
    registry = load_registry()
    assert registry.cams.get_entry("activation-mean").source == "wsss-bench-example-plugin"
    assert registry.ensembles.get_entry("first").source == "wsss-bench-example-plugin"
    assert isinstance(registry.cams["activation-mean"], Cam)
    assert "gradcam" in registry.cams  # built-ins still there


def test_broken_plugin_is_skipped_with_a_warning_naming_its_distribution(use_dist):
    use_dist("broken", "example")
    with pytest.warns(PluginLoadWarning, match="wsss-bench-broken-plugin") as caught:
        registry = load_registry()
    assert any("not-installed-anywhere" in str(w.message) for w in caught)
    assert "activation-mean" in registry.cams and "gradcam" in registry.cams
    assert registry.skipped and "broken" in registry.skipped[0]


def test_duplicate_name_fails_naming_both_sources(use_dist):
    use_dist("duplicate")
    with pytest.raises(PluginError) as err:
        load_registry()
    message = str(err.value)
    assert "'gradcam'" in message
    assert "wsss-bench-duplicate-plugin" in message and "(wsss-bench)" in message


def test_block_env_var_skips_plugins_by_entry_point_name(use_dist, monkeypatch):
    use_dist("duplicate", "broken")
    monkeypatch.setenv(BLOCK_ENV, "duplicate, broken")
    registry = load_registry()  # neither the duplicate error nor the broken warning
    assert registry.cams.get_entry("gradcam").source == "wsss-bench"
    assert not registry.skipped
    monkeypatch.setenv(BLOCK_ENV, "cams,duplicate,broken")  # the built-in CAMs entry point
    registry = load_registry()
    assert "gradcam" not in registry.cams and "and" in registry.ensembles


def test_misspelt_hook_is_an_error():
    class Misspelt:
        @wsss_bench.hookimpl
        def register_camz(self, register):  # not a hook
            register(object())

    with pytest.raises(PluginError, match="register_camz"):
        load_registry(extra_plugins={"misspelt": Misspelt()})


def test_register_hook_that_raises_is_skipped_not_fatal():
    class Raises:
        @wsss_bench.hookimpl
        def register_filters(self, register):
            raise RuntimeError("boom")

    with pytest.warns(PluginLoadWarning, match="boom"):
        registry = load_registry(extra_plugins={"raises": Raises()})
    assert "none" in registry.filters


def test_object_without_a_name_is_rejected():
    class Nameless:
        @wsss_bench.hookimpl
        def register_ensembles(self, register):
            register(object())

    with pytest.raises(PluginError, match="without a string `name`"):
        load_registry(extra_plugins={"nameless": Nameless()})


def _registering(hook: str, *objs: object) -> object:
    def register_all(register) -> None:
        for obj in objs:
            register(obj)

    register_all.__name__ = hook
    return type("Plugin", (), {hook: staticmethod(wsss_bench.hookimpl(register_all))})()


class Undeclared:
    """A filter with ``region`` but without its declared ``learned``."""

    name, description = "undeclared", "no declared attributes"

    def region(self, images):
        return images[:, 0] > 0


def test_object_missing_a_declared_attribute_is_rejected_naming_it():
    with pytest.raises(PluginError) as err:
        load_registry(extra_plugins={"mine": _registering("register_filters", Undeclared())})
    message = str(err.value)
    assert "plugin 'mine' (<extra>)" in message and "filter 'undeclared'" in message
    assert "(Undeclared)" in message and "missing declared attribute `learned`" in message


@pytest.mark.parametrize(("kind", "attr", "value", "problem"), [
    ("filters", "learned", "yes", "`learned` must be a bool"),
    ("filters", "learned", True, "`learned = True` but it has no `fit()` method"),
    ("ensembles", "fuses", True, "`fuses = True` but it has no `fuse()` method"),
    ("ensembles", "pixel_rule", "most", "`pixel_rule` must be None or a str"),
    ("ensembles", "slice_rule", "median", "`slice_rule` must be None or one of"),
    ("backbones", "output_strides", (8, 16), "must be a tuple of positive ints that includes 32"),
    ("backbones", "model_name", None, "`model_name` must be a non-empty str"),
    ("datasets", "cache_version", "1", "`cache_version` must be an int"),
    ("datasets", "archive", "https://x", "`archive` must be a wsss_bench.download.Archive"),
    ("datasets", "reads_files", False, "`reads_files = False` but it has no `cases()` method"),
])
def test_wrong_declared_attribute_is_rejected(kind, attr, value, problem):
    from wsss_bench.contracts import DECLARED

    good = {"filters": {"learned": False},
            "ensembles": {"symbol": None, "pixel_rule": None, "slice_rule": None,
                          "fuses": False},
            "backbones": {"model_name": "m", "output_strides": (32,)},
            "datasets": {"needs_data_dir": True, "reads_files": True, "archive": None,
                         "download_note": "", "cache_version": 0, "cam_view": False,
                         "sources": lambda d: [], "load": lambda s: None}}[kind]
    assert set(DECLARED[kind]) <= set(good)
    obj = type("Odd", (), {**good, "name": "odd", "description": "d", attr: value})()
    hook = f"register_{kind}"
    with pytest.raises(PluginError, match="plugin 'odd-dist'.*'odd' \\(Odd\\)") as err:
        load_registry(extra_plugins={"odd-dist": _registering(hook, obj)})
    assert problem in str(err.value)


def test_unknown_name_lists_the_known_ones():
    from wsss_bench.errors import UsageError

    with pytest.raises(UsageError, match="unknown CAM method 'gradcamm'.*gradcam"):
        load_registry().cams.get_entry("gradcamm")


def test_plugins_json_lists_every_builtin_and_third_party(use_dist):
    env = use_dist("example")
    out = subprocess.run([sys.executable, "-m", "wsss_bench.cli", "plugins", "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    rows = json.loads(out)
    assert all(set(r) == {"kind", "name", "source", "description", "options"} for r in rows)
    listed = {(r["kind"], r["name"]): r["source"] for r in rows}
    for kind, names in BUILTINS.items():
        for name in names:
            assert listed[(kind, name)] == "wsss-bench"
    assert listed[("cams", "activation-mean")] == "wsss-bench-example-plugin"


FILE_DATASETS = sorted(n for n, d in wsss_bench.load_registry().datasets.items()
                       if d.reads_files)


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_file_dataset_contract(name, tmp_path):
    """Every file dataset, through the shipped kit: the FileDataset protocol, picklable
    (workers decode in other processes), missing data a one-line UsageError naming the folder,
    an https archive with an md5 or a download_note."""
    from wsss_bench import testing

    dataset = wsss_bench.load_registry().datasets[name]
    assert dataset.needs_data_dir
    testing.check_dataset(dataset, scratch_dir=tmp_path)
