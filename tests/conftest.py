"""Shared fixtures: where the real data lives.

Two kinds of real data:

* the small fixture committed in ``tests/data`` (one cropped BraTS case, one MSD prostate label;
  see tests/data/README.md): always there, used by ``brats_fixture`` and
  ``prostate_label_fixture``;
* the larger real sample (six BraTS cases, the 32 MSD Task05 labels), not in the repository:
  the folder named by ``WSSS_BENCH_TEST_DATA`` (holding ``brats-sample/`` and
  ``msd-prostate-labels/Task05_Prostate/labelsTr/``), by default ``<repo>/../shared/data`` when
  that exists. The fixtures ``brats_sample`` and ``prostate_labels`` skip the tests that need it
  when it is absent, or fail them when ``WSSS_BENCH_REQUIRE_DATA=1`` (CI sets it, so CI never
  skips them silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the default run's two backbones, for tests that read the rows of a default run
FIRST, SECOND = "timm:test_resnet", "timm:test_byobnet"
DATA_ENV = "WSSS_BENCH_TEST_DATA"
REQUIRE_ENV = "WSSS_BENCH_REQUIRE_DATA"
DEFAULT_TEST_DATA = ROOT.parent / "shared" / "data"
FIXTURE_DATA = ROOT / "tests" / "data"

# Under pytest-xdist (the README's `-n 2`) every worker, and every process it starts, computes on
# one CPU thread: two workers of several threads each oversubscribe a small machine, and the
# tests' tensors are tiny. Set before any test module imports torch; pytest_configure makes
# sure for a torch imported earlier.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("OMP_NUM_THREADS") == "1":
        import torch

        torch.set_num_threads(1)


def real_data_root() -> Path | None:
    """``$WSSS_BENCH_TEST_DATA`` (absolute, symlinks kept), else ``../shared/data`` if it
    exists, else None."""
    value = os.environ.get(DATA_ENV, "").strip()
    if value:
        return Path(os.path.abspath(os.path.expanduser(value)))
    return DEFAULT_TEST_DATA if DEFAULT_TEST_DATA.is_dir() else None


def data_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def real_data(relative: str) -> Path:
    """The folder ``relative`` of the real data sample; skips the calling test when it is
    absent (fails it under ``WSSS_BENCH_REQUIRE_DATA=1``). Call it from a fixture or a test,
    never at import time."""
    root = real_data_root()
    path = root / relative if root is not None else None
    if path is not None and path.is_dir():
        return path
    reason = (f"real data sample not found: set {DATA_ENV} to the folder holding brats-sample/ "
              f"and msd-prostate-labels/")
    looked = (f"looked in {path}" if path is not None
              else f"{DATA_ENV} is unset and there is no {DEFAULT_TEST_DATA}")
    if data_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set; {looked})", pytrace=False)
    pytest.skip(f"{reason} ({looked})")


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
    """The six real BraTS cases (``<WSSS_BENCH_TEST_DATA>/brats-sample``)."""
    return real_data("brats-sample")


@pytest.fixture(scope="session")
def prostate_labels() -> Path:
    """The folder of the 32 real MSD Task05 label files."""
    return real_data("msd-prostate-labels/Task05_Prostate/labelsTr")


@pytest.fixture(scope="session")
def brats_fixture() -> Path:
    """The committed BraTS fixture: a folder of one cropped real case (tests/data/README.md)."""
    path = FIXTURE_DATA / "brats"
    assert (path / "BraTS15_pat0001").is_dir(), f"{path}: the committed fixture is missing"
    return path


@pytest.fixture(scope="session")
def prostate_label_fixture() -> Path:
    """The committed real MSD Task05 label file (tests/data/msd-prostate/labelsTr)."""
    files = sorted((FIXTURE_DATA / "msd-prostate" / "labelsTr").glob("prostate_*.nii.gz"))
    assert len(files) == 1, f"{FIXTURE_DATA}: expected one committed prostate label, got {files}"
    return files[0]


PLUGIN_DISTS = ROOT / "tests" / "plugin_dists"


def _install(name: str, target: Path) -> Path:
    """pip-install the test distribution ``tests/plugin_dists/<name>`` into ``target``, built
    from a private copy (pytest-xdist workers may install the same one at once; setuptools
    builds in the source folder)."""
    import shutil
    import subprocess
    import sys

    source = target / ".source"
    shutil.copytree(PLUGIN_DISTS / name, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
           "--no-build-isolation", "--target", str(target), str(source)]
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
