"""reader: a corpus as flat, serialisable rows (the unit Ray Data moves between processes)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from mmrag.corpus.items import CorpusItem

COLUMNS = ("index", "id", "path", "source", "captions", "split", "metadata")

# Caps on what one image brings into an index (each caption is stored twice: in the image's
# metadata and as a caption row). MiniLM reads 256 word pieces, about 1,000 characters of
# English, so a longer caption only costs space; 100 captions is 20x what COCO has per image.
MAX_CAPTION_CHARS = 1000
MAX_CAPTIONS = 100

# Metadata keys of the file's size and mtime when it was read: a rerun re-hashes a file only
# when these differ (cheap change detection), and re-embeds it only when the hash differs.
SIZE_KEY, MTIME_KEY = "file_size", "file_mtime_ns"


def file_stat(path) -> dict:
    """{file_size, file_mtime_ns} of ``path`` (empty when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return {}
    return {SIZE_KEY: st.st_size, MTIME_KEY: st.st_mtime_ns}


def cap_captions(items: Sequence[CorpusItem]) -> tuple[list[CorpusItem], list[tuple[str, str]]]:
    """``items`` with at most :data:`MAX_CAPTIONS` captions of at most :data:`MAX_CAPTION_CHARS`
    characters each (copies where cut; the corpus is not changed), and a warning per item cut."""
    out, warnings = [], []
    for it in items:
        caps = list(it.captions)
        too_long = sum(1 for c in caps if len(c) > MAX_CAPTION_CHARS)
        if len(caps) <= MAX_CAPTIONS and not too_long:
            out.append(it)
            continue
        kept = [c[:MAX_CAPTION_CHARS] for c in caps[:MAX_CAPTIONS]]
        why = []
        if len(caps) > MAX_CAPTIONS:
            why.append(f"kept the first {MAX_CAPTIONS} of {len(caps)} captions")
        if too_long:
            why.append(f"cut {too_long} caption(s) longer than {MAX_CAPTION_CHARS} characters "
                       f"(longest {max(len(c) for c in caps):,})")
        src = it.path.with_suffix(".txt") if it.metadata.get("caption_file") else it.path  # the folder's sidecar
        warnings.append((str(src), "; ".join(why) + " (image kept)"))
        out.append(dataclasses.replace(it, captions=kept))
    return out, warnings


def item_records(items: Sequence[CorpusItem], start: int = 0) -> list[dict]:
    """One row per image: its position in the corpus, id, absolute path (symlinks resolved: what
    the index stores), source (the path as the reader gave it: what is opened, hashed and named
    in skip reasons), captions and metadata.

    Captions and metadata travel as JSON strings so every column is a plain scalar (Arrow and
    numpy batches stay rectangular whatever the number of captions). The metadata gets the
    file's size and mtime (:func:`file_stat`), taken before the file is hashed, so a change
    after this point is seen by the next run.
    """
    return [
        {
            "index": start + n,
            "id": it.id,
            "path": str(it.path.resolve()) if hasattr(it.path, "resolve") else str(it.path),
            "source": str(it.path),
            "captions": json.dumps(list(it.captions), ensure_ascii=False),
            "split": it.split or "",
            "metadata": json.dumps({**(it.metadata or {}), **file_stat(it.path)}, ensure_ascii=False, default=str),
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
