"""Exact (brute-force) top-k over a vector matrix, for the small in-memory sets tasks search
(caption datastores, a corpus' image vectors, QA question vectors, document chunks).

Ties are broken by row: the result is exactly ``np.argsort(-scores, kind="stable")[:k]``, computed
with a partial sort (``argpartition``) so a 30,000-row search does not sort every row.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Queries scored per matrix product (bounds the [chunk, n] score block in memory).
CHUNK = 256


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (1-D, or 2-D: per row), best first; ties in row
    order. ``-inf`` sorts last; NaN after it."""
    s = np.asarray(scores)
    if s.ndim == 2:
        kk = max(0, min(int(k), s.shape[1]))
        return np.stack([top_k(r, kk) for r in s]) if len(s) else np.zeros((0, kk), np.int64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D or 2-D, got shape {s.shape}")
    n = len(s)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64)
    if k == n:
        return np.argsort(-s, kind="stable")
    thr = s[np.argpartition(-s, k - 1)[:k]].min()
    if np.isnan(thr):  # fewer than k comparable scores: sorting everything is the simple exact answer
        return np.argsort(-s, kind="stable")[:k]
    # Every row tied with the k-th score is a candidate, so which of them come first is decided by
    # row order (as a full stable sort would), not by argpartition's arbitrary pick.
    cand = np.flatnonzero(s >= thr)
    return cand[np.argsort(-s[cand], kind="stable")][:k]


def select_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` highest ``scores`` (1-D) in no particular order, for callers that only
    need the set (e.g. a vote). Among rows tied with the k-th score the pick is
    ``argpartition``'s (fixed for a numpy version, not by row); :func:`top_k` decides ties by row.
    Kept for the RIR knn vote, whose results depend on that pick (VQA questions repeat, so their
    vectors tie often): changing it is a results change, not a refactor."""
    s = np.asarray(scores)
    k = max(0, min(int(k), len(s)))
    return np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, np.int64)


class ExactIndex:
    """Inner-product search over ``vectors`` ([n, dim]); ``priors`` ([n]) are subtracted from
    every score (a caption's hubness prior); ``ids`` name the rows."""

    def __init__(self, vectors: np.ndarray, ids: Sequence[str] | None = None, priors: np.ndarray | None = None):
        v = np.asarray(vectors, np.float32)
        if v.ndim != 2:
            raise ValueError(f"vectors must be [n, dim], got shape {v.shape}")
        if ids is not None and len(ids) != len(v):
            raise ValueError(f"{len(ids)} ids for {len(v)} vectors")
        if priors is not None and np.shape(priors) != (len(v),):
            raise ValueError(f"priors must have shape [{len(v)}], got {np.shape(priors)}")
        self.vectors = v
        self.ids = list(ids) if ids is not None else None
        self.priors = None if priors is None else np.asarray(priors, np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Scores against every row: ``[n]`` for one query vector, ``[n_queries, n]`` for a matrix."""
        q = np.asarray(queries, np.float32)
        if q.ndim not in (1, 2) or q.shape[-1] != self.dim:
            raise ValueError(f"queries must have dim {self.dim}, got shape {q.shape}")
        if q.ndim == 1:
            s = self.vectors @ q
        else:
            s = np.concatenate([q[a : a + CHUNK] @ self.vectors.T for a in range(0, len(q), CHUNK)]) \
                if len(q) else np.zeros((0, len(self)), np.float32)
        if self.priors is not None:
            s -= self.priors
        return s

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[np.ndarray | Sequence[int] | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, each ``[n_queries, min(k, n)]`` (1-D for one query vector), best
        first, ties in row order. ``exclude[i]``: rows query ``i`` must not return (scored
        ``-inf``, so they come last only when fewer than ``k`` others remain)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(queries, np.float32)
        single = q.ndim == 1
        q2 = q[None] if single else q
        if exclude is not None and len(exclude) != len(q2):
            raise ValueError(f"{len(exclude)} exclude lists for {len(q2)} queries")
        kk = min(int(k), len(self))
        all_s, all_i = [], []
        for a in range(0, len(q2), CHUNK):
            S = self.scores(q2[a : a + CHUNK])
            if exclude is not None:
                for j, rows in enumerate(exclude[a : a + CHUNK]):
                    if rows is not None and len(rows):
                        S[j, np.asarray(rows, np.int64)] = -np.inf
            idx = top_k(S, kk)
            all_i.append(idx)
            all_s.append(np.take_along_axis(S, idx, axis=1))
        idx = np.concatenate(all_i) if all_i else np.zeros((0, kk), np.int64)
        sc = np.concatenate(all_s) if all_s else np.zeros((0, kk), np.float32)
        return (sc[0], idx[0]) if single else (sc, idx)
