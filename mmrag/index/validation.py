"""Argument checks shared by the vector stores (the same ValueErrors from every backend)."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["as_matrix", "check_ids", "metadata_json"]


def as_matrix(vectors: Any, dim: int, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) matrix (one row for a 1-d input); a wrong
    shape, a non-numeric dtype or NaN/inf is a ValueError naming ``what``."""
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"{what} must have shape (n, {dim}) for this {dim}-dimensional store, got {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def check_ids(ids: Sequence[str], each: Callable[[str], None] | None = None) -> list[str]:
    """``ids`` as a list of non-empty strings; ``each``: a backend's further check of one id."""
    if isinstance(ids, str):
        raise ValueError("ids must be a sequence of strings, not a single string")
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str) or not i:
            raise ValueError(f"ids must be non-empty strings, got {i!r}")
        if each is not None:
            each(i)
    return ids


def metadata_json(metadata: Sequence[dict[str, Any] | None] | None, n: int) -> list[str]:
    """One JSON text per id (``None`` entries and ``metadata=None``: ``{}``); entries must be
    JSON-serialisable dicts (no NaN), ``n`` of them."""
    if metadata is None:
        return ["{}"] * n
    metadata = list(metadata)
    if len(metadata) != n:
        raise ValueError(f"{n} ids but {len(metadata)} metadata entries")
    metas = []
    for m in metadata:
        if m is None:
            m = {}
        if not isinstance(m, dict):
            raise ValueError(f"metadata entries must be dicts, got {type(m).__name__}")
        try:
            metas.append(json.dumps(m, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata is not JSON-serialisable: {e}") from None
    return metas
