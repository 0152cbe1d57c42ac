"""corpus -> embeddings -> index: the indexing job, resumable and safe to kill.

Work goes in batches. For each batch: read and hash the image files, drop duplicates (same
bytes as an image already indexed), embed the images (unreadable ones are skipped with a
reason), commit caption vectors, then commit image vectors. A batch is visible only once its
image vectors are committed, so a rerun after a crash re-does at most one batch.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmrag import __version__
from mmrag.corpus.items import Corpus, CorpusItem
from mmrag.encoders.base import Encoder
from mmrag.errors import CorpusError
from mmrag.index.collection import Collection, IndexManifest


@dataclass
class IndexConfig:
    batch_size: int = 256  # images per committed batch
    embed_batch_size: int = 32
    backend: str = "faiss"
    backend_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    # "sequential": embed here, batch by batch; "ray": embed with Ray Data into embedding shards
    # (clip-retrieval layout, see mmrag.inference), then index from them -- the same index.
    engine: str = "sequential"
    ray_address: str | None = None  # ray: None = local runtime, "auto", "ray://head:10001"
    num_workers: int = 2            # ray: encoder actors
    shard_size: int = 1000          # ray: images per embedding shard
    embeddings_dir: str | None = None  # ray: where shards go (default <index>/embeddings)


@dataclass
class IndexReport:
    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    captions_added: int = 0
    total_images: int = 0
    total_captions: int = 0

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "already_indexed": self.already_indexed,
            "duplicates": self.duplicates,
            "skipped": len(self.skipped),
            "skipped_reasons": [{"source": s, "reason": r} for s, r in self.skipped],
            "captions_added": self.captions_added,
            "total_images": self.total_images,
            "total_captions": self.total_captions,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_index(
    corpus: Corpus,
    out_dir: str | Path,
    encoder: Encoder,
    config: IndexConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IndexReport:
    config = config or IndexConfig()
    if not corpus.items:
        raise CorpusError(f"corpus {corpus.name!r} is empty: nothing to index")
    name, options = encoder.spec()
    manifest = IndexManifest(
        encoder=name, encoder_options=options, dim=encoder.dim, backend=config.backend,
        backend_options=config.backend_options, sources=[str(corpus.root)], mmrag_version=__version__,
    )
    col = Collection.create_or_open(out_dir, manifest)
    if str(corpus.root) not in col.manifest.sources:
        col.manifest.sources.append(str(corpus.root))
        col.manifest.save(col.root)
    report = IndexReport()
    for s in corpus.skipped:
        report.skipped.append((s.source, s.reason))
        col.record_skipped(s.source, s.reason)

    # Content hashes of what is already indexed, so identical images are stored once.
    known_hashes: dict[str, str] = {}
    existing = set(col.images.ids())
    if existing:
        for id_, meta in zip(existing, col.images.get(list(existing))):
            if meta and meta.get("sha256"):
                known_hashes[meta["sha256"]] = id_

    todo = [it for it in corpus.items if it.id not in existing]
    report.already_indexed = len(corpus.items) - len(todo)
    if config.engine != "sequential":
        from mmrag.inference.runner import index_with_engine

        try:
            if todo:
                index_with_engine(col, encoder, corpus.items, todo, known_hashes, report, config)
        finally:
            col.save()
            report.total_images = col.images.count()
            report.total_captions = col.captions.count()
            col.close()
        return report
    bar = None
    if config.progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="indexing", unit="img", file=sys.stderr)
    try:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            _index_batch(col, encoder, batch, known_hashes, report, config)
            if bar is not None:
                bar.update(len(batch))
            if on_progress is not None:
                on_progress(min(start + len(batch), len(todo)), len(todo))
    finally:
        if bar is not None:
            bar.close()
        col.save()
        report.total_images = col.images.count()
        report.total_captions = col.captions.count()
        col.close()
    return report


def _index_batch(col: Collection, encoder: Encoder, batch: list[CorpusItem], known: dict[str, str],
                 report: IndexReport, config: IndexConfig) -> None:
    fresh: list[tuple[CorpusItem, str]] = []
    for item in batch:
        try:
            digest = file_sha256(item.path)
        except OSError as e:
            _skip(col, report, str(item.path), f"cannot read file ({e.strerror or e})")
            continue
        if digest in known:
            report.duplicates += 1
            _skip(col, report, str(item.path), f"duplicate of {known[digest]} (same bytes)")
            continue
        known[digest] = item.id
        fresh.append((item, digest))
    if not fresh:
        return
    vecs, errors = _embed_images(encoder, [it.path for it, _ in fresh], config.embed_batch_size)
    good = [i for i in range(len(fresh)) if i not in errors]
    for i, reason in errors.items():
        item, digest = fresh[i]
        known.pop(digest, None)
        _skip(col, report, str(item.path), reason)
    if not good:
        return
    items = [fresh[i][0] for i in good]
    # Captions first: the image row is the batch's commit mark (see module docstring).
    cap_ids, cap_texts, cap_meta = [], [], []
    for it in items:
        for k, c in enumerate(it.captions):
            cap_ids.append(f"{it.id}#{k}")
            cap_texts.append(c)
            cap_meta.append({"image_id": it.id, "text": c, "split": it.split})
    if cap_texts:
        cap_vecs = encoder.embed_texts(cap_texts)
        prior = encoder.caption_prior(cap_vecs)
        if prior is not None:  # hubness prior for image->caption search (see Bridge.caption_prior)
            for m, p in zip(cap_meta, prior):
                m["prior"] = round(float(p), 6)
        col.captions.add(cap_ids, cap_vecs, cap_meta)
        report.captions_added += len(cap_texts)
    meta = [
        {"path": str(Path(it.path).resolve()), "captions": it.captions, "split": it.split,
         "sha256": fresh[i][1], **it.metadata}
        for i, it in zip(good, items)
    ]
    col.images.add([it.id for it in items], vecs[good], meta)
    report.added += len(items)


def _embed_images(encoder: Encoder, paths: list[Path], batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Embed, turning unreadable images into per-position errors instead of a failed batch."""
    return encoder.embed_images_safe(paths, batch_size=batch_size)


def _skip(col: Collection, report: IndexReport, source: str, reason: str) -> None:
    report.skipped.append((source, reason))
    col.record_skipped(source, reason)
