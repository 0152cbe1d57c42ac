"""Caption words of candidate images: what the ``split`` questioner and the re-ranking read.

For an image, ``f[w]`` is the fraction of its ``n_captions`` nearest captions (image -> caption
retrieval in the encoder's space) that contain the normalized word ``w``: a k-NN estimate of how
often one person describing the image names ``w``. What the questioners and the re-scoring need
is the chance that someone who *looks at* the image says yes to "is there a w?", which is higher:
several describers of the same image name different things. So the features hold
``p[w] = 1 - (1 - f[w]) ** describers``, the chance that at least one of ``describers``
independent describers names ``w`` (``describers=1`` keeps the raw fraction). The simulated user
answers from four captions; on Flickr8k dev, 1 / 2 / 4 describers gave +16.0 / +17.1 / +17.8
points of cumulative Hits@10 by round 5 (``split``, linear re-scoring 0.3, temperature 0.05),
and 3 / 4 / 6 with log-likelihood re-scoring +18.1 / +18.8 / +19.7 (within dev noise of each
other), so the default is 4, the simulated user's number of captions (benchmarks/bench_chat.py,
docs/benchmarks.md).

Two sources of captions:

``CaptionDatastore`` (e.g. Flickr8k train, :func:`mmrag.retrieval.default_datastore`)
    ``cosine - prior`` scores; the image's own captions are excluded when the image is in the
    datastore (``exclude_own``), so every image is described by *other* images' captions. This
    is what evaluation uses: the target's reference captions are never read.
a :class:`~mmrag.retrieval.Searcher` (``"index"``)
    the captions indexed with the images (nearest by cosine). In deployment an image's own
    captions are legitimate evidence about it; do not use this source to evaluate on an index
    that holds the evaluation targets' captions.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from mmrag.tasks.chat.words import content_set

DEFAULT_N_CAPTIONS = 20
DEFAULT_DESCRIBERS = 4


class CaptionWordFeatures:
    """Per-image chances ``p[w]`` that a viewer names each caption word (module docstring),
    computed on demand and cached per image id."""

    def __init__(self, source: Any, n_captions: int = DEFAULT_N_CAPTIONS, exclude_own: bool = True,
                 describers: float = DEFAULT_DESCRIBERS):
        if n_captions < 1:
            raise ValueError(f"n_captions must be >= 1, got {n_captions}")
        if not describers >= 1:
            raise ValueError(f"describers must be >= 1, got {describers}")
        self.describers = float(describers)
        self.source = source
        self.n_captions = int(n_captions)
        self.exclude_own = exclude_own
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self._rows: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()
        self._word_sets: dict[str, frozenset] = {}

    @property
    def is_datastore(self) -> bool:
        return hasattr(self.source, "rows_by_image")

    def _col(self, w: str) -> int:
        c = self.vocab.get(w)
        if c is None:
            c = self.vocab[w] = len(self.words)
            self.words.append(w)
        return c

    def _caption_words(self, text: str) -> frozenset:
        s = self._word_sets.get(text)
        if s is None:
            s = self._word_sets[text] = frozenset(content_set(text))
        return s

    def _neighbour_texts(self, ids: Sequence[str], vectors: np.ndarray) -> list[list[str]]:
        if self.is_datastore:
            excl = list(ids) if self.exclude_own else None
            hits = self.source.search(vectors, k=self.n_captions, exclude_image_ids=excl)
            return [[h.text for h in hs] for hs in hits]
        hits = self.source.search_vectors(np.asarray(vectors, np.float32), k=self.n_captions, target="captions")
        return [[str(h.metadata.get("text", "")) for h in hs] for hs in hits]

    def compute(self, ids: Sequence[str], vectors: np.ndarray, chunk: int = 512, progress: bool = False) -> None:
        """Compute (and cache) the rows of ``ids`` whose image vectors are ``vectors``."""
        todo = [i for i, x in enumerate(ids) if x not in self._rows]
        if not todo:
            return
        rng = range(0, len(todo), chunk)
        if progress and len(todo) > chunk:
            from tqdm.auto import tqdm

            rng = tqdm(rng, desc="caption words", unit="chunk", leave=False)
        for s in rng:
            part = todo[s : s + chunk]
            texts = self._neighbour_texts([ids[i] for i in part], np.asarray(vectors)[part])
            with self._lock:
                for i, tx in zip(part, texts):
                    counts: dict[int, float] = {}
                    for t in tx:
                        for w in self._caption_words(t):
                            c = self._col(w)
                            counts[c] = counts.get(c, 0.0) + 1.0
                    n = max(1, len(tx))
                    self._rows[ids[i]] = {c: 1.0 - (1.0 - v / n) ** self.describers for c, v in counts.items()}

    def matrix(self, ids: Sequence[str], vectors: np.ndarray | None = None) -> sp.csr_matrix:
        """``[len(ids), len(vocab)]`` CSR matrix of ``p[w]`` (rows computed if missing,
        which needs ``vectors``)."""
        missing = [i for i in ids if i not in self._rows]
        if missing:
            if vectors is None:
                raise KeyError(f"no caption words for {missing[:3]} and no vectors to compute them")
            self.compute(ids, vectors)
        indptr, indices, data = [0], [], []
        for i in ids:
            row = self._rows[i]
            indices.extend(row.keys())
            data.extend(row.values())
            indptr.append(len(indices))
        return sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr)),
                             shape=(len(ids), len(self.words)))

    def row(self, image_id: str) -> dict[str, float]:
        return {self.words[c]: v for c, v in self._rows.get(image_id, {}).items()}

    def top_words(self, image_id: str, n: int = 8) -> list[str]:
        r = self.row(image_id)
        return [w for w, _ in sorted(r.items(), key=lambda x: (-x[1], x[0]))[:n]]
