"""A content-addressed cache of sentence vectors, so benchmarks and repeated evaluations embed each
text once (embedding every section of the d2l book takes minutes on a small CPU).

Vectors live in ``cache_dir()/imageref/<model>.npz`` (``keys``: sha1 of each text, ``vectors``),
rewritten atomically when new texts were embedded.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.paths import cache_dir


class CachedTextEmbedder:
    """Wraps anything with ``embed(texts) -> unit vectors``; same interface."""

    def __init__(self, embedder, model_key: str = "all-MiniLM-L6-v2", path: str | Path | None = None):
        self.embedder = embedder
        self.path = Path(path) if path else cache_dir() / "imageref" / f"{model_key}.npz"
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

    def embed(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self._vectors}.items())
        if todo:
            vecs = self.embedder.embed([t for _, t in todo], batch_size=batch_size, progress=progress)
            for (k, _), v in zip(todo, vecs):
                self._vectors[k] = np.asarray(v, np.float32)
            self._dirty = True
            if time.monotonic() - self._saved_at > 60:  # rewrite the file at most once a minute
                self.save()
        if not texts:
            return np.zeros((0, 384), np.float32)
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
