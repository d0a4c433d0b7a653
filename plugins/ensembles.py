"""The paper's set operators on the binary masks of M >= 2 backbones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsss_bench import hookimpl


@dataclass(frozen=True)
class And:
    name: str = "and"
    description: str = "intersection: a pixel is lesion only if every backbone says so"
    symbol: str = "and"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return np.logical_and.reduce(masks, axis=0)


@dataclass(frozen=True)
class Or:
    name: str = "or"
    description: str = "union: a pixel is lesion if any backbone says so"
    symbol: str = "or"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return np.logical_or.reduce(masks, axis=0)


@hookimpl
def register_ensembles(register) -> None:
    register(And())
    register(Or())
