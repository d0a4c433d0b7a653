"""The patient-level split: a seeded one, or a published one from ``--folds-file``."""

from __future__ import annotations

import json
from pathlib import Path

from wsss_bench.core import atomic
from wsss_bench.core.folds import patient_folds, read_folds_file
from wsss_bench.core.slices import SliceSet
from wsss_bench.pipeline.settings import RunConfig


def split(config: RunConfig, data: SliceSet) -> list[list[str]]:
    """The folds' case ids, written to ``<workdir>/<dataset>/folds.json``."""
    if config.folds_file:
        folds = read_folds_file(config.folds_file, data.case_ids, data.labels)
    else:
        folds = patient_folds(data.case_ids, data.labels, config.folds, config.seed)
    source = {"file": config.folds_file} if config.folds_file else {"seed": config.seed}
    path = Path(config.workdir) / config.dataset / "folds.json"
    atomic.write_text(path, json.dumps({**source, "folds": folds}, indent=2))
    return folds
