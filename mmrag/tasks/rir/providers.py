"""Reverse image search providers: an image in, the most similar known images out.

Registry names (:data:`PROVIDERS`, :func:`create_provider`):

``index`` (default)
    A local mmrag index (``mmrag index`` / :func:`mmrag.embedding.build_index`). Each neighbour
    carries the index metadata of its image: captions, ``qa`` pairs (``[{question, answer, ...}]``,
    as :func:`mmrag.corpus.vqa_rad.qa_corpus` stores them) and any other fields.
``web``
    The slot for a web reverse-image-search service (Google Lens, Bing Visual Search, TinEye, ...),
    as in the RIR paper. Such services need network access, an API key and their terms of use;
    mmrag ships no client and no scraping code, so this provider raises
    :class:`ProviderUnavailableError` saying so. To add one, implement
    :class:`ReverseSearchProvider` (``search`` returning :class:`Neighbour` rows whose ``texts``
    hold the page titles / captions found) and register it:
    ``@PROVIDERS.register("my-web")``.

The query image itself can be left out of the results (``exclude_ids`` and
``exclude_same_bytes``): neighbours are then other images only.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.errors import MmragError
from mmrag.registry import Registry

__all__ = ["Neighbour", "ReverseSearchProvider", "PROVIDERS", "create_provider", "IndexProvider",
           "WebProvider", "ProviderUnavailableError", "image_sha256"]


class ProviderUnavailableError(MmragError):
    """A reverse-search provider cannot run here (offline, not configured)."""


@dataclass
class Neighbour:
    """A similar image found by a provider. ``similarity``: cosine of the image embeddings (for
    the index provider); ``captions``/``qa``: what is known about it; ``metadata``: the rest."""

    id: str
    similarity: float
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "similarity": round(float(self.similarity), 6), "captions": self.captions,
                "qa": self.qa, "path": self.path, "metadata": self.metadata}


class ReverseSearchProvider(ABC):
    """Finds images similar to a query image. ``encoder``: the encoder of its vector space, or
    None for a provider without one (its knowledge then cannot be searched by question);
    ``all_metadata``: what it knows about its images, for the answerers' QA bank."""

    name: str
    encoder: Any = None

    def all_metadata(self) -> list[tuple[str, dict[str, Any]]]:
        return []

    def close(self) -> None:
        """Release what the provider holds (an open index). No-op by default."""

    @abstractmethod
    def search(self, image: Any = None, k: int = 5, *, vector: np.ndarray | None = None,
               exclude_ids: Sequence[str] = (), exclude_same_bytes: bool = False) -> list[Neighbour]:
        """The ``k`` most similar images to ``image`` (a path, bytes or PIL image) or to a
        precomputed ``vector``, best first, without ``exclude_ids`` (and, with
        ``exclude_same_bytes``, without images whose file bytes equal the query's)."""


PROVIDERS: Registry[ReverseSearchProvider] = Registry("reverse search provider")


def create_provider(name: str = "index", **kwargs) -> ReverseSearchProvider:
    """Build a provider by registry name, e.g. ``create_provider("index", index_dir=IDX)``."""
    return PROVIDERS.create(name, **kwargs)


def image_sha256(image: Any) -> str | None:
    """SHA-256 of an image file or bytes (as the indexer stores it); None for other inputs."""
    if isinstance(image, (str, Path)):
        h = hashlib.sha256()
        with open(image, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    return None


_KNOWN_KEYS = ("captions", "qa", "path", "sha256", "split")


class IndexProvider(ReverseSearchProvider):
    """Reverse image search over a local mmrag index (image -> image, cosine)."""

    name = "index"

    def __init__(self, index_dir: str | Path | None = None, searcher=None, encoder=None):
        if searcher is None:
            if index_dir is None:
                raise ValueError("give index_dir or searcher")
            from mmrag.retrieval import Searcher

            searcher = Searcher(index_dir, encoder=encoder)
        self.searcher = searcher

    @property
    def encoder(self):
        return self.searcher.encoder

    def embed(self, image: Any) -> np.ndarray:
        return self.searcher.query_vector(image=image)

    def search(self, image: Any = None, k: int = 5, *, vector: np.ndarray | None = None,
               exclude_ids: Sequence[str] = (), exclude_same_bytes: bool = False) -> list[Neighbour]:
        if k <= 0:
            return []
        if vector is None:
            if image is None:
                raise ValueError("give an image or a vector")
            vector = self.embed(image)
        excluded = set(exclude_ids)
        digest = image_sha256(image) if exclude_same_bytes and image is not None else None
        # Over-fetch so that k remain after the exclusions.
        hits = self.searcher.search_vectors(np.asarray(vector, np.float32)[None], k=k + len(excluded) + 2)[0]
        out = []
        for h in hits:
            m = h.metadata or {}
            if h.id in excluded or (digest and m.get("sha256") == digest):
                continue
            out.append(Neighbour(id=h.id, similarity=float(h.score), captions=list(m.get("captions") or []),
                                 qa=list(m.get("qa") or []), path=m.get("path"),
                                 metadata={key: v for key, v in m.items() if key not in _KNOWN_KEYS}))
            if len(out) == k:
                break
        return out

    def all_metadata(self) -> list[tuple[str, dict[str, Any]]]:
        """(id, metadata) of every image of the index (the knowledge the answerers may use)."""
        ids = sorted(self.searcher.ids())
        return [(i, m or {}) for i, m in zip(ids, self.searcher.metadata(ids))]

    def close(self) -> None:
        self.searcher.close()


class WebProvider(ReverseSearchProvider):
    """The documented slot for a web reverse-image-search service; always unavailable offline."""

    name = "web"

    def __init__(self, **_options: Any):
        raise ProviderUnavailableError(
            "the `web` reverse-search provider is a slot, not a client: mmrag ships no web "
            "reverse-image-search code (it needs network access, an API key and the service's "
            "terms). Use the local index provider (`--index IDX`), or implement "
            "ReverseSearchProvider for your service and register it in "
            "mmrag.tasks.rir.providers.PROVIDERS"
        )

    def search(self, *args, **kwargs) -> list[Neighbour]:  # pragma: no cover - never constructed
        raise ProviderUnavailableError("web reverse image search is not available")


@PROVIDERS.register("index")
def _make_index(**kwargs) -> IndexProvider:
    return IndexProvider(**kwargs)


@PROVIDERS.register("web")
def _make_web(**kwargs) -> WebProvider:
    return WebProvider(**kwargs)

