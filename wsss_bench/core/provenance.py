"""How a result was made: date, code version, device, library versions."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

import torch

import wsss_bench


def git_commit() -> str | None:
    """The commit of the wsss-bench source tree, when it is a git checkout."""
    here = Path(wsss_bench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    status = ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True, timeout=5,
                           check=False).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_info(device: torch.device, seed: int, config: dict) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "wsss_bench": wsss_bench.__version__,
        "python": platform.python_version(),
        "seed": seed,
        "config": config,
    }
