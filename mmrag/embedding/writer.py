"""writer: where a mapped batch goes -- straight into an index (:class:`CollectionWriter`, the
local path) or into embedding shards, npy + parquet in the clip-retrieval layout
(:class:`ShardWriter`, what Ray actors write; :func:`mmrag.embedding.runner.index_from_embeddings`
commits them later with the same :class:`~mmrag.embedding.committer.Committer`).

A writer has ``admit(rows, sha256, errors) -> positions to embed`` (the mapper asks it between
hashing and embedding) and ``write(name, batch) -> summary``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mmrag.embedding.committer import Committer
from mmrag.embedding.mapper import MappedBatch
from mmrag.errors import IndexError_

IMG_DIR, TEXT_DIR, META_DIR = "img_emb", "text_emb", "metadata"


def _atomic_npy(path: Path, x: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(x, np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _summary(name: str, batch: MappedBatch) -> dict:
    return {"shard": name, "rows": len(batch.rows), "errors": sum(1 for e in batch.errors if e),
            "captions": int(sum(batch.n_captions))}


class CollectionWriter:
    """Commits each mapped batch into an index as it comes (no shard files, no second copy of
    the vectors on disk). Admission runs before embedding, so duplicates are not embedded."""

    def __init__(self, committer: Committer):
        self.committer = committer

    def admit(self, rows: list[dict], sha: list[str], errors: list[str]) -> list[int]:
        return self.committer.admit(rows, sha, errors)

    def write(self, name: str, batch: MappedBatch) -> dict:
        if batch.admitted is None:  # mapped without asking this writer: admit now
            self.committer.add(batch)
        else:
            self.committer.commit(batch, batch.admitted)
        return _summary(name, batch)


class ShardWriter:
    """Writes one shard per mapped batch under ``folder``; the parquet file is the commit mark."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        for d in (IMG_DIR, TEXT_DIR, META_DIR):
            (self.folder / d).mkdir(parents=True, exist_ok=True)

    def admit(self, rows: list[dict], sha: list[str], errors: list[str]) -> list[int]:
        """Embed every readable file: what is a duplicate is decided when the index is filled."""
        return [i for i in range(len(rows)) if sha[i]]

    def write(self, shard: str, batch: MappedBatch) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        _atomic_npy(self.folder / IMG_DIR / f"img_emb_{shard}.npy", batch.img_emb)
        _atomic_npy(self.folder / TEXT_DIR / f"text_emb_{shard}.npy", batch.text_emb)
        offsets = np.concatenate([[0], np.cumsum(batch.n_captions)[:-1]]).astype(np.int64) if batch.rows else []
        table = pa.table({
            "index": pa.array([int(r["index"]) for r in batch.rows], pa.int64()),
            "id": pa.array([r["id"] for r in batch.rows], pa.string()),
            "path": pa.array([r["path"] for r in batch.rows], pa.string()),
            "source": pa.array([r["source"] for r in batch.rows], pa.string()),
            "split": pa.array([r["split"] for r in batch.rows], pa.string()),
            "captions": pa.array([json.loads(r["captions"]) for r in batch.rows], pa.list_(pa.string())),
            "metadata": pa.array([r["metadata"] for r in batch.rows], pa.string()),
            "sha256": pa.array(batch.sha256, pa.string()),
            "error": pa.array(batch.errors, pa.string()),
            "text_offset": pa.array(list(offsets), pa.int64()),
            "n_captions": pa.array(batch.n_captions, pa.int64()),
            "caption_prior": pa.array(batch.caption_prior, pa.list_(pa.float32())),
            "image_prior": pa.array(batch.image_prior or [None] * len(batch.rows), pa.float32()),
        })
        final = self.folder / META_DIR / f"metadata_{shard}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return _summary(shard, batch)


@dataclass
class Shard:
    name: str
    meta: "object"          # pyarrow.Table, one row per image
    img_emb: np.ndarray     # [n, dim] (memory-mapped)
    text_emb: np.ndarray    # [m, dim] (memory-mapped)


def shard_names(folder: str | Path) -> list[str]:
    """Complete shards (those whose parquet file exists), in name order."""
    d = Path(folder) / META_DIR
    if not d.is_dir():
        return []
    return sorted(p.name[len("metadata_"): -len(".parquet")] for p in d.glob("metadata_*.parquet"))


def read_shards(folder: str | Path) -> Iterator[Shard]:
    import pyarrow.parquet as pq

    folder = Path(folder)
    for name in shard_names(folder):
        try:
            meta = pq.read_table(folder / META_DIR / f"metadata_{name}.parquet")
            img = np.load(folder / IMG_DIR / f"img_emb_{name}.npy", mmap_mode="r")
            text = np.load(folder / TEXT_DIR / f"text_emb_{name}.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexError_(f"embedding shard {name!r} in {folder} is unreadable ({e}); delete it and rerun") from None
        if "source" not in meta.column_names:  # written before the column existed: the path was opened
            meta = meta.append_column("source", meta.column("path"))
        if len(img) != meta.num_rows or len(text) != sum(meta.column("n_captions").to_pylist()):
            raise IndexError_(f"embedding shard {name!r} in {folder} is inconsistent; delete it and rerun")
        yield Shard(name, meta, img, text)


def load_embeddings(folder: str | Path) -> tuple[dict[str, list], np.ndarray, np.ndarray]:
    """All shards as (metadata columns, image embeddings, caption embeddings), rows in corpus
    order (by ``index``), caption rows following their images."""
    metas, imgs, texts = [], [], []
    for s in read_shards(folder):
        metas.append(s.meta.to_pydict())
        imgs.append(np.asarray(s.img_emb))
        texts.append((np.asarray(s.text_emb), s.meta.column("text_offset").to_pylist(), s.meta.column("n_captions").to_pylist()))
    if not metas:
        return {}, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    cols = {k: [v for m in metas for v in m[k]] for k in metas[0]}
    img = np.concatenate(imgs)
    text_rows = [t[o : o + n] for t, offs, ns in texts for o, n in zip(offs, ns)]
    order = np.argsort(cols["index"], kind="stable")
    cols = {k: [v[i] for i in order] for k, v in cols.items()}
    dim = img.shape[1]
    text = np.concatenate([text_rows[i] for i in order]) if text_rows else np.zeros((0, dim), np.float32)
    return cols, img[order], text
