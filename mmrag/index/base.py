"""The VectorStore protocol: what every index backend (FAISS, Milvus, ...) provides.

Callers only ever use this protocol, so a backend is one registry entry, not a fork.
Ids are strings chosen by the caller; metadata is a JSON-serialisable dict per id.
Vectors are float32 and compared by inner product (unit vectors: cosine).

Other processes' writes: a store kept open (``mmrag serve``) while another process writes the
same store (``mmrag index``) sees that process's committed adds and deletes at its next
``search``, ``count``, ``keyword_search``, ``get`` or ``ids``, without a reopen (FAISS: SQLite's
``PRAGMA data_version``, then the in-memory index is reconciled; Milvus server: Strong
consistency, and the keyword side file's cache follows ``data_version`` as FAISS's does). The one
exception is the engine's, not mmrag's: a Milvus Lite *file* admits one process at a time (its
engine holds a lock for the life of the process that opened it, even after ``close``), so the
second process's open raises IndexError_ naming the file, the holder's pid and what to do (stop
it, or use a Milvus server), and changes nothing. ``tests/index/test_vector_store.py`` checks
both with a real second process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from mmrag.registry import Registry


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VectorStore(Protocol):
    dim: int
    # optional capability: keyword (BM25) search over each item's text (captions, OCR text, file
    # name, string metadata; see mmrag.index.keyword). Callers check this flag before calling
    # keyword_search, which raises IndexError_ on a store without it.
    supports_keyword: bool

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """Insert (or replace) vectors; returns how many were added. Durable once it returns."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ids; returns how many existed."""

    def search(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """For each query row, the k best hits, best first. ``filter``: metadata key == value
        (a list value means 'any of')."""

    def keyword_search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The k best keyword matches of ``query`` (score: BM25, higher is better), best first;
        [] when nothing matches or the query has no usable word."""

    def has_keyword_text(self) -> bool:
        """Whether any item has searchable text beyond its file name."""

    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    def vectors(self, ids: Sequence[str]) -> np.ndarray: ...

    def ids(self) -> list[str]: ...

    def count(self) -> int: ...

    def __contains__(self, id: str) -> bool: ...

    def save(self) -> None:
        """Flush to disk atomically (a crash leaves the previous or the new state, never half)."""

    def close(self) -> None: ...


VECTOR_STORES: Registry[VectorStore] = Registry("vector store", entry_points="mmrag.stores")


def open_store(backend: str, path: str | Path, dim: int, **options) -> VectorStore:
    """Open (creating if needed) a store by backend name, e.g. ``open_store("faiss", dir, 384)``."""
    import mmrag.index  # noqa: F401  (registers the built-in backends)

    return VECTOR_STORES.create(backend, path=Path(path), dim=dim, **options)
