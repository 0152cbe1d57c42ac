"""What the HTTP layer calls: one loaded index + encoder, queries served through micro-batchers.

:class:`SearchService` owns a :class:`~mmrag.retrieval.Searcher` and three
:class:`~mmrag.serve.batching.MicroBatcher` s, each with its own thread:

* texts  -> ``encoder.embed_texts`` (one call per batch),
* images -> ``encoder.embed_images_safe`` (decoded PIL images; one call per batch),
* vectors -> ``store.search`` (one FAISS call per batch and (target, filter) group).

A query with both text and image embeds them concurrently and combines them exactly like
:meth:`mmrag.retrieval.Searcher.query_vector` (``weight`` on the text side). With batching off every
batcher takes one item at a time, so the two modes run the same code.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from mmrag.corpus.images import open_image
from mmrag.encoders.base import Encoder, l2_normalize
from mmrag.errors import ImageError, MmragError
from mmrag.index.base import Hit
from mmrag.retrieval import Searcher
from mmrag.retrieval.searcher import HYBRID_POOL, prior_pool
from mmrag.serve.batching import MicroBatcher
from mmrag.serve.config import ServeConfig

__all__ = ["SearchService", "Query", "NotFoundError", "BadRequestError", "UnavailableError",
           "TARGETS", "public_metadata"]

TARGETS = ("images", "captions")
# Metadata never sent to clients: server file paths and content hashes.
PRIVATE_KEYS = frozenset({"path", "sha256"})


class NotFoundError(MmragError):
    """No such image, session or resource (HTTP 404)."""


class BadRequestError(MmragError):
    """The request is well-formed JSON but cannot be served as asked (HTTP 400)."""


class UnavailableError(MmragError):
    """A part the request needs is not available on this server (HTTP 503)."""


@dataclass
class Query:
    """One search: any of text, image (decoded), stored vector of ``image_id``; ``weight`` is the
    text's share when text and an image are both given."""

    text: str | None = None
    image: Image.Image | None = None
    image_id: str | None = None
    weight: float = 0.5
    k: int = 20
    target: str = "images"
    filter: dict[str, Any] | None = None
    vector: np.ndarray | None = None  # a ready query vector (clip-retrieval ``embedding_input``)
    mode: str = "vector"  # see mmrag.retrieval.searcher.MODES ("auto": hybrid when the index has text)
    safe: bool = False    # drop images the safety enricher flagged (index built with --safety)


@dataclass
class _SearchJob:
    vector: np.ndarray
    k: int
    target: str
    filter: dict[str, Any] | None
    image_only: bool = False
    text_only: bool = False  # text -> image re-ranks with the images' hubness prior


def _set_model_threads(encoder: Encoder, n: int) -> None:
    """Intra-op threads for the models: the encoder's ONNX Runtime text session (its
    ``set_threads``) and torch's process-wide count."""
    encoder.set_threads(int(n))
    try:
        import torch
    except ImportError:  # an encoder without torch
        return
    torch.set_num_threads(int(n))


def _one_faiss_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # per calling thread (OpenMP ICV)


def public_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k not in PRIVATE_KEYS}


class SearchService:
    """Loaded index + encoder + batchers. ``on_batch(kind, size, wait_s, run_s)`` feeds metrics."""

    def __init__(self, index_dir: str | Path, config: ServeConfig | None = None, encoder: Encoder | None = None,
                 on_batch: Callable[[str, int, float, float], None] | None = None):
        self.config = config or ServeConfig()
        self.index_dir = Path(index_dir)
        self.searcher = Searcher(self.index_dir, encoder=encoder)
        self.encoder = self.searcher.encoder
        size = self.config.max_batch if self.config.batching else 1
        wait = self.config.max_wait_ms if self.config.batching else 0.0

        def hook(kind: str):
            return (lambda n, w, r: on_batch(kind, n, w, r)) if on_batch else None

        if self.config.model_threads:
            _set_model_threads(self.encoder, self.config.model_threads)
        if self.config.image_threads:
            self.encoder.set_image_threads(self.config.image_threads)
        self.text_batcher = MicroBatcher(self._embed_texts, size, wait, "embed-texts", hook("embed_texts"),
                                         workers=self.config.text_workers)
        self.image_batcher = MicroBatcher(self._embed_images, min(size, 16), wait, "embed-images",
                                          hook("embed_images"))
        # Searching is quick: no waiting for company, just take what queued up meanwhile. One
        # FAISS thread: a batch is a few ms, and the other cores are embedding.
        self.search_batcher = MicroBatcher(self._search, size, 0.0, "search", hook("search"),
                                           on_start=_one_faiss_thread)
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()

    # ------------------------------------------------------------------ batch functions (worker threads)
    def _embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.embed_texts(texts))

    def _embed_images(self, images: list[Image.Image]) -> list[np.ndarray | Exception]:
        vecs, errors = self.encoder.embed_images_safe(images)
        return [ImageError(errors[i]) if i in errors else vecs[i] for i in range(len(images))]

    def _search(self, jobs: list[_SearchJob]) -> list[list[Hit] | Exception]:
        out: list[list[Hit] | Exception] = [[] for _ in jobs]
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(jobs):
            if j.target == "captions" and j.image_only:
                # image -> caption re-ranks with the hubness prior: one query at a time
                try:
                    out[i] = self.searcher.captions_for_image_vector(j.vector, j.k, j.filter)
                except (ValueError, MmragError) as e:
                    out[i] = e
                continue
            key = (j.target, json.dumps(j.filter, sort_keys=True) if j.filter else "")
            groups.setdefault(key, []).append(i)
        for (target, _), rows in groups.items():
            k = max(jobs[i].k for i in rows)
            try:
                hits = self.searcher.search_vectors(np.stack([jobs[i].vector for i in rows]), k=k,
                                                    target=target, filter=jobs[rows[0]].filter)
            except (ValueError, MmragError) as e:  # a bad filter key fails only its group
                for i in rows:
                    out[i] = BadRequestError(str(e))
                continue
            for i, h in zip(rows, hits):
                j = jobs[i]
                prior = j.text_only and target == "images"
                out[i] = self.searcher.rerank_by_image_prior(h[: j.k], j.k) if prior else h[: j.k]
        return out

    # ------------------------------------------------------------------ async API (event loop)
    async def text_vector(self, text: str) -> np.ndarray:
        return await self.text_batcher.submit(text)

    async def image_vector(self, image: Image.Image) -> np.ndarray:
        return await self.image_batcher.submit(image)

    def stored_vector(self, image_id: str) -> np.ndarray:
        v = self.searcher.vector(image_id)
        if v is None:
            raise NotFoundError(f"no image with id {image_id!r} in this index")
        return v

    async def upload_or_stored_vector(self, upload, image_id: str | None) -> tuple[bytes | None, np.ndarray]:
        """The vector of an uploaded image file (its bytes returned too) or of an indexed image by
        id: exactly one of them (the image-in routes: caption, ask)."""
        if (upload is None) == (image_id is None):
            raise BadRequestError("give an image file or an image_id (one of them)")
        if upload is None:
            return None, await asyncio.to_thread(self.stored_vector, image_id)
        raw = await upload.read()
        decoded = await asyncio.to_thread(self.decode_upload, raw)
        return raw, await self.image_vector(decoded)

    async def query_vector(self, q: Query) -> np.ndarray:
        """The unit query vector of ``q`` (text and image embedded concurrently)."""
        if q.vector is not None:
            return l2_normalize(np.asarray(q.vector, np.float32)[None])[0]
        if q.text is not None and not q.text.strip():
            q.text = None
        has_image = q.image is not None or q.image_id is not None
        if q.text is None and not has_image:
            raise BadRequestError("give a text, an image (upload or image_id), or both")
        if q.image is not None and q.image_id is not None:
            raise BadRequestError("give either an uploaded image or an image_id, not both")
        if not 0.0 <= q.weight <= 1.0:
            raise BadRequestError("weight must be within [0, 1]")
        tasks = []
        if q.text is not None:
            tasks.append(self.text_vector(q.text))
        if q.image is not None:
            tasks.append(self.image_vector(q.image))
        vecs = list(await asyncio.gather(*tasks)) if tasks else []
        if q.image_id is not None:
            vecs.append(await asyncio.to_thread(self.stored_vector, q.image_id))
        if len(vecs) == 1:
            return vecs[0]
        # each side's scores calibrated over the index, as Searcher.query_vector does
        return await asyncio.to_thread(self.searcher.mix, vecs[0], vecs[1], q.weight, q.target)

    async def search(self, q: Query) -> list[Hit]:
        if q.target not in TARGETS:
            raise BadRequestError(f"target must be one of {TARGETS}, got {q.target!r}")
        if not 1 <= q.k <= self.config.max_k:
            raise BadRequestError(f"k must be within [1, {self.config.max_k}], got {q.k}")
        try:
            has_image = q.image is not None or q.image_id is not None or q.vector is not None
            mode = self.searcher.resolve_mode(q.mode, q.text, True if has_image else None, q.target)
            if q.safe:
                self.searcher.check_safety_scores()
        except (ValueError, MmragError) as e:
            raise BadRequestError(str(e)) from None
        q.mode = mode  # what ran (the response says it)
        k = max(4 * q.k, 100) if q.safe else q.k  # over-fetch once: unsafe hits are dropped below
        try:
            if mode == "keyword":
                hits = await asyncio.to_thread(self.searcher.keyword_search, q.text, k, q.target, q.filter or None)
            else:
                vec = await self.query_vector(q)
                image_only = q.text is None and q.vector is None
                text_only = q.text is not None and not has_image and q.target == "images"
                if mode == "hybrid":
                    pool = max(k, HYBRID_POOL)
                elif text_only:  # candidates by cosine, re-ranked by cos - prior (Searcher.search's way)
                    pool = prior_pool(k)
                else:
                    pool = k
                job = _SearchJob(vec, pool, q.target, q.filter or None, image_only, text_only and mode != "hybrid")
                hits = await self.search_batcher.submit(job)
                if mode == "hybrid":
                    hits = await asyncio.to_thread(self.searcher.fuse, vec, q.text, hits, k, q.target, q.filter or None,
                                                   image_prior=text_only)
        except ValueError as e:  # a bad filter key or value (the vector path reports its own)
            raise BadRequestError(str(e)) from None
        if q.safe:
            hits = await asyncio.to_thread(self.searcher.drop_unsafe, hits, q.target)
        return hits[: q.k]

    # ------------------------------------------------------------------ images
    def decode_upload(self, data: bytes) -> Image.Image:
        """Decode uploaded bytes with the server's pixel limit (raises ImageError)."""
        if not data:
            raise ImageError("the uploaded image is empty")
        return open_image(bytes(data), max_pixels=self.config.max_image_pixels)

    def image_path(self, image_id: str) -> Path:
        """The file of an indexed image, looked up by id (never a client-given path)."""
        meta = self.searcher.get(image_id)
        if not meta or not meta.get("path"):
            raise NotFoundError(f"no image with id {image_id!r} in this index")
        p = Path(meta["path"])
        if not p.is_file():
            raise NotFoundError(f"the file of image {image_id!r} is no longer on the server")
        return p

    def image_metadata(self, image_id: str) -> dict[str, Any]:
        meta = self.searcher.get(image_id)
        if meta is None:
            raise NotFoundError(f"no image with id {image_id!r} in this index")
        return public_metadata(meta)

    def thumbnail(self, image_id: str) -> bytes:
        """A JPEG at most ``thumbnail_px`` on its long side (kept in a bounded LRU)."""
        with self._thumbs_lock:
            if image_id in self._thumbs:
                self._thumbs.move_to_end(image_id)
                return self._thumbs[image_id]
        path = self.image_path(image_id)
        img = open_image(path, draft=(self.config.thumbnail_px, self.config.thumbnail_px))
        img.thumbnail((self.config.thumbnail_px, self.config.thumbnail_px))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._thumbs_lock:
            self._thumbs[image_id] = data
            while len(self._thumbs) > self.config.thumbnail_cache:
                self._thumbs.popitem(last=False)
        return data

    def info(self) -> dict[str, Any]:
        return {
            "index": self.index_dir.name,
            "encoder": self.searcher.manifest.encoder,
            "dim": self.searcher.dim,
            "images": self.searcher.count("images"),
            "captions": self.searcher.count("captions"),
            "batching": self.config.batching,
        }

    def close(self) -> None:
        for b in (self.text_batcher, self.image_batcher, self.search_batcher):
            b.close()
        self.searcher.close()
