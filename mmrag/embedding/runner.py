"""runner: the shard runner (reader rows -> mapper -> writer) and the jobs built on it.

:func:`run_embedding` embeds a corpus into an embeddings folder with a distributor;
:func:`index_from_embeddings` fills an index from that folder, making the same decisions as the
sequential indexer (:mod:`mmrag.indexer`), so both paths give the same index.
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
from mmrag.errors import IndexError_
from mmrag.inference.distributor import create_distributor
from mmrag.inference.mapper import EmbeddingMapper
from mmrag.inference.reader import batch_rows, item_records
from mmrag.inference.writer import META_DIR, ShardWriter, read_shards, shard_names

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


class ShardRunner:
    """One batch of rows -> one shard on disk. Ray builds one per actor (``map_batches`` with a
    callable class), so the encoder is loaded once per actor, not per batch."""

    def __init__(self, out_folder: str, encoder_name: str, encoder_options: dict[str, Any] | None = None,
                 embed_batch_size: int = 32, encoder=None):
        self.mapper = EmbeddingMapper(encoder, encoder_name, encoder_options, embed_batch_size)
        self.writer = ShardWriter(out_folder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch_rows(batch)
        if not rows:
            return {"shard": np.asarray([], object), "rows": np.asarray([], np.int64),
                    "errors": np.asarray([], np.int64), "captions": np.asarray([], np.int64)}
        shard = f"{min(int(r['index']) for r in rows):010d}"  # unique: every row is in one batch
        s = self.writer.write(shard, self.mapper(rows))
        return {"shard": np.asarray([s["shard"]], object), "rows": np.asarray([s["rows"]]),
                "errors": np.asarray([s["errors"]]), "captions": np.asarray([s["captions"]])}


def _fingerprint(records: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['index']}\0{r['id']}\0{r['path']}\n".encode("utf-8"))
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
                     "encoder_options": encoder_options or {}, "embed_batch_size": job.embed_batch_size}
    t0 = time.perf_counter()
    shards = dist.run(pending, runner_kwargs, job.shard_size, encoder=encoder, progress=job.progress)
    wanted = len(records) if only is None else sum(1 for r in records if r["id"] in only)
    return {"folder": str(folder), "items": wanted, "resumed": wanted - len(pending),
            "embedded": len(pending), "shards_written": len(shards), "shards": len(shard_names(folder)),
            "errors": sum(s["errors"] for s in shards), "seconds": round(time.perf_counter() - t0, 3),
            "distributor": job.distributor}


def index_from_embeddings(folder: str | Path, col, report, known: dict[str, str], batch_size: int = 256,
                          only: set[str] | None = None, progress: bool = True) -> None:
    """Add the shards' images and captions to Collection ``col`` in corpus order, batch by batch,
    with the sequential indexer's rules: an unreadable image is skipped with its reason, an image
    whose bytes are already indexed (``known``: sha256 -> id) is a duplicate, captions are
    committed before their images. ``only``: restrict to these image ids."""
    from mmrag.indexer import _skip

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
            fresh, failed = [], []
            for _, si, ri in batch:  # as the indexer: unreadable files and duplicates first...
                c = cols[si]
                err, sha, path = c["error"][ri], c["sha256"][ri], c["path"][ri]
                if err and not sha:
                    _skip(col, report, path, err)
                    continue
                if sha in known:
                    report.duplicates += 1
                    _skip(col, report, path, f"duplicate of {known[sha]} (same bytes)")
                    continue
                if err:  # ...then the images the encoder could not decode
                    failed.append((path, err))
                    continue
                known[sha] = c["id"][ri]
                fresh.append((si, ri))
            for path, err in failed:
                _skip(col, report, path, err)
            if fresh:
                _add_rows(col, shards, cols, fresh, report)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def _add_rows(col, shards, cols, rows: list[tuple[int, int]], report) -> None:
    cap_ids, cap_vecs, cap_meta, img_ids, img_vecs, img_meta = [], [], [], [], [], []
    for si, ri in rows:
        c, s = cols[si], shards[si]
        id_, split = c["id"][ri], c["split"][ri] or None
        caps = c["captions"][ri]
        off, n = c["text_offset"][ri], c["n_captions"][ri]
        prior = c["caption_prior"][ri] or []
        for k, text in enumerate(caps[:n]):
            cap_ids.append(f"{id_}#{k}")
            m = {"image_id": id_, "text": text, "split": split}
            if prior:
                m["prior"] = round(float(prior[k]), 6)
            cap_meta.append(m)
        if n:
            cap_vecs.append(np.asarray(s.text_emb[off : off + n]))
        img_ids.append(id_)
        img_vecs.append(np.asarray(s.img_emb[ri]))
        img_meta.append({"path": c["path"][ri], "captions": caps, "split": split, "sha256": c["sha256"][ri],
                         **json.loads(c["metadata"][ri])})
    if cap_ids:
        col.captions.add(cap_ids, np.concatenate(cap_vecs), cap_meta)
        report.captions_added += len(cap_ids)
    col.images.add(img_ids, np.stack(img_vecs), img_meta)
    report.added += len(img_ids)


def index_with_engine(col, encoder, items: list[CorpusItem], todo: list[CorpusItem], known: dict[str, str],
                      report, config) -> dict:
    """The indexer's ``--engine`` path: embed ``todo`` (the corpus ``items`` not yet indexed) into
    ``<index>/embeddings`` with the chosen distributor, keeping the shards of an interrupted
    run over the same corpus, then index from the shards."""
    job = EmbeddingJob(distributor=config.engine, ray_address=config.ray_address, num_workers=config.num_workers,
                       shard_size=config.shard_size, embed_batch_size=config.embed_batch_size,
                       progress=config.progress)
    folder = Path(config.embeddings_dir) if config.embeddings_dir else col.root / "embeddings"
    only = {it.id for it in todo}
    summary = run_embedding(items, folder, encoder=encoder, job=job, overwrite=True, only=only)
    index_from_embeddings(folder, col, report, known, batch_size=config.batch_size, only=only,
                          progress=config.progress)
    return summary


__all__ = ["EmbeddingJob", "ShardRunner", "run_embedding", "index_from_embeddings", "index_with_engine"]
