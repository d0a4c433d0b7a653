"""Where a backbone's initial weights come from: a local file, timm's hub, or random.

``--weights DIR`` looks in DIR for the backbone's checkpoint: ``<model>.safetensors``,
``<model>.pth``/``.pt``/``.bin``, or the same with a tag (timm: ``resnet34.a1_in1k.safetensors``;
torchvision: ``resnet34-b627a593.pth``), where ``<model>`` is the backbone's declared
``model_name`` (the timm model name for timm backbones). ``.pth`` files are read with
``torch.load(weights_only=True)``. ``--pretrained`` uses timm's hub weights when they can be
reached and falls back to random initialisation with a warning when they cannot. The result is
a short string recorded in the unit keys and rows: ``random``, ``timm-hub``,
``random (hub unreachable: …)`` or ``file <path> (<bytes> bytes)``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from wsss_bench.errors import UsageError

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def find_checkpoint(folder: Path, model_name: str) -> Path:
    """The one checkpoint for ``model_name`` in ``folder``; none or several is a UsageError."""
    if not folder.is_dir():
        raise UsageError(f"--weights {folder}: no such folder")
    pattern = re.compile(rf"{re.escape(model_name)}([.-][^/]*)?")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES
                   and pattern.fullmatch(p.name[: -len(p.suffix)]))
    if not found:
        raise UsageError(f"--weights {folder}: no checkpoint for {model_name} (expected "
                         f"{model_name}.safetensors, {model_name}.pth or {model_name}-<tag>.pth)")
    if len(found) > 1:
        raise UsageError(f"--weights {folder}: several checkpoints for {model_name} "
                         f"({', '.join(p.name for p in found)}); keep one")
    return found[0]


def resolve(backbone: Any, weights_dir: str | None, pretrained: bool) -> str:
    """The initial weights of ``backbone`` for this run (see the module docstring)."""
    if weights_dir:
        path = find_checkpoint(Path(weights_dir).expanduser(), backbone.model_name)
        st = path.stat()
        return f"file {path.resolve()} ({st.st_size} bytes, mtime_ns {st.st_mtime_ns})"
    if not pretrained:
        return "random"
    try:  # one build downloads into the hub cache; training builds read it from there
        backbone.build(in_chans=3, num_classes=2, pretrained=True)
    except Exception as exc:  # network, hub or file errors: all mean "not reachable"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        warnings.warn(f"--pretrained: timm hub weights for {backbone.name} cannot be reached "
                      f"({reason}); starting from random weights", stacklevel=2)
        return f"random (hub unreachable: {reason})"
    return "timm-hub"


def key_of(source: str) -> str:
    """The part of a weights source that decides the weights (for unit keys): every random
    start is the same start, whatever the hub said."""
    return "random" if source.startswith("random") else source


def build_argument(backbone: Any, source: str, weights_dir: str | None) -> bool | Path:
    """What to pass as ``build(pretrained=...)`` for a resolved ``source``."""
    if source == "timm-hub":
        return True
    if source.startswith("file "):
        return find_checkpoint(Path(weights_dir or ".").expanduser(), backbone.model_name)
    return False
