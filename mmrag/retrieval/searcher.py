"""Retrieval over an index: text->image, image->image, image->caption, text+image, and the
lookups tasks and the service need (metadata, vectors, caption ids, counts), so no caller
reaches into the index's stores."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.encoders.base import Encoder, ImageInput, check_same_encoder, create_encoder, l2_normalize
from mmrag.encoders.image_prior import gate_admits
from mmrag.errors import InvalidInputError
from mmrag.index.base import Hit, VectorStore
from mmrag.index.collection import Collection, IndexManifest, caption_image_id

TARGETS = ("images", "captions")
# vector: embeddings only; keyword: BM25 over the items' text (captions, OCR text, file name,
# metadata); hybrid: both fused (see FUSIONS); auto: hybrid for a text-only query on an
# index that has text and a store with keyword search, vector otherwise
MODES = ("auto", "vector", "keyword", "hybrid")
RRF_K = 60          # reciprocal rank fusion constant (Cormack et al. 2009)
HYBRID_POOL = 100   # candidates taken from each side before fusing
# "score": calibrated score fusion (default); "rrf": plain reciprocal rank fusion, kept to compare.
# RRF ignores how much better the best keyword match is (a sign matching the whole phrase vs
# signs matching one word of it), which is what lost the sign photos.
FUSIONS = ("score", "rrf")
FUSION = "score"
# weight of the keyword channel in score fusion, chosen on dev sets (benchmarks/bench_hybrid.py:
# sign photos made from coco_dev with other phrases, Flickr8k dev), never on the test sets
KEYWORD_WEIGHT = 0.8
SPREAD_SAMPLE = 20000  # stored vectors sampled to estimate the spread of a channel's scores
# candidates taken by cosine and re-ranked by cos - a hubness prior (images for a text, captions
# for an image; at least this many, or 10 k): a prior moves scores by a few hundredths, not more
PRIOR_POOL = 100
# priors computed for images stored without one (an index built before priors), kept per
# Searcher: at most this many (16-byte keys, about 100 bytes an entry)
PRIOR_CACHE = 200_000
MAX_K = 2**31 - 1  # the most results a query may ask for (far above any index's size)


def check_query(text: str | None = None, image: Any = None, weight: float = 0.5, k: int = 10) -> None:
    """Raise :class:`InvalidInputError` for a query that cannot run -- cheap, so callers can
    check before loading a model."""
    if text is None and image is None:
        raise InvalidInputError("give a text, an image, or both")
    if text is not None and not text.strip():
        raise InvalidInputError("empty text query")
    if not 0.0 <= weight <= 1.0:  # also False for NaN
        raise InvalidInputError(f"weight must be within [0, 1], got {weight}")
    # the bound keeps k within what SQLite (keyword search) and FAISS take as an integer
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be a whole number in [1, {MAX_K}], got {k}")


class Searcher:
    """Opens an index and the encoder that built it; answers queries.

    ``encoder`` may be passed to share one loaded model between several indexes.
    """

    def __init__(self, index_dir: str | Path, encoder: Encoder | None = None):
        self.collection = Collection.open(index_dir)
        m = self.collection.manifest
        self.encoder = encoder or create_encoder(m.encoder, **m.encoder_options)
        check_same_encoder(self.encoder, m.encoder, m.dim, index_dir)

    # ------------------------------------------------------------------ queries
    def query_vector(self, text: str | None = None, image: ImageInput | None = None, weight: float = 0.5,
                     target: str = "images") -> np.ndarray:
        """One unit query vector. With both text and image: ``weight`` on the text side, each
        side's scores calibrated first (see :meth:`mix`)."""
        check_query(text, image, weight)
        t = self.encoder.embed_texts([text])[0] if text is not None else None
        i = self.encoder.embed_images([image])[0] if image is not None else None
        if t is None or i is None:
            return l2_normalize((t if i is None else i)[None])[0]
        return self.mix(t, i, weight, target)

    def mix(self, text_vec: np.ndarray, image_vec: np.ndarray, weight: float, target: str = "images") -> np.ndarray:
        """The query vector whose inner products rank ``target`` as ``weight * z_text + (1 -
        weight) * z_image``, where z is each side's score standardised by its distribution over
        the index. A plain sum of the two unit vectors lets the image win at any weight (an
        image's cosines with other images spread several times wider than a text's), so
        ``weight`` would not mean what it says. Linear in the scores, so one vector does it:
        z = (x.q - mean) / sd(q), the means are a constant shift, sd(q)^2 = q' C q with C the
        covariance of the stored vectors. Weight 1 or 0 is the text or the image alone."""
        t = np.asarray(text_vec, np.float32)
        i = np.asarray(image_vec, np.float32)
        if weight >= 1.0:
            return l2_normalize(t[None])[0]
        if weight <= 0.0:
            return l2_normalize(i[None])[0]
        cov = self.score_covariance(target)
        if cov is None:  # an empty store: nothing to calibrate against
            return l2_normalize((weight * t + (1.0 - weight) * i)[None])[0]
        sd_t = float(np.sqrt(max(t @ cov @ t, 1e-12)))
        sd_i = float(np.sqrt(max(i @ cov @ i, 1e-12)))
        return l2_normalize((weight * t / sd_t + (1.0 - weight) * i / sd_i)[None])[0].astype(np.float32)

    def score_covariance(self, target: str = "images") -> np.ndarray | None:
        """Covariance of ``target``'s stored vectors (a fixed sample of at most SPREAD_SAMPLE),
        cached per store size; None for an empty store."""
        store = self._store(target)
        n = store.count()
        key = (target, n)
        cache = self.__dict__.setdefault("_cov", {})
        if key not in cache:
            if n == 0:
                cache[key] = None
            else:
                ids = store.ids()
                if len(ids) > SPREAD_SAMPLE:
                    rng = np.random.default_rng(0)
                    ids = [ids[j] for j in sorted(rng.choice(len(ids), SPREAD_SAMPLE, replace=False))]
                x = np.asarray(store.vectors(ids), np.float64)
                x -= x.mean(0)
                cache[key] = (x.T @ x / max(len(x) - 1, 1)).astype(np.float32)
        return cache[key]

    def search(self, text: str | None = None, image: ImageInput | None = None, k: int = 10,
               weight: float = 0.5, target: str = "images", filter: dict[str, Any] | None = None,
               mode: str = "vector", safe: bool = False) -> list[Hit]:
        """``target``: "images" (text->image, image->image, both) or "captions" (image->caption).
        ``mode``: see :data:`MODES`. ``safe``: drop images the safety enricher scored unsafe."""
        check_query(text, image, weight, k)
        mode = self.resolve_mode(mode, text, image, target)
        if safe:
            self.check_safety_scores()
        want = k
        while True:
            hits = self._search_once(text, image, want, weight, target, filter, mode)
            if not safe:
                return hits
            kept = self.drop_unsafe(hits, target)
            # over-fetch until k safe hits are found or the store is exhausted
            if len(kept) >= k or len(hits) < want:
                return kept[:k]
            want *= 4

    def _search_once(self, text, image, k, weight, target, filter, mode) -> list[Hit]:
        if mode == "keyword":
            return self.keyword_search(text, k, target, filter)
        store = self._store(target)
        q = self.query_vector(text, image, weight, target)
        if target == "captions" and image is not None and text is None:
            return self.captions_for_image_vector(q, k, filter)
        text_to_image = target == "images" and text is not None and image is None
        if mode == "hybrid":
            pool = max(k, HYBRID_POOL)
            return self.fuse(q, text, store.search(q[None], k=pool, filter=filter)[0], k, target, filter,
                             image_prior=text_to_image)
        if text_to_image:
            return self.images_for_text_vector(q, k, filter)
        return store.search(q[None], k=k, filter=filter)[0]

    def image_prior_applies(self, hits: list[Hit]) -> bool:
        """Whether text->image ``hits`` (by cosine, best first) are to be ranked by ``cos - prior``:
        every hit has a prior (:meth:`fill_image_priors`: stored, or computed for the hits that
        lack one; an encoder without a prior has none: plain cosine) and the best hit's prior
        passes the encoder's gate. Search, hybrid fusion, the service's batched path and the
        chat all come through here (or :meth:`image_priors`), so they rank alike."""
        if not hits or not self.fill_image_priors(hits):
            return False
        return gate_admits(hits[0].metadata["prior"], self.encoder.image_prior_gate())

    def has_image_prior(self) -> bool:
        """Whether the encoder has a text->image prior (asked once, with no vectors: the base
        encoder answers None without looking at them)."""
        if "_has_image_prior" not in self.__dict__:
            self._has_image_prior = self.encoder.image_prior(np.zeros((0, self.dim), np.float32)) is not None
        return self._has_image_prior

    def missing_image_priors(self, ids: Sequence[str]) -> np.ndarray | None:
        """The encoder's prior of the stored images ``ids`` (one matrix product on their stored
        vectors), rounded as indexing stores it; None for an encoder without a prior. The prior
        is a pure function of the vector and the encoder's caption bank, so an index built
        before priors (or one where only the images added since have one) gets what a rebuild
        would store."""
        if not self.has_image_prior():
            return None
        if not len(ids):
            return np.zeros(0, np.float64)
        x = self.collection.images.vectors(list(ids))
        # cached by the vector's bytes, not the id: a pure function of the vector, so a replaced
        # image can never get a stale prior; repeat candidates (hubs above all) skip the product
        cache = self.__dict__.setdefault("_prior_cache", {})
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]
        out = np.empty(len(keys), np.float64)
        todo = []
        for j, key in enumerate(keys):  # get(), not [], so another thread's clear() cannot fail us
            v = cache.get(key)
            if v is None:
                todo.append(j)
            else:
                out[j] = v
        if todo:
            p = self.encoder.image_prior(x[todo])
            keep = len(todo) <= PRIOR_CACHE
            if keep and len(cache) + len(todo) > PRIOR_CACHE:
                cache.clear()
            for j, v in zip(todo, p):
                # the committer's rounding (round(float, 6) into JSON), so the metadata is a rebuild's too
                out[j] = round(float(v), 6)
                if keep:
                    cache[keys[j]] = out[j]
        return out

    def fill_image_priors(self, hits: list[Hit]) -> bool:
        """Give each text->image hit without a stored ``metadata["prior"]`` the one indexing
        would have stored (:meth:`missing_image_priors`). Returns whether every hit has a prior
        (False, nothing changed, when some lack one and the encoder has no prior)."""
        missing = [h for h in hits if "prior" not in h.metadata]
        if not missing:
            return True
        p = self.missing_image_priors([h.id for h in missing])
        if p is None:
            return False
        for h, v in zip(missing, p):
            h.metadata["prior"] = float(v)
        return True

    def images_for_text_vector(self, q: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        """text->image with the images' hubness prior (score = cos - prior, see
        :meth:`image_prior_applies`): a generous candidate set by cosine, then re-ranked; each
        hit keeps its cosine in ``metadata["cosine"]``."""
        hits = self.collection.images.search(np.asarray(q, np.float32)[None], k=prior_pool(k), filter=filter)[0]
        return self.rerank_by_image_prior(hits, k)

    def image_priors(self, ids: Sequence[str]) -> np.ndarray | None:
        """The text->image prior of each image in ``ids``: stored, or computed for those that
        lack one (:meth:`missing_image_priors`); None when some lack one and the encoder has no
        prior (the index then ranks by cosine, :meth:`image_prior_applies`)."""
        metas = self.metadata(ids)
        if not metas or any(m is None for m in metas):
            return None
        out = np.asarray([float(m.get("prior", np.nan)) for m in metas], np.float32)
        gap = [j for j, m in enumerate(metas) if "prior" not in m]
        if gap:
            p = self.missing_image_priors([ids[j] for j in gap])
            if p is None:
                return None
            out[gap] = p
        return out

    def rerank_by_image_prior(self, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of text->image ``hits`` (by cosine, best first; :func:`prior_pool` of
        them) by ``cos - prior`` where :meth:`image_prior_applies`, else the first ``k``."""
        return _minus_prior(hits, k) if self.image_prior_applies(hits) else hits[:k]

    # ------------------------------------------------------------------ keyword and hybrid
    def supports_keyword(self, target: str = "images") -> bool:
        return bool(self._store(target).supports_keyword)

    def has_text(self, target: str = "images") -> bool:
        """Whether keyword search has anything to find: a store with keyword search whose items
        have text beyond file names (cached per store size)."""
        store = self._store(target)
        if not store.supports_keyword:
            return False
        key = (target, store.count())
        cache = self.__dict__.setdefault("_has_text", {})
        if key not in cache:
            cache[key] = store.has_keyword_text()
        return cache[key]

    def resolve_mode(self, mode: str, text: str | None, image: ImageInput | None = None,
                     target: str = "images") -> str:
        """The mode a query runs in (``auto`` resolved), or ValueError saying why it cannot."""
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":  # text only: with an image the query is a weighted vector (--weight)
            return "hybrid" if image is None and text is not None and text.strip() and self.has_text(target) else "vector"
        if mode == "vector":
            return mode
        if text is None or not text.strip():
            raise InvalidInputError(f"{mode} search needs a text query")
        if mode == "keyword" and image is not None:
            raise InvalidInputError("keyword search takes a text query only (use hybrid or vector with an image)")
        if not self.supports_keyword(target):
            self._store(target).keyword_search(text, 1)  # raises the store's own explanation
            raise InvalidInputError(f"the {target} store has no keyword search")
        return mode

    def keyword_search(self, text: str, k: int = 10, target: str = "images",
                       filter: dict[str, Any] | None = None) -> list[Hit]:
        """BM25 keyword matches of ``text`` (score: BM25, higher is better)."""
        return self._store(target).keyword_search(text, k=k, filter=filter)

    def fuse(self, q: np.ndarray, text: str, vector_hits: list[Hit], k: int, target: str = "images",
             filter: dict[str, Any] | None = None, fusion: str = FUSION,
             keyword_weight: float = KEYWORD_WEIGHT, image_prior: bool = False) -> list[Hit]:
        """Fuse ``vector_hits`` (the vector search's best, best first) with the keyword matches
        of ``text``. Keyword matches outside ``vector_hits`` get their exact cosine, so every
        candidate has a vector score; one without a keyword match has keyword score 0.

        ``fusion="score"`` (calibrated score fusion): score = keyword_weight * bm25 / best bm25
        + (1 - keyword_weight) * (cos - min cos) / (max cos - min cos) over the candidates, so
        the match of the whole phrase keeps its lead over matches of one of its words.
        ``fusion="rrf"``: 1/(RRF_K + vector rank) + 1/(RRF_K + keyword rank).
        ``image_prior`` (a text->image query): the vector side is ``cos - prior`` when
        :meth:`image_prior_applies` to the candidates.
        Each hit's metadata gains ``vector_score`` (the cosine) and ``keyword_score`` (None: no match)."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        store = self._store(target)
        pool = max(k, len(vector_hits), HYBRID_POOL)
        kw = store.keyword_search(text, k=pool, filter=filter)
        if not kw:
            for h in vector_hits:
                h.metadata.update(vector_score=h.score, keyword_score=None)
            if image_prior and target == "images" and self.image_prior_applies(vector_hits):
                vector_hits = sorted(vector_hits, key=lambda h: -(h.score - float(h.metadata["prior"])))
            return vector_hits[:k]
        cand: dict[str, Hit] = {h.id: h for h in vector_hits}
        cos = {h.id: float(h.score) for h in vector_hits}
        extra = [h for h in kw if h.id not in cand]
        if extra:
            x = store.vectors([h.id for h in extra])
            for h, c in zip(extra, x @ np.asarray(q, np.float32)):
                cand[h.id], cos[h.id] = h, float(c)
        k_score = {h.id: h.score for h in kw}
        raw = dict(cos)
        if image_prior and target == "images" and vector_hits and self.image_prior_applies(list(cand.values())):
            cos = {i: c - float(cand[i].metadata["prior"]) for i, c in cos.items()}
        if fusion == "rrf":
            v_rank = {i: r for r, i in enumerate(sorted(cos, key=lambda i: -cos[i]), 1)}
            k_rank = {h.id: r for r, h in enumerate(kw, 1)}
            fused = {i: 1.0 / (RRF_K + v_rank[i]) + (1.0 / (RRF_K + k_rank[i]) if i in k_rank else 0.0) for i in cand}
        else:
            lo, hi = min(cos.values()), max(cos.values())
            span = hi - lo if hi > lo else 1.0
            best = max(k_score.values())
            best = best if best > 0 else 1.0
            fused = {i: keyword_weight * max(k_score.get(i, 0.0), 0.0) / best
                     + (1.0 - keyword_weight) * (cos[i] - lo) / span for i in cand}
        out = []
        for i, h in cand.items():
            h.metadata.update(vector_score=raw[i], keyword_score=k_score.get(i))
            out.append(Hit(id=i, score=float(fused[i]), metadata=h.metadata))
        out.sort(key=lambda h: (-h.score, -cos[h.id]))
        return out[:k]

    # ------------------------------------------------------------------ relevance
    def relevance_model(self):
        """The encoder's calibrated relevance (mmrag.retrieval.relevance), or None without a fit."""
        if "_relevance" not in self.__dict__:
            from mmrag.retrieval.relevance import load_relevance

            self._relevance = load_relevance(self.encoder.fingerprint())
        return self._relevance

    def add_relevance(self, hits: list[Hit], text: str | None, image: Any = None, target: str = "images",
                      mode: str = "vector") -> bool:
        """Give each hit ``metadata["relevance"]``, the probability that it matches ``text``,
        from its cosine (hybrid: ``vector_score``). Only for text->image (the pairs the model was
        fitted on; keyword-only scores are BM25, not cosines). Returns whether it did."""
        model = self.relevance_model()
        if model is None or text is None or image is not None or target != "images" or mode == "keyword":
            return False
        if hits:
            # the model was fitted on cosines: a hit ranked by cos - prior keeps its cosine aside
            cos = [h.metadata.get("vector_score", h.score) if mode == "hybrid" else h.metadata.get("cosine", h.score)
                   for h in hits]
            for h, p in zip(hits, model(cos)):
                h.metadata["relevance"] = round(float(p), 4)
        return True

    @staticmethod
    def no_good_match(hits: list[Hit]) -> bool | None:
        """True when no hit is a likely match: every relevance below NO_MATCH_THRESHOLD and no hit
        matched a query word (a keyword match is evidence a cosine does not see, e.g. a sign's
        text). None when the hits carry no relevance."""
        from mmrag.retrieval.relevance import NO_MATCH_THRESHOLD

        if not hits:
            return True
        if any("relevance" not in h.metadata for h in hits):
            return None
        return all(h.metadata["relevance"] < NO_MATCH_THRESHOLD and h.metadata.get("keyword_score") is None
                   for h in hits)

    # ------------------------------------------------------------------ safety
    def has_safety_scores(self) -> bool:
        return "safety" in (self.manifest.enrichers or [])

    def check_safety_scores(self) -> None:
        if not self.has_safety_scores():
            raise InvalidInputError("this index has no safety scores: build (or extend) it with "
                             "`mmrag index ... --safety` to filter unsafe images")

    def drop_unsafe(self, hits: list[Hit], target: str = "images") -> list[Hit]:
        """The hits whose image has a safety score below the threshold. Fails closed: an image
        without a score (the enricher could not score it) is dropped too. Caption hits are
        judged by their image."""
        from mmrag.embedding.enrich import SAFETY_THRESHOLD

        if target == "images":
            metas = [h.metadata for h in hits]
        else:
            metas = self.metadata([caption_image_id(h.id) for h in hits]) if hits else []
        return [h for h, m in zip(hits, metas)
                if isinstance((m or {}).get("nsfw"), (int, float)) and m["nsfw"] < SAFETY_THRESHOLD]

    def captions_for_image_vector(self, q: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        """image->caption with the captions' hubness prior (score = cos - prior), when the index
        has one: fetch a generous candidate set by cosine, then re-rank."""
        hits = self.collection.captions.search(np.asarray(q, np.float32)[None], k=prior_pool(k), filter=filter)[0]
        if not hits or "prior" not in hits[0].metadata:
            return hits[:k]
        return _minus_prior(hits, k)

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


def prior_pool(k: int) -> int:
    """How many candidates by cosine to re-rank by ``cos - prior`` for ``k`` hits (images for a
    text, captions for an image)."""
    return max(10 * k, PRIOR_POOL)


def _minus_prior(hits: list[Hit], k: int) -> list[Hit]:
    """The ``k`` best of ``hits`` by ``cos - metadata["prior"]``, each keeping its cosine in
    ``metadata["cosine"]``."""
    for h in hits:
        h.metadata["cosine"] = h.score
        h.score = float(h.score - h.metadata["prior"])
    hits.sort(key=lambda h: -h.score)
    return hits[:k]
