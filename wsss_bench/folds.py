"""Patient-level k-fold cross-validation: every slice of a case lands in the same fold."""

from __future__ import annotations

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
