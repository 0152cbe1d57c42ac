"""The retrieval layer tasks and the service use instead of the index's stores: a
:class:`Searcher` over an index, :class:`ExactIndex` (brute-force top-k over a matrix), the
shared embedding cache, and the caption datastore."""

from mmrag.retrieval.cache import (
    CachedTextEmbedder,
    EmbeddingCache,
    cache_key,
    cached_vectors,
    corpus_image_vectors,
    encoder_cache_key,
)
from mmrag.retrieval.datastore import CaptionDatastore, CaptionHit, DatastoreError, default_datastore
from mmrag.retrieval.exact import ExactIndex, select_k, top_k
from mmrag.retrieval.searcher import Searcher

__all__ = [
    "CachedTextEmbedder",
    "CaptionDatastore",
    "CaptionHit",
    "DatastoreError",
    "EmbeddingCache",
    "ExactIndex",
    "Searcher",
    "cache_key",
    "cached_vectors",
    "corpus_image_vectors",
    "default_datastore",
    "encoder_cache_key",
    "select_k",
    "top_k",
]
