"""Run the benchmark modules one after another and write their tables into one markdown report
headed by the machine, device, versions and date: the source of the README's performance
tables. Each module runs in its own ``pytest --benchmark-enable -p no:xdist`` process (so one
module's memory does not weigh on the next) and writes its table to ``$WSSS_BENCH_TABLE``;
a module that misses a target keeps its table, marked with the exit status.

Usage (from the repository root, on an otherwise idle machine)::

    python -m tests.benchmarks --out benchmarks.md                 # the default set
    python -m tests.benchmarks --only train scaling --out t.md     # some modules
    python -m tests.benchmarks --list

``prepare`` reads the real BraTS sample (``WSSS_BENCH_TEST_DATA``, see the README); ``memory``
(8–16 minutes) and ``cams-perturbation`` (hours at batch 32: set ``WSSS_BENCH_PERTURB_BATCH``)
run only when named.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = {  # name -> (file, in the default set)
    "cams": ("test_cam_speed.py", True),
    "cams-activation": ("test_cam_activation_speed.py", True),
    "calibration": ("test_calibration_speed.py", True),
    "prepare": ("test_prepare_speed.py", True),
    "bootstrap": ("test_bootstrap_speed.py", True),
    "train": ("test_train_speed.py", True),
    "scaling": ("test_scaling.py", True),
    "methods": ("test_method_cost.py", True),
    "memory": ("test_memory.py", False),
    "cams-perturbation": ("test_cam_perturbation_speed.py", False),
}


def machine_header() -> list[str]:
    """Date, machine, device and versions, as markdown lines."""
    import numpy as np
    import torch

    from tests.benchmarks.report import cpu_name

    device = (f"CUDA: {torch.cuda.get_device_name(0)} (driver CUDA {torch.version.cuda})"
              if torch.cuda.is_available() else "CPU only (no CUDA device)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip() or "unknown"
    return [f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
            f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
            f"threads, {platform.system()} {platform.machine()}",
            f"- device: {device}",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {np.__version__}; wsss-bench commit {commit}"]


def run_module(path: Path) -> tuple[int, str]:
    """Exit status and table of one benchmark module run in its own pytest process."""
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.md"
        env = {**os.environ, "WSSS_BENCH_TABLE": str(table)}
        rc = subprocess.run([sys.executable, "-m", "pytest", str(path), "--benchmark-enable",
                             "-p", "no:xdist", "-p", "no:cacheprovider", "-q"], env=env,
                            cwd=HERE.parent.parent).returncode
        return rc, table.read_text(encoding="utf-8") if table.exists() else ""


def build_report(names: Sequence[str], header: list[str],
                 run: Callable[[Path], tuple[int, str]] = run_module) -> str:
    """The report: ``header``, then each module's table under its name."""
    out = ["# wsss-bench performance report", "", *header, ""]
    for name in names:
        file = MODULES[name][0]
        rc, table = run(HERE / file)
        status = "all targets met" if rc == 0 else f"exit status {rc}: a target missed or a " \
                                                    f"benchmark failed (see its output)"
        out += [f"## {name} (`tests/benchmarks/{file}`): {status}", "",
                table.strip() or "(no table: the module wrote none)", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks.md", help="the report (markdown)")
    parser.add_argument("--only", nargs="+", choices=list(MODULES), help="these modules")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (file, default) in MODULES.items():
            print(f"{name:18} {file}{'' if default else '  (only when named)'}")
        return 0
    names = args.only or [n for n, (_, default) in MODULES.items() if default]
    text = build_report(names, machine_header())
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
