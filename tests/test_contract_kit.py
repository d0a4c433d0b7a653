"""The shipped contract test kit (wsss_bench.testing): every built-in and the example
third-party distribution pass it, and it catches broken plugins with a message naming them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch

import wsss_bench
from wsss_bench import options, testing
from wsss_bench.contracts import Case
from wsss_bench.options import option

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = wsss_bench.load_registry()
BUILTINS = [(k, n) for k, n in testing.contract_cases(REGISTRY)
            if REGISTRY.kind(k).get_entry(n).source == "wsss-bench"]


@pytest.mark.parametrize(("kind", "name"), BUILTINS, ids=[f"{k}:{n}" for k, n in BUILTINS])
def test_every_builtin_passes_the_kit(kind, name, tmp_path):
    obj = REGISTRY.kind(kind)[name]
    if kind == "datasets":
        testing.check_dataset(obj, scratch_dir=tmp_path)
    elif kind == "backbones":  # large models: shapes on the meta device (test_backbones runs them)
        testing.check_backbone(obj, real="32" if name == "resnet18" else "none")
    else:
        testing.check_plugin(kind, obj)


def test_file_datasets_pass_on_the_committed_fixture(brats_fixture):
    brats = dataclasses.replace(REGISTRY.datasets["brats"], crop="none")  # a small crop
    testing.check_file_dataset(brats, brats_fixture)
    testing.check_file_dataset(dataclasses.replace(brats, cam_binarize=0.8), brats_fixture)


def test_the_example_distribution_passes_the_kit_and_the_pytest_plugin(use_dist, tmp_path):
    env = use_dist("example")
    registry = wsss_bench.load_registry()
    testing.check_all(registry, names=["activation-mean", "first"])
    # what an author runs in their own repository: one test per installed object
    done = subprocess.run([sys.executable, "-m", "pytest", "--wsss-bench-contracts", "-q",
                           "-p", "no:cacheprovider", "-k", "activation-mean or first"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout


def test_unknown_names_are_an_error():
    with pytest.raises(AssertionError, match="no installed plugin object called nope"):
        testing.check_all(REGISTRY, names=["nope"])


# --- broken plugins: each fails, naming the plugin --------------------------------------------

@dataclasses.dataclass(frozen=True)
class BadCam:
    name: str = "bad-cam"
    description: str = "broken on purpose"
    fault: str = option("nan", "what is broken: nan, range, shape or grad")

    def cam(self, model, target_layer, images, target=None):
        b, _, h, w = images.shape
        out = torch.rand(b, h, w, generator=torch.Generator().manual_seed(0))
        if self.fault == "nan":
            out[0, 0, 0] = float("nan")
        elif self.fault == "range":
            out = out * 2
        elif self.fault == "shape":
            out = out[:, : h // 2]
        elif self.fault == "grad":
            p = next(model.parameters())
            p.grad = torch.zeros_like(p)
        return out


@pytest.mark.parametrize(("fault", "message"), [
    ("nan", "holds NaN or Inf"), ("range", r"outside \[0, 1\]"), ("shape", r"\[B,H,W\]"),
    ("grad", "left a parameter .grad")])
def test_kit_catches_a_broken_cam(fault, message):
    with pytest.raises(AssertionError, match=rf"CAM method 'bad-cam' \(BadCam\).*{message}"):
        testing.check_cam(BadCam(fault=fault))


class BadEnsemble:
    name, description = "bad-ensemble", "returns ints"
    symbol = pixel_rule = slice_rule = None
    fuses = False

    def combine(self, masks):
        return masks.sum(axis=0)  # int counts, not bool


class LyingEnsemble(BadEnsemble):
    name = "lying-ensemble"
    pixel_rule: ClassVar[str] = "all"

    def combine(self, masks):
        return masks.any(axis=0)  # an 'or' that declares 'all'


def test_kit_catches_a_broken_ensemble():
    with pytest.raises(AssertionError, match=r"ensemble 'bad-ensemble'.*not bool"):
        testing.check_ensemble(BadEnsemble())
    with pytest.raises(AssertionError, match=r"ensemble 'lying-ensemble'.*pixel_rule 'all'"):
        testing.check_ensemble(LyingEnsemble())


class BadFilter:
    name, description, learned = "bad-filter", "wrong shape", False

    def region(self, images):
        return np.ones(images.shape, dtype=bool)  # [B,C,H,W], not [B,H,W]


def test_kit_catches_a_broken_filter():
    with pytest.raises(AssertionError, match=r"filter 'bad-filter' \(BadFilter\).*shape"):
        testing.check_filter(BadFilter())


@dataclasses.dataclass(frozen=True)
class BadDataset:
    name: str = "bad-dataset"
    description: str = "broken on purpose"
    needs_data_dir: bool = False
    fault: str = option("nan", "what is broken: nan, masks or view")
    reads_files: ClassVar[bool] = False
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = "generated"
    cache_version: ClassVar[int] = 0
    cam_view: ClassVar[bool] = False

    def cases(self, data_dir=None):
        images = np.zeros((2, 1, 8, 8), dtype=np.float32)
        masks = np.zeros((2, 8, 8), dtype=bool)
        if self.fault == "nan":
            images[0, 0, 0, 0] = np.nan
        elif self.fault == "masks":
            masks = masks.astype(np.uint8)
        elif self.fault == "view":
            yield Case("c0", images, masks, cam_images=images.copy())
            return
        yield Case("c0", images, masks)


@pytest.mark.parametrize(("fault", "message"), [
    ("nan", "images hold NaN"), ("masks", "masks must be a bool array"),
    ("view", "cam_view is False but the case has a CAM view")])
def test_kit_catches_a_broken_dataset(fault, message):
    with pytest.raises(AssertionError, match=rf"dataset 'bad-dataset'.*case 'c0': {message}"):
        testing.check_dataset(BadDataset(fault=fault))


def test_kit_catches_a_missing_declared_attribute():
    class NoLearned:
        name, description = "no-learned", "forgot to declare"

        def region(self, images):
            return images[:, 0] > 0

    with pytest.raises(AssertionError,
                       match=r"filter 'no-learned' \(.*NoLearned\).*missing declared attribute "
                             r"`learned`"):
        testing.check_plugin("filters", NoLearned())


@dataclasses.dataclass(frozen=True)
class NoHelpFilter:
    """A third-party filter whose option declares no help text."""

    name: str = "no-help"
    description: str = "keeps the pixels above `level`"
    learned: ClassVar[bool] = False
    level: float = 0.0

    def region(self, images):
        return np.asarray(images).max(axis=1) > self.level


def test_kit_asks_every_option_for_its_help_text():
    with pytest.raises(AssertionError, match=r"filter 'no-help' \(NoHelpFilter\): option `level` "
                                             r"has no help text.*wsss_bench.options.option"):
        testing.check_filter(NoHelpFilter())
    with pytest.raises(AssertionError, match="no-help.*option `level` has no help text"):
        testing.check_plugin("filters", NoHelpFilter())


def test_every_builtin_option_has_a_one_line_help():
    for entry in REGISTRY.entries():
        for f in options.option_fields(entry.obj, entry.kind).values():
            text = options.help_text(f)
            assert len(text) > 15 and "\n" not in f.metadata["help"], (entry.name, f.name)
        assert options.option_problems(entry.obj, entry.kind) == [], entry.name
