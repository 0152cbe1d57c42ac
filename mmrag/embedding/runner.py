"""runner: the embedding runner (reader rows -> mapper -> writer) and the jobs built on it.

:func:`run_embedding` embeds a corpus into an embeddings folder (shards) with a distributor;
:func:`index_from_embeddings` fills an index from that folder with the
:class:`~mmrag.embedding.committer.Committer` the local path commits with, so both paths give
the same index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.corpus.items import CorpusItem
from mmrag.embedding.committer import Committer, IndexReport
from mmrag.embedding.distributor import create_distributor
from mmrag.embedding.mapper import EmbeddingMapper, MappedBatch
from mmrag.embedding.reader import batch_rows, item_records
from mmrag.embedding.writer import META_DIR, ShardWriter, read_shards, shard_names
from mmrag.errors import IndexError_

MANIFEST = "manifest.json"


@dataclass
class EmbeddingJob:
    """How to embed: which distributor, how big a shard, how many workers."""

    distributor: str = "sequential"  # or "ray"
    ray_address: str | None = None   # ray: None = local runtime, "auto", "ray://head:10001"
    num_workers: int = 2             # ray: actors, each with its own encoder
    shard_size: int = 1000           # images per shard (the unit of work and of resume)
    embed_batch_size: int = 32
    progress: bool = True
    distributor_options: dict[str, Any] = field(default_factory=dict)
    enrichers: tuple[str, ...] = ()  # names (mmrag.embedding.enrich), run per image by each mapper


class EmbeddingRunner:
    """One batch of rows -> mapper -> writer (by default a shard on disk under ``out_folder``).
    Ray builds one per actor (``map_batches`` with a callable class), so the encoder is loaded
    once per actor, not per batch; in-process, ``encoder`` and ``writer`` may be given."""

    def __init__(self, out_folder: str | None = None, encoder_name: str = "effnet-minilm",
                 encoder_options: dict[str, Any] | None = None, embed_batch_size: int = 32,
                 encoder=None, writer=None, on_rows=None, enrichers: Sequence[str] = ()):
        if writer is None and out_folder is None:
            raise ValueError("give an out_folder (shards) or a writer")
        self.mapper = EmbeddingMapper(encoder, encoder_name, encoder_options, embed_batch_size, on_rows, enrichers)
        self.writer = writer if writer is not None else ShardWriter(out_folder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch_rows(batch)
        if not rows:
            return {"shard": np.asarray([], object), "rows": np.asarray([], np.int64),
                    "errors": np.asarray([], np.int64), "captions": np.asarray([], np.int64)}
        shard = f"{min(int(r['index']) for r in rows):010d}"  # unique: every row is in one batch
        s = self.writer.write(shard, self.mapper(rows, admit=self.writer.admit))
        return {"shard": np.asarray([s["shard"]], object), "rows": np.asarray([s["rows"]]),
                "errors": np.asarray([s["errors"]]), "captions": np.asarray([s["captions"]])}


def _fingerprint(records: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        # the metadata holds the file's size and mtime: a changed file invalidates old shards
        h.update(f"{r['index']}\0{r['id']}\0{r['path']}\0{r['metadata']}\n".encode("utf-8"))
    return h.hexdigest()


def _done_indices(folder: Path) -> set[int]:
    done: set[int] = set()
    for s in read_shards(folder):
        done.update(s.meta.column("index").to_pylist())
    return done


def run_embedding(items: Sequence[CorpusItem], out_folder: str | Path, encoder=None,
                  encoder_name: str | None = None, encoder_options: dict[str, Any] | None = None,
                  job: EmbeddingJob | None = None, overwrite: bool = False,
                  only: set[str] | None = None) -> dict[str, Any]:
    """Embed ``items`` (images and their captions) into shards under ``out_folder``.

    ``only``: embed just these ids (the folder still belongs to the whole of ``items``, so a
    later run over the same corpus reuses its shards).

    Pass a loaded ``encoder`` or an ``encoder_name`` (+ options); Ray workers always build their
    own from the name and options (``encoder.spec()``). Rerunning the same job resumes: shards
    already written are kept. A folder holding another job's shards is refused unless
    ``overwrite`` (then it is cleared).
    """
    job = job or EmbeddingJob()
    if encoder is not None:
        encoder_name, encoder_options = encoder.spec()
        dim = encoder.dim
    elif encoder_name is None:
        raise ValueError("give an encoder or an encoder_name")
    else:
        dim = None
    folder = Path(out_folder)
    records = item_records(items)
    manifest = {"format": 1, "encoder": encoder_name, "encoder_options": encoder_options or {},
                "items": len(records), "fingerprint": _fingerprint(records), "layout": "clip-retrieval"}
    mpath = folder / MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        same = all(old.get(k) == manifest[k] for k in ("encoder", "encoder_options", "fingerprint"))
        if not same:
            if not overwrite:
                raise IndexError_(f"{folder} holds embeddings of another corpus or encoder; "
                                  "choose another folder or delete it")
            for d in ("img_emb", "text_emb", META_DIR):
                shutil.rmtree(folder / d, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**manifest, "dim": dim, "created": time.time()}, indent=2), encoding="utf-8")
    os.replace(tmp, mpath)

    done = _done_indices(folder)
    pending = [r for r in records if r["index"] not in done and (only is None or r["id"] in only)]
    dist = create_distributor(job.distributor, address=job.ray_address, num_workers=job.num_workers,
                              **job.distributor_options) if job.distributor == "ray" else create_distributor(job.distributor)
    runner_kwargs = {"out_folder": str(folder.resolve()), "encoder_name": encoder_name,
                     "encoder_options": encoder_options or {}, "embed_batch_size": job.embed_batch_size,
                     "enrichers": tuple(job.enrichers)}
    t0 = time.perf_counter()
    shards = dist.run(pending, EmbeddingRunner, runner_kwargs, job.shard_size, encoder=encoder, progress=job.progress)
    wanted = len(records) if only is None else sum(1 for r in records if r["id"] in only)
    return {"folder": str(folder), "items": wanted, "resumed": wanted - len(pending),
            "embedded": len(pending), "shards_written": len(shards), "shards": len(shard_names(folder)),
            "errors": sum(s["errors"] for s in shards), "seconds": round(time.perf_counter() - t0, 3),
            "distributor": job.distributor}


def index_from_embeddings(folder: str | Path, col, report: IndexReport, known: dict[str, str],
                          batch_size: int = 256, only: set[str] | None = None, progress: bool = True) -> None:
    """Add the shards' images and captions to Collection ``col`` in corpus order, batch by batch,
    with the local path's :class:`~mmrag.embedding.committer.Committer` (``known``: sha256 -> id
    of what is indexed). ``only``: restrict to these image ids."""
    commit_shards(folder, Committer(col, report, known), batch_size, only, progress)


def commit_shards(folder: str | Path, committer: Committer, batch_size: int = 256,
                  only: set[str] | None = None, progress: bool = True) -> None:
    """:func:`index_from_embeddings` with a given committer."""
    shards = list(read_shards(folder))
    order: list[tuple[int, int, int]] = []  # (corpus index, shard, row)
    for si, s in enumerate(shards):
        ids = s.meta.column("id").to_pylist()
        for ri, (idx, id_) in enumerate(zip(s.meta.column("index").to_pylist(), ids)):
            if only is None or id_ in only:
                order.append((idx, si, ri))
    order.sort()
    cols = [s.meta.to_pydict() for s in shards]
    bar = None
    if progress and order:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="indexing", unit="img", file=sys.stderr)
    try:
        for a in range(0, len(order), batch_size):
            batch = order[a : a + batch_size]
            committer.add(_shard_batch(shards, cols, [(si, ri) for _, si, ri in batch]))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def _shard_batch(shards, cols, picks: list[tuple[int, int]]) -> MappedBatch:
    """Rows of several shards as one mapped batch (what the mapper gave for them)."""
    rows, img, sha, errors, text, n_caps, priors, image_prior = [], [], [], [], [], [], [], []
    for si, ri in picks:
        c, s = cols[si], shards[si]
        rows.append({"index": c["index"][ri], "id": c["id"][ri], "path": c["path"][ri], "source": c["source"][ri],
                     "captions": json.dumps(c["captions"][ri], ensure_ascii=False), "split": c["split"][ri],
                     "metadata": c["metadata"][ri]})
        img.append(np.asarray(s.img_emb[ri]))
        sha.append(c["sha256"][ri])
        errors.append(c["error"][ri])
        off, n = int(c["text_offset"][ri]), int(c["n_captions"][ri])
        text.append(np.asarray(s.text_emb[off : off + n]))
        n_caps.append(n)
        priors.append(c["caption_prior"][ri] or [])
        image_prior.append(c["image_prior"][ri] if "image_prior" in c else None)  # (older shards have none)
    dim = shards[picks[0][0]].img_emb.shape[1] if picks else 0
    return MappedBatch(rows, np.stack(img) if img else np.zeros((0, dim), np.float32), sha, errors,
                       np.concatenate(text) if text else np.zeros((0, dim), np.float32), n_caps, priors,
                       image_prior=image_prior)


__all__ = ["EmbeddingJob", "EmbeddingRunner", "run_embedding", "index_from_embeddings", "commit_shards"]
