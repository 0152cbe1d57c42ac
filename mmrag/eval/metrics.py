"""Retrieval metrics shared by the evaluations."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranks_of_targets(scores: np.ndarray, targets: Sequence) -> np.ndarray:
    """0-based rank of the best-ranked correct item for each query row of ``scores``.

    ``targets[i]`` is the correct column index for query i, or a collection of them. The rank is
    the number of wrong items scoring at least as high as the best correct one: ties count
    against the target, so a constant scorer cannot look good.
    """
    n, m = scores.shape
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        t = targets[i]
        idx = np.asarray(list(t) if isinstance(t, (set, frozenset, list, tuple)) else [t], dtype=np.int64)
        best = scores[i, idx].max()
        wrong = np.ones(m, dtype=bool)
        wrong[idx] = False
        out[i] = int((scores[i][wrong] >= best).sum())
    return out


def recall_at_k(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose target is within the top k."""
    return {f"R@{k}": round(float(100.0 * (np.asarray(ranks) < k).mean()), 2) for k in ks}
