"""Retrieval metrics shared by the evaluations."""

from __future__ import annotations

import numpy as np


def recall_at_k(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose target is within the top k (``ranks`` are 0-based)."""
    return {f"R@{k}": round(float(100.0 * (np.asarray(ranks) < k).mean()), 2) for k in ks}
