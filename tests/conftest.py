"""Shared fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BRATS_SAMPLE = SHARED_DATA / "brats-sample"
PROSTATE_LABELS = SHARED_DATA / "msd-prostate-labels" / "Task05_Prostate" / "labelsTr"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def brats_sample() -> Path:
    if not BRATS_SAMPLE.is_dir():
        pytest.fail(f"real data missing: {BRATS_SAMPLE} (../shared/data must sit beside the repo)")
    return BRATS_SAMPLE


PLUGIN_DISTS = ROOT / "tests" / "plugin_dists"


def _install(name: str, target: Path) -> Path:
    """pip-install the test distribution ``tests/plugin_dists/<name>`` into ``target``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
           "--no-build-isolation", "--target", str(target), str(PLUGIN_DISTS / name)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"could not install test plugin {name}: {done.stderr[-2000:]}")
    return target


@pytest.fixture(scope="session")
def plugin_dist(tmp_path_factory):
    """Install a test plugin distribution (once per session); returns its site folder."""
    installed: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in installed:
            installed[name] = _install(name, tmp_path_factory.mktemp(f"dist-{name}"))
        return installed[name]

    return get


@pytest.fixture
def use_dist(plugin_dist, monkeypatch):
    """Make an installed test distribution visible to this process and its subprocesses."""
    import importlib
    import os

    def activate(*names: str) -> dict[str, str]:
        paths = [str(plugin_dist(n)) for n in names]
        for p in paths:
            monkeypatch.syspath_prepend(p)
        importlib.invalidate_caches()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
        return env

    return activate
