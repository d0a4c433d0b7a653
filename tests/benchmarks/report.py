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
