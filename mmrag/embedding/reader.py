"""reader: a corpus as flat, serialisable rows (the unit Ray Data moves between processes)."""

from __future__ import annotations

import json
from typing import Sequence

from mmrag.corpus.items import CorpusItem

COLUMNS = ("index", "id", "path", "source", "captions", "split", "metadata")


def item_records(items: Sequence[CorpusItem], start: int = 0) -> list[dict]:
    """One row per image: its position in the corpus, id, absolute path (symlinks resolved: what
    the index stores), source (the path as the reader gave it: what is opened, hashed and named
    in skip reasons), captions and metadata.

    Captions and metadata travel as JSON strings so every column is a plain scalar (Arrow and
    numpy batches stay rectangular whatever the number of captions).
    """
    return [
        {
            "index": start + n,
            "id": it.id,
            "path": str(it.path.resolve()) if hasattr(it.path, "resolve") else str(it.path),
            "source": str(it.path),
            "captions": json.dumps(list(it.captions), ensure_ascii=False),
            "split": it.split or "",
            "metadata": json.dumps(it.metadata or {}, ensure_ascii=False, default=str),
        }
        for n, it in enumerate(items)
    ]


def batch_rows(batch: dict) -> list[dict]:
    """Columnar batch (``{column: array}``, as Ray's numpy format gives) -> list of row dicts."""
    n = len(batch["id"])
    return [{c: (batch[c][i].item() if hasattr(batch[c][i], "item") else batch[c][i]) for c in COLUMNS} for i in range(n)]


def rows_batch(rows: Sequence[dict]) -> dict:
    """The inverse of :func:`batch_rows` (used by the sequential distributor)."""
    import numpy as np

    return {c: np.asarray([r[c] for r in rows], dtype=np.int64 if c == "index" else object) for c in COLUMNS}
