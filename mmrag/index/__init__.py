"""Vector index: the VectorStore protocol and its backends, chosen by name."""

from mmrag.index.base import VECTOR_STORES, Hit, VectorStore, open_store

__all__ = ["VECTOR_STORES", "Hit", "VectorStore", "open_store"]

from mmrag.index import faiss_store  # noqa: E402,F401  (registers "faiss")
from mmrag.index import milvus_store  # noqa: E402,F401  (registers "milvus"; pymilvus is imported on first use)
