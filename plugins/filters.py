"""Filters: the region of each slice in which CAM values are kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsss_bench import hookimpl


@dataclass(frozen=True)
class NoFilter:
    name: str = "none"
    description: str = "keep every pixel"

    def region(self, images: np.ndarray) -> np.ndarray:
        b, _, h, w = images.shape
        return np.ones((b, h, w), dtype=bool)


@hookimpl
def register_filters(register) -> None:
    register(NoFilter())
