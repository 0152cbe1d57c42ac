"""Cached image vectors of a whole corpus (evaluation and benchmarks only, never tests).

Embedding all 8,091 Flickr8k images takes minutes on a small CPU, so the vectors are stored once
under ``mmrag.paths.cache_dir()/chat`` as ``<corpus>_<n>_<encoder fingerprint>_<ids hash>.npy``
(written atomically). The fingerprint changes with the encoder and its bridge, and the ids hash
with the set and order of images, so a stale file is never reused.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from mmrag.paths import cache_dir


def corpus_vectors_path(encoder, corpus) -> Path:
    ids = hashlib.sha1("\n".join(it.id for it in corpus.items).encode()).hexdigest()[:10]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in corpus.name)
    return cache_dir() / "chat" / f"{name}_{len(corpus)}_{encoder.fingerprint()}_{ids}.npy"


def corpus_image_vectors(encoder, corpus, cache: bool = True, progress: bool = True) -> np.ndarray:
    """``[len(corpus), dim]`` unit image vectors in corpus order, cached when ``cache``."""
    f = corpus_vectors_path(encoder, corpus)
    if cache and f.exists():
        v = np.load(f)
        if v.shape == (len(corpus), encoder.dim):
            return v
    t = time.perf_counter()
    v = encoder.embed_images([it.path for it in corpus.items], progress=progress)
    if progress:
        print(f"embedded {len(corpus)} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if cache:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f.name + ".tmp.npy")
        np.save(tmp, v)
        tmp.replace(f)
    return v
