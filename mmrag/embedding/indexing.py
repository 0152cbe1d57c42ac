"""corpus -> embeddings -> index: the indexing job, resumable and safe to kill.

Work goes in batches. For each batch: read and hash the image files, drop duplicates (same
bytes as an image already indexed), embed the images (unreadable ones are skipped with a
reason), commit caption vectors, then commit image vectors. A batch is visible only once its
image vectors are committed, so a rerun after a crash re-does at most one batch.

Both engines run the same runner (reader rows -> mapper -> writer) and commit with the same
:class:`~mmrag.embedding.committer.Committer`; only the distributor and its writer differ:
``sequential`` embeds here and its writer commits each batch straight into the index; ``ray``
embeds on actors into embedding shards (clip-retrieval layout), then the index is filled from them.

Re-indexing the same corpus brings the index up to date with the files:

* an indexed image whose file size or mtime changed is hashed again; new bytes are re-embedded
  (its old vector stays until the new one replaces it), same bytes only refresh size/mtime;
  new captions (an edited sidecar ``.txt``) or a new split re-commit the image with them;
* an indexed image whose file is gone, or is now empty, is removed (``IndexConfig.prune``, on by default) -- only
  when its path lies under the corpus root being indexed and no longer exists on disk, so a
  ``--limit`` run, another split, or another source of the same index never deletes anything;
  pruning runs first, so a file moved (deleted + added under another name) is indexed anew
  rather than refused as a duplicate of its old self.

One writer at a time: the run holds the index directory's lock
(:func:`mmrag.index.collection.write_lock`) from start to end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmrag import __version__
from mmrag.corpus.items import Corpus, CorpusItem
from mmrag.embedding.committer import Committer, IndexReport, indexed_hashes, indexed_metadata
from mmrag.embedding.distributor import create_distributor
from mmrag.embedding.enrich import backfill, create_enrichers
from mmrag.embedding.mapper import file_sha256
from mmrag.embedding.reader import MTIME_KEY, SIZE_KEY, cap_captions, file_stat, item_records
from mmrag.embedding.runner import EmbeddingJob, EmbeddingRunner, commit_shards, run_embedding
from mmrag.embedding.writer import CollectionWriter
from mmrag.encoders.base import Encoder
from mmrag.errors import CorpusError
from mmrag.index.collection import Collection, IndexManifest, write_lock


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
    prune: bool = True              # remove indexed images whose file under the corpus root is gone
    wait: bool = False              # another writer holds the index: wait for it (else refuse)
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
    with write_lock(out_dir, wait=config.wait):
        return _build_locked(corpus, out_dir, encoder, config, on_progress)


def _build_locked(corpus: Corpus, out_dir: str | Path, encoder: Encoder, config: IndexConfig,
                  on_progress: Callable[[int, int], None] | None) -> IndexReport:
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
    try:
        metas = indexed_metadata(col)
        known = indexed_hashes(col, metas)
        items, capped = cap_captions(corpus.items)
        if config.prune:
            _prune(col, corpus, metas, known, report)
        todo, replacing = _changes(col, items, metas, known)
        committer = Committer(col, report, known, replacing)
        for s in corpus.skipped:
            committer.skip(s.source, s.reason)
        for s in corpus.warnings:
            committer.skip(s.source, s.reason, "warning")
        for source, reason in capped:
            committer.skip(source, reason, "warning")
        report.already_indexed = len(items) - len(todo)
        if todo and config.engine == "sequential":
            create_distributor("sequential").run(
                item_records(todo), EmbeddingRunner, {"embed_batch_size": config.embed_batch_size,
                                                      "enrichers": tuple(config.enrichers)},
                config.batch_size, encoder=encoder, writer=CollectionWriter(committer),
                progress=config.progress, desc="indexing", on_progress=on_progress)
        elif todo:
            _index_from_shards(col, encoder, items, todo, committer, config)
        if config.enrichers and report.already_indexed:  # images indexed before without them
            backfill(col.images, create_enrichers(config.enrichers), [it.id for it in items if it.id in metas],
                     progress=config.progress)
    finally:
        col.save()
        report.total_images = col.images.count()
        report.total_captions = col.captions.count()
        col.close()
    return report


def _under(path: str, root: Path) -> bool:
    try:
        return Path(path).is_relative_to(root)
    except (TypeError, ValueError):
        return False


def _prune(col: Collection, corpus: Corpus, metas: dict[str, dict], known: dict[str, str],
           report: IndexReport) -> None:
    """Remove indexed images of this corpus root whose file no longer exists (see the module doc)."""
    root = Path(corpus.root).resolve()
    present = {it.id for it in corpus.items}
    # a file still there but now unusable (emptied, turned into a folder): the reader left it
    # out, and its old vector must not keep answering for it
    unusable = {s.id for s in corpus.skipped if s.id is not None}
    gone = [i for i, m in metas.items()
            if i not in present and m.get("path") and _under(m["path"], root)
            and (i in unusable or not os.path.lexists(m["path"]))]
    if not gone:
        return
    col.remove(gone)
    for i in gone:
        known.pop(metas.pop(i).get("sha256") or "", None)
    report.removed += len(gone)


def _changes(col: Collection, items: list[CorpusItem], metas: dict[str, dict],
             known: dict[str, str]) -> tuple[list[CorpusItem], dict[str, dict]]:
    """(items to embed, {id: old metadata} of those replacing an indexed image). Unchanged
    size+mtime: nothing read. Changed size/mtime but same bytes: the stored size/mtime are
    refreshed (vector kept). New bytes: re-embed; the old hash is forgotten so the new file is
    not a 'duplicate' of its old self and a later copy of the old bytes is judged on its own."""
    todo: list[CorpusItem] = []
    replacing: dict[str, dict] = {}
    touched: list[tuple[str, dict]] = []
    for it in items:
        old = metas.get(it.id)
        if old is None:
            todo.append(it)
            continue
        # a sidecar caption edited (or a manifest's captions/split changed) while the image stayed
        # the same: the stored captions and keyword text are stale, so the image is re-committed
        texts_changed = (list(it.captions) != (old.get("captions") or [])
                         or (it.split or None) != old.get("split"))
        st = file_stat(it.path)
        if (not texts_changed and st and st.get(SIZE_KEY) == old.get(SIZE_KEY)
                and st.get(MTIME_KEY) == old.get(MTIME_KEY)):
            continue
        try:
            sha = file_sha256(Path(it.path))
        except OSError:
            sha = ""  # unreadable now: re-run it through the committer, which drops the old entry
        if sha and sha == old.get("sha256") and not texts_changed:
            touched.append((it.id, {**old, **st}))
            continue
        if known.get(old.get("sha256") or "") == it.id:
            del known[old["sha256"]]
        replacing[it.id] = old
        todo.append(it)
    for a in range(0, len(touched), 1024):
        part = touched[a : a + 1024]
        ids = [i for i, _ in part]
        col.images.add(ids, col.images.vectors(ids), [m for _, m in part])
    return todo, replacing


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
