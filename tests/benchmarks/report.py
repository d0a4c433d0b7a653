"""Shared end of the benchmark modules: print the table, check the targets."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resnet34_and_batch(batch: int, size: int = 128) -> tuple[object, object]:
    """The CAM benchmarks' workload: timm resnet34 (1 input channel, 2 classes, seed 0, eval,
    random init) and a fixed seeded batch [batch, 1, size, size]."""
    import pytest
    import torch

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet34", pretrained=False, in_chans=1, num_classes=2).eval()
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def report_targets(table: str, checks: list[tuple[str, float, float]]) -> None:
    """Print ``table`` and the (name, measured, limit) checks; write them to $WSSS_BENCH_TABLE
    when set; fail naming every missed target."""
    report = [table, "", "| target | measured s | limit s | met |", "|---|---:|---:|---|"]
    report += [f"| {name} | {got:.3f} | {limit:.3f} | {'yes' if got <= limit else 'NO'} |"
               for name, got, limit in checks]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if out := os.environ.get("WSSS_BENCH_TABLE"):
        Path(out).write_text(text, encoding="utf-8")
    missed = [f"{name}: {got:.3f}s > {limit:.3f}s ({got / limit:.2f}× the limit)"
              for name, got, limit in checks if got > limit]
    assert not missed, "speed targets missed:\n" + "\n".join(missed)
