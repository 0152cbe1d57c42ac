"""Batch embedding in the clip-retrieval layout: reader -> mapper -> writer, driven by a runner
with a swappable distributor (``sequential`` in this process, ``ray`` on a Ray cluster).

    EMB_DIR/
      manifest.json               encoder name + options, dim, the job's item fingerprint
      img_emb/img_emb_<S>.npy     float32 [n, dim], one row per image of shard S
      text_emb/text_emb_<S>.npy   float32 [m, dim], the captions of shard S's readable images
      metadata/metadata_<S>.parquet  one row per image (aligned with img_emb): corpus index, id,
                                  path, split, captions, metadata (JSON), sha256, error,
                                  text_offset/n_captions into text_emb, caption priors

A shard's parquet file is written last (atomically), so a shard exists once it is complete and
an interrupted job resumes with the images no shard holds yet. :func:`index_from_embeddings`
then fills an index from the shards with exactly the sequential indexer's decisions
(duplicates by content hash, unreadable images skipped with the reason, captions first).
"""

from mmrag.inference.distributor import DISTRIBUTORS, Distributor, create_distributor
from mmrag.inference.reader import item_records
from mmrag.inference.runner import EmbeddingJob, ShardRunner, index_from_embeddings, run_embedding
from mmrag.inference.writer import ShardWriter, load_embeddings, read_shards

__all__ = [
    "DISTRIBUTORS", "Distributor", "create_distributor", "item_records", "EmbeddingJob", "ShardRunner",
    "index_from_embeddings", "run_embedding", "ShardWriter", "load_embeddings", "read_shards",
]
