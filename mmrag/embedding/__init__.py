"""Batch embedding and indexing: reader -> mapper -> writer, driven by a runner with a swappable
distributor (``sequential`` in this process, ``ray`` on a Ray cluster).

    reader.py       corpus items -> flat rows
    mapper.py       rows -> hashes, image and caption vectors, caption priors (one encoder)
    committer.py    the index rules: unreadable skipped, duplicates by sha256, captions first
    writer.py       CollectionWriter (commit into an index now) | ShardWriter (embedding shards)
    distributor.py  who runs the runner: sequential | ray
    runner.py       EmbeddingRunner, run_embedding (corpus -> shards), index_from_embeddings
    indexing.py     build_index: the local path (sequential + CollectionWriter) or ray + shards

The shards (clip-retrieval layout):

    EMB_DIR/
      manifest.json               encoder name + options, dim, the job's item fingerprint
      img_emb/img_emb_<S>.npy     float32 [n, dim], one row per image of shard S
      text_emb/text_emb_<S>.npy   float32 [m, dim], the captions of shard S's readable images
      metadata/metadata_<S>.parquet  one row per image (aligned with img_emb): corpus index, id,
                                  path, source, split, captions, metadata (JSON), sha256, error,
                                  text_offset/n_captions into text_emb, caption priors

A shard's parquet file is written last (atomically), so a shard exists once it is complete and
an interrupted job resumes with the images no shard holds yet. :func:`index_from_embeddings`
then fills an index from the shards with the committer the local path uses, so both give the
same index.
"""

from mmrag.embedding.committer import Committer, IndexReport
from mmrag.embedding.distributor import DISTRIBUTORS, Distributor, create_distributor
from mmrag.embedding.indexing import IndexConfig, build_index
from mmrag.embedding.mapper import EmbeddingMapper, MappedBatch, file_sha256
from mmrag.embedding.reader import item_records
from mmrag.embedding.runner import EmbeddingJob, EmbeddingRunner, index_from_embeddings, run_embedding
from mmrag.embedding.writer import CollectionWriter, ShardWriter, load_embeddings, read_shards

__all__ = [
    "IndexConfig", "IndexReport", "build_index", "Committer", "DISTRIBUTORS", "Distributor",
    "create_distributor", "EmbeddingMapper", "MappedBatch", "file_sha256", "item_records", "EmbeddingJob",
    "EmbeddingRunner", "index_from_embeddings", "run_embedding", "CollectionWriter", "ShardWriter",
    "load_embeddings", "read_shards",
]
