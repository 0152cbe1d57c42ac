"""Retrieval over an index: text->image, image->image, image->caption, text+image, and the
lookups tasks and the service need (metadata, vectors, caption ids, counts), so no caller
reaches into the index's stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.encoders.base import Encoder, ImageInput, create_encoder, l2_normalize
from mmrag.errors import InvalidInputError
from mmrag.index.base import Hit, VectorStore
from mmrag.index.collection import Collection, IndexManifest

TARGETS = ("images", "captions")


def check_query(text: str | None = None, image: Any = None, weight: float = 0.5, k: int = 10) -> None:
    """Raise :class:`InvalidInputError` for a query that cannot run -- cheap, so callers can
    check before loading a model."""
    if text is None and image is None:
        raise InvalidInputError("give a text, an image, or both")
    if text is not None and not text.strip():
        raise InvalidInputError("empty text query")
    if not 0.0 <= weight <= 1.0:  # also False for NaN
        raise InvalidInputError(f"weight must be within [0, 1], got {weight}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a whole number >= 1, got {k}")


class Searcher:
    """Opens an index and the encoder that built it; answers queries.

    ``encoder`` may be passed to share one loaded model between several indexes.
    """

    def __init__(self, index_dir: str | Path, encoder: Encoder | None = None):
        self.collection = Collection.open(index_dir)
        m = self.collection.manifest
        self.encoder = encoder or create_encoder(m.encoder, **m.encoder_options)
        if self.encoder.dim != m.dim:
            raise ValueError(f"encoder dim {self.encoder.dim} != index dim {m.dim}")

    # ------------------------------------------------------------------ queries
    def query_vector(self, text: str | None = None, image: ImageInput | None = None, weight: float = 0.5) -> np.ndarray:
        """One unit query vector. With both text and image: ``weight`` on the text side."""
        check_query(text, image, weight)
        parts = []
        if text is not None:
            parts.append((weight if image is not None else 1.0, self.encoder.embed_texts([text])[0]))
        if image is not None:
            parts.append((1.0 - weight if text is not None else 1.0, self.encoder.embed_images([image])[0]))
        return l2_normalize(sum(w * v for w, v in parts)[None])[0]

    def search(self, text: str | None = None, image: ImageInput | None = None, k: int = 10,
               weight: float = 0.5, target: str = "images", filter: dict[str, Any] | None = None) -> list[Hit]:
        """``target``: "images" (text->image, image->image, both) or "captions" (image->caption)."""
        check_query(text, image, weight, k)
        store = self._store(target)
        q = self.query_vector(text, image, weight)
        if target == "captions" and image is not None and text is None:
            return self.captions_for_image_vector(q, k, filter)
        return store.search(q[None], k=k, filter=filter)[0]

    def captions_for_image_vector(self, q: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        """image->caption with the captions' hubness prior (score = cos - prior), when the index
        has one: fetch a generous candidate set by cosine, then re-rank."""
        hits = self.collection.captions.search(np.asarray(q, np.float32)[None], k=max(10 * k, 100), filter=filter)[0]
        if not hits or "prior" not in hits[0].metadata:
            return hits[:k]
        for h in hits:
            h.metadata["cosine"] = h.score
            h.score = float(h.score - h.metadata["prior"])
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def search_vectors(self, vectors: np.ndarray, k: int = 10, target: str = "images",
                       filter: dict[str, Any] | None = None) -> list[list[Hit]]:
        """For each query row, the ``k`` best hits of ``target`` (images, captions or an extra
        store such as document chunks) by inner product, best first."""
        return self._store(target).search(np.asarray(vectors, np.float32), k=k, filter=filter)

    # ------------------------------------------------------------------ lookups
    @property
    def manifest(self) -> IndexManifest:
        return self.collection.manifest

    @property
    def dim(self) -> int:
        return self.collection.manifest.dim

    def ids(self, target: str = "images") -> list[str]:
        """Every id of ``target``."""
        return self._store(target).ids()

    def count(self, target: str = "images") -> int:
        return self._store(target).count()

    def has(self, id: str, target: str = "images") -> bool:
        return isinstance(id, str) and id in self._store(target)

    def metadata(self, ids: Sequence[str], target: str = "images") -> list[dict[str, Any] | None]:
        """Metadata of each id (None where the id is not in the index)."""
        return self._store(target).get(list(ids))

    def get(self, id: str, target: str = "images") -> dict[str, Any] | None:
        """Metadata of one id, or None."""
        return self.metadata([id], target)[0] if isinstance(id, str) else None

    def vectors(self, ids: Sequence[str], target: str = "images") -> np.ndarray:
        """``[len(ids), dim]`` stored vectors, in the order of ``ids``."""
        return self._store(target).vectors(list(ids))

    def vector(self, id: str, target: str = "images") -> np.ndarray | None:
        """One stored vector, or None when the id is not in the index."""
        return self.vectors([id], target)[0] if self.has(id, target) else None

    def caption_ids(self, image_id: str) -> list[str]:
        """Ids of the caption rows of an image (``"<image id>#<k>"``) present in the index."""
        meta = self.get(image_id)
        store = self.collection.captions
        return [cid for cid in (f"{image_id}#{k}" for k in range(len((meta or {}).get("captions") or [])))
                if cid in store]

    def info(self) -> dict[str, Any]:
        """Path, encoder, dim, backend, counts, skipped inputs and sources of the index."""
        return self.collection.info()

    def close(self) -> None:
        self.collection.close()

    def has_store(self, target: str) -> bool:
        """Whether the index has ``target``: images, captions, or an extra store (e.g. "chunks")."""
        return target in TARGETS or (isinstance(target, str) and target.isidentifier()
                                     and self.collection.has_store(target))

    def _store(self, target: str) -> VectorStore:
        if target in TARGETS:
            return getattr(self.collection, target)
        if not self.has_store(target):
            raise InvalidInputError(f"target must be 'images' or 'captions' (or an extra store the index has), "
                                    f"got {target!r}")
        return self.collection.store(target)
