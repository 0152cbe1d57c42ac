"""One on-disk cache for embedding vectors, shared by the tasks (a corpus' image vectors for chat
evaluation, a knowledge index's question vectors, document texts for ImageRef).

Everything lives under ``mmrag.paths.cache_dir()/embeddings/``. A key is a hash of what the vectors
depend on -- the encoder's :meth:`~mmrag.encoders.base.Encoder.fingerprint` (its spec and fitted
weights), the identity of the source (corpus name and folder) and the items embedded (ids and
paths, or the texts) -- so a stale file is never reused, only left behind. Files are written
atomically (temporary file + rename): an interrupted run leaves the old file or none, never half
of one, and a damaged file is only a slower run (it is embedded again).

Two shapes:

* :func:`cached_vectors` / :class:`EmbeddingCache`: one ``.npy`` per key (a whole matrix), e.g.
  :func:`corpus_image_vectors` (embedding all 8,091 Flickr8k images takes minutes on a small CPU).
* :class:`CachedTextEmbedder`: content-addressed per text (sha1 of each text), one ``.npz`` per
  model, for callers that embed overlapping sets of texts run after run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mmrag.paths import cache_dir

#: The folder (under ``cache_dir()``) every embedding cache file lives in.
FOLDER = "embeddings"


def embeddings_dir() -> Path:
    return cache_dir() / FOLDER


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))


def cache_key(encoder_fingerprint: str, source: str, items: Sequence[str] = ()) -> str:
    """A 16-hex key from what vectors depend on: the encoder's fingerprint, the source's identity
    (e.g. corpus name and folder) and the items embedded (ids/paths or texts, in order)."""
    h = hashlib.sha1()
    h.update(json.dumps([str(encoder_fingerprint), str(source), len(items)], ensure_ascii=False).encode())
    for it in items:
        # length-prefixed, so no two different item lists hash the same text
        b = str(it).encode("utf-8")
        h.update(f"{len(b)}:".encode())
        h.update(b)
    return h.hexdigest()[:16]


def encoder_cache_key(encoder, source: str, items: Sequence[str] = ()) -> str:
    """:func:`cache_key` of an :class:`~mmrag.encoders.base.Encoder`'s vectors."""
    return cache_key(encoder.fingerprint(), source, items)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class EmbeddingCache:
    """Matrices of vectors by key: ``<folder>/<kind>_<key>.npy``."""

    def __init__(self, kind: str, folder: str | Path | None = None):
        self.kind = _safe(kind)
        self.folder = Path(folder) if folder is not None else embeddings_dir()

    def path(self, key: str) -> Path:
        return self.folder / f"{self.kind}_{_safe(key)}.npy"

    def load(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The cached matrix, or None when absent, unreadable or not of ``shape``."""
        f = self.path(key)
        if not f.exists():
            return None
        try:
            v = np.load(f, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged file is embedded again
        return v if shape is None or v.shape == tuple(shape) else None

    def save(self, key: str, vectors: np.ndarray) -> Path:
        f = self.path(key)
        _atomic_save_npy(f, np.asarray(vectors))
        return f


def cached_vectors(kind: str, key: str, compute: Callable[[], np.ndarray],
                   shape: tuple[int, ...] | None = None, cache: bool = True,
                   folder: str | Path | None = None) -> np.ndarray:
    """The vectors under ``key`` when cached (and of ``shape``), else ``compute()``, saved."""
    if not cache:
        return compute()
    c = EmbeddingCache(kind, folder)
    v = c.load(key, shape)
    if v is None:
        v = compute()
        c.save(key, v)
    return v


CORPUS_IMAGES = "corpus-images"


def _corpus_key(encoder, corpus) -> str:
    return encoder_cache_key(encoder, f"{corpus.name}|{Path(corpus.root).resolve()}",
                             [f"{it.id}\t{it.path}" for it in corpus.items])


def corpus_vectors_path(encoder, corpus) -> Path:
    """Where :func:`corpus_image_vectors` keeps the vectors of ``corpus``."""
    return EmbeddingCache(CORPUS_IMAGES).path(_corpus_key(encoder, corpus))


def corpus_image_vectors(encoder, corpus, cache: bool = True, progress: bool = True) -> np.ndarray:
    """``[len(corpus), dim]`` unit image vectors in corpus order, cached when ``cache`` (keyed by
    the encoder's fingerprint, the corpus name and folder, and its items' ids and paths)."""
    def embed() -> np.ndarray:
        t = time.perf_counter()
        v = encoder.embed_images([it.path for it in corpus.items], progress=progress)
        if progress:
            print(f"embedded {len(corpus)} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        return v

    return cached_vectors(CORPUS_IMAGES, _corpus_key(encoder, corpus), embed,
                          shape=(len(corpus), encoder.dim), cache=cache)


class CachedTextEmbedder:
    """Wraps anything with ``embed(texts) -> unit vectors``; same interface. Vectors are kept by
    the sha1 of each text in ``embeddings/texts_<model_key>.npz``, rewritten atomically when new
    texts were embedded (at most once a minute, and at exit)."""

    def __init__(self, embedder, model_key: str = "all-MiniLM-L6-v2", path: str | Path | None = None,
                 progress: bool = False):
        self.embedder = embedder
        self.progress = progress  # what embed(progress=None) does: a command line turns it on
        self.path = Path(path) if path else embeddings_dir() / f"texts_{_safe(model_key)}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._saved_at = time.monotonic()
        atexit.register(self.save)
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    for k, v in zip(z["keys"], z["vectors"]):
                        self._vectors[str(k)] = v
            except (OSError, ValueError, KeyError):
                self._vectors = {}  # a damaged cache is only a slower run

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def embed(self, texts: Sequence[str], batch_size: int = 128, progress: bool | None = None) -> np.ndarray:
        texts = list(texts)
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self._vectors}.items())
        progress = self.progress if progress is None else progress
        if progress and len(todo) > batch_size:  # a first run over many texts takes minutes: say so once
            print(f"embedding {len(todo):,} texts not embedded before; cached in {self.path} for next time",
                  file=sys.stderr, flush=True)
        if todo:
            vecs = self.embedder.embed([t for _, t in todo], batch_size=batch_size, progress=progress)
            for (k, _), v in zip(todo, vecs):
                self._vectors[k] = np.asarray(v, np.float32)
            self._dirty = True
            if time.monotonic() - self._saved_at > 60:  # rewrite the file at most once a minute
                self.save()
        if not texts:  # no rows, the embedder's width (MiniLM's 384 was assumed for any embedder)
            dim = getattr(self.embedder, "dim", None)
            return np.zeros((0, dim if dim is not None else self.embedder.embed(["."]).shape[1]), np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        if not self._dirty:
            return
        self._saved_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
        keys = np.array(list(self._vectors), dtype="U40")
        np.savez(tmp, keys=keys, vectors=np.stack(list(self._vectors.values())))
        os.replace(tmp, self.path)
        self._dirty = False


__all__ = ["CachedTextEmbedder", "EmbeddingCache", "cache_key", "cached_vectors", "corpus_image_vectors",
           "corpus_vectors_path", "embeddings_dir", "encoder_cache_key"]
