"""Patient-level k-fold cross-validation: every slice of a case lands in the same fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsss_bench.errors import UsageError


def patient_folds(case_ids: np.ndarray, labels: np.ndarray, k: int, seed: int) -> list[list[str]]:
    """Split the cases into ``k`` validation folds (lists of case ids), seeded.

    Cases with and without lesion slices are shuffled separately and dealt round-robin, so
    every fold gets its share of positive cases. A fold without a lesion slice is an error.
    """
    cases = sorted(set(case_ids.tolist()))
    if k < 2:
        raise UsageError(f"--folds {k}: cross-validation needs at least 2 folds")
    if k > len(cases):
        raise UsageError(f"--folds {k}: the dataset has only {len(cases)} cases; "
                         f"use at most {len(cases)} folds")
    positive = {c for c in cases if labels[case_ids == c].any()}
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    ordered = [c for c in order if c in positive] + [c for c in order if c not in positive]
    folds: list[list[str]] = [[] for _ in range(k)]
    for i, case in enumerate(ordered):
        folds[i % k].append(case)
    for i, fold in enumerate(folds):
        if not positive.intersection(fold):
            raise UsageError(f"fold {i} has no slice with a lesion ({len(positive)} of "
                             f"{len(cases)} cases have lesions); use fewer --folds")
    return [sorted(f) for f in folds]


def read_folds_file(path: str | Path, case_ids: np.ndarray, labels: np.ndarray) -> list[list[str]]:
    """A published split: JSON ``{"folds": [[case ids of fold 0], ...]}`` or a bare list of
    lists (``folds.json`` as written by ``wsss-bench run`` qualifies). Every case of the data
    must be in exactly one fold, every listed case must exist, and every fold needs a slice
    with a lesion; anything else is an error naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--folds-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--folds-file {path}: not readable JSON ({exc})") from None
    folds = raw.get("folds") if isinstance(raw, dict) else raw
    if (not isinstance(folds, list) or len(folds) < 2
            or not all(isinstance(f, list) and all(isinstance(c, str) for c in f) for f in folds)):
        raise UsageError(f"--folds-file {path}: expected {{\"folds\": [[case ids], ...]}} with "
                         f"at least 2 folds of case-id strings")
    cases = set(case_ids.tolist())
    seen: dict[str, int] = {}
    for i, fold in enumerate(folds):
        for case in fold:
            if case in seen:
                raise UsageError(f"--folds-file {path}: case {case} is in fold {seen[case]} and "
                                 f"fold {i}; each case belongs to one fold")
            if case not in cases:
                raise UsageError(f"--folds-file {path}: case {case} (fold {i}) is not in the "
                                 f"dataset; is this split for this dataset?")
            seen[case] = i
    missing = sorted(cases - set(seen))
    if missing:
        raise UsageError(f"--folds-file {path}: {len(missing)} case(s) of the dataset are in no "
                         f"fold (e.g. {', '.join(missing[:3])}); list every case")
    positive = set(case_ids[labels.astype(bool)].tolist())
    for i, fold in enumerate(folds):
        if not positive.intersection(fold):
            raise UsageError(f"--folds-file {path}: fold {i} has no slice with a lesion, so its "
                             f"scores would be meaningless; move a case with lesions into it")
    return [sorted(f) for f in folds]
