"""Retrieval over an index: text->image, image->image, image->caption, text+image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmrag.encoders.base import Encoder, ImageInput, create_encoder, l2_normalize
from mmrag.index.base import Hit
from mmrag.index.collection import Collection


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

    def query_vector(self, text: str | None = None, image: ImageInput | None = None, weight: float = 0.5) -> np.ndarray:
        """One unit query vector. With both text and image: ``weight`` on the text side."""
        if text is None and image is None:
            raise ValueError("give a text, an image, or both")
        if not 0.0 <= weight <= 1.0:
            raise ValueError("weight must be within [0, 1]")
        parts = []
        if text is not None:
            if not text.strip():
                raise ValueError("empty text query")
            parts.append((weight if image is not None else 1.0, self.encoder.embed_texts([text])[0]))
        if image is not None:
            parts.append((1.0 - weight if text is not None else 1.0, self.encoder.embed_images([image])[0]))
        return l2_normalize(sum(w * v for w, v in parts)[None])[0]

    def search(self, text: str | None = None, image: ImageInput | None = None, k: int = 10,
               weight: float = 0.5, target: str = "images", filter: dict[str, Any] | None = None) -> list[Hit]:
        """``target``: "images" (text->image, image->image, both) or "captions" (image->caption)."""
        q = self.query_vector(text, image, weight)
        store = {"images": self.collection.images, "captions": self.collection.captions}.get(target)
        if store is None:
            raise ValueError("target must be 'images' or 'captions'")
        if target == "captions" and image is not None and text is None:
            return self._captions_for_image(q, k, filter)
        return store.search(q[None], k=k, filter=filter)[0]

    def _captions_for_image(self, q: np.ndarray, k: int, filter) -> list[Hit]:
        """image->caption with the captions' hubness prior (score = cos - prior), when the index
        has one: fetch a generous candidate set by cosine, then re-rank."""
        hits = self.collection.captions.search(q[None], k=max(10 * k, 100), filter=filter)[0]
        if not hits or "prior" not in hits[0].metadata:
            return hits[:k]
        for h in hits:
            h.metadata["cosine"] = h.score
            h.score = float(h.score - h.metadata["prior"])
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def search_vectors(self, vectors: np.ndarray, k: int = 10, target: str = "images",
                       filter: dict[str, Any] | None = None) -> list[list[Hit]]:
        store = self.collection.images if target == "images" else self.collection.captions
        return store.search(np.asarray(vectors, np.float32), k=k, filter=filter)

    def close(self) -> None:
        self.collection.close()
