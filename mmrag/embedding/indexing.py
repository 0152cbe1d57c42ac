"""corpus -> embeddings -> index: the indexing job, resumable and safe to kill.

Work goes in batches. For each batch: read and hash the image files, drop duplicates (same
bytes as an image already indexed), embed the images (unreadable ones are skipped with a
reason), commit caption vectors, then commit image vectors. A batch is visible only once its
image vectors are committed, so a rerun after a crash re-does at most one batch.

Both engines run the same runner (reader rows -> mapper -> writer) and commit with the same
:class:`~mmrag.embedding.committer.Committer`; only the distributor and its writer differ:
``sequential`` embeds here and its writer commits each batch straight into the index; ``ray``
embeds on actors into embedding shards (clip-retrieval layout), then the index is filled from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmrag import __version__
from mmrag.corpus.items import Corpus, CorpusItem
from mmrag.embedding.committer import Committer, IndexReport, indexed_hashes
from mmrag.embedding.distributor import create_distributor
from mmrag.embedding.enrich import backfill, create_enrichers
from mmrag.embedding.reader import item_records
from mmrag.embedding.runner import EmbeddingJob, EmbeddingRunner, commit_shards, run_embedding
from mmrag.embedding.writer import CollectionWriter
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
    # "sequential": embed here, batch by batch, straight into the index; "ray": embed with Ray
    # Data into embedding shards (clip-retrieval layout, see mmrag.embedding), then index from
    # them -- the same index.
    engine: str = "sequential"
    ray_address: str | None = None  # ray: None = local runtime, "auto", "ray://head:10001"
    num_workers: int = 2            # ray: encoder actors
    shard_size: int = 1000          # ray: images per embedding shard
    embeddings_dir: str | None = None  # ray: where shards go (default <index>/embeddings)
    # per-image analyses into the metadata (mmrag.embedding.enrich: "ocr", "safety"); images
    # indexed before without them are enriched too (backfill)
    enrichers: tuple[str, ...] = ()


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
    new_enrichers = [n for n in config.enrichers if n not in col.manifest.enrichers]
    if str(corpus.root) not in col.manifest.sources or new_enrichers:
        if str(corpus.root) not in col.manifest.sources:
            col.manifest.sources.append(str(corpus.root))
        col.manifest.enrichers.extend(new_enrichers)
        col.manifest.save(col.root)
    report = IndexReport()
    committer = Committer(col, report, indexed_hashes(col))
    for s in corpus.skipped:
        committer.skip(s.source, s.reason)

    existing = set(col.images.ids())
    todo = [it for it in corpus.items if it.id not in existing]
    report.already_indexed = len(corpus.items) - len(todo)
    try:
        if todo and config.engine == "sequential":
            create_distributor("sequential").run(
                item_records(todo), EmbeddingRunner, {"embed_batch_size": config.embed_batch_size,
                                                      "enrichers": tuple(config.enrichers)},
                config.batch_size, encoder=encoder, writer=CollectionWriter(committer),
                progress=config.progress, desc="indexing", on_progress=on_progress)
        elif todo:
            _index_from_shards(col, encoder, corpus.items, todo, committer, config)
        if config.enrichers and report.already_indexed:
            backfill(col.images, create_enrichers(config.enrichers), [it.id for it in corpus.items if it.id in existing],
                     progress=config.progress)
    finally:
        col.save()
        report.total_images = col.images.count()
        report.total_captions = col.captions.count()
        col.close()
    return report


def _index_from_shards(col: Collection, encoder: Encoder, items: list[CorpusItem], todo: list[CorpusItem],
                       committer: Committer, config: IndexConfig) -> dict:
    """The distributed path: embed ``todo`` (the corpus ``items`` not yet indexed) into
    ``<index>/embeddings`` with the chosen distributor, keeping the shards of an interrupted
    run over the same corpus, then commit from the shards."""
    job = EmbeddingJob(distributor=config.engine, ray_address=config.ray_address, num_workers=config.num_workers,
                       shard_size=config.shard_size, embed_batch_size=config.embed_batch_size,
                       progress=config.progress, enrichers=tuple(config.enrichers))
    folder = Path(config.embeddings_dir) if config.embeddings_dir else col.root / "embeddings"
    only = {it.id for it in todo}
    summary = run_embedding(items, folder, encoder=encoder, job=job, overwrite=True, only=only)
    commit_shards(folder, committer, batch_size=config.batch_size, only=only, progress=config.progress)
    return summary
