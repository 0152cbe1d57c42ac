"""Stage 3: which image goes to which position, as one optimal assignment.

The paper's rules (ImageRef-VL three-stage baseline, insertion prompt):

1. insert at each position the image that best matches the section there;
2. at most one image per position; none when nothing is relevant ("Not Insert");
3. each image at most once;
4. position 1 may also take a header image: one that suits the whole answer.

Given relevance ``R[p, i]`` (position p, image i), the choice maximises the total relevance of the
inserted pairs plus ``threshold`` for every position left empty, subject to rules 2 and 3. That is
a rectangular assignment problem: the images' columns plus one "Not Insert" column per position
(worth ``threshold`` anywhere), solved exactly by ``scipy.optimize.linear_sum_assignment``. So
the threshold is part of the optimisation: an image goes to a position only if it beats leaving
that position empty, and a weaker image never displaces a stronger assignment elsewhere, unlike a
greedy pass. :func:`assign_slots` relaxes rule 2 for sections that hold several figures: a
position may take up to k images (its row repeated k times, each further slot worth a fixed
penalty less), still one exact assignment and each image once.

Relevance is a weighted sum of a semantic similarity (MiniLM sentence embeddings of the section's
chunks against the image's caption) and a lexical one (tf-idf cosine, or BM25), see :class:`Relevance`.
:func:`mentions_figure` is a cue read from a section's own text ("as shown in the figure below").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DEFAULT_LEXICAL_WEIGHT",
    "DEFAULT_POOL",
    "DEFAULT_THRESHOLD",
    "Relevance",
    "TextEmbedder",
    "assign_images",
    "assign_slots",
    "CAPACITY_RULES",
    "section_capacity",
    "figure_mentions",
    "bm25_similarity",
    "calibrated_scores",
    "mentions_figure",
    "expected_occupied",
    "default_text_embedder",
]

# Chosen on the d2l dev chapters (benchmarks/bench_imageref.py, docs/benchmarks.md).
DEFAULT_THRESHOLD = 0.15
DEFAULT_LEXICAL_WEIGHT = 0.25
DEFAULT_POOL = 0.0  # the section's mean chunk vector (0) beat its best chunk (1) on dev


def expected_occupied(n_positions: int, n_images: int) -> float:
    """Positions expected to hold an image when ``n_images`` land independently and uniformly
    on ``n_positions``: m·(1 − (1 − 1/m)^n). A document's own figure density as a prior."""
    if n_positions <= 0 or n_images <= 0:
        return 0.0
    return n_positions * (1.0 - (1.0 - 1.0 / n_positions) ** n_images)


def calibrated_scores(relevance: np.ndarray) -> np.ndarray:
    """Relevance relative to the document's own score distribution: each entry minus the matrix
    mean, over its standard deviation (a fixed cosine threshold does not transfer between corpora)."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.size < 2:
        return r - r.mean() if r.size else r
    sd = float(r.std())
    return (r - r.mean()) / (sd if sd > 1e-9 else 1.0)


# A section that says it shows a figure ("Figure" -- d2l's :numref: references read so --, "as shown
# below", "the following diagram", "illustrates") is a likelier place for one. Text only, never gold.
_FIGURE_MENTION = re.compile(
    r"\b(?:figures?|fig\.|diagrams?|illustrat\w*|screenshots?|depicted|as shown|shown (?:below|above|here)|"
    r"see below|the following (?:image|picture|plot|graph|chart|map)s?|(?:image|picture|plot) below)(?!\w)", re.I)


def mentions_figure(text: str) -> bool:
    """Whether a section's text mentions a figure (see ``_FIGURE_MENTION``)."""
    return bool(_FIGURE_MENTION.search(text or ""))


def figure_mentions(text: str) -> int:
    """How many times a section's text mentions a figure (``_FIGURE_MENTION`` matches)."""
    return len(_FIGURE_MENTION.findall(text or ""))


def _solve(r: np.ndarray, threshold: float) -> list[int | None]:
    n_pos, n_img = r.shape
    gain = np.concatenate([r, np.full((n_pos, n_pos), float(threshold))], axis=1)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    out: list[int | None] = [None] * n_pos
    for p, c in zip(rows, cols):
        if c < n_img and r[p, c] > threshold:  # ties go to "Not Insert"
            out[p] = int(c)
    return out


def assign_images(relevance: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                  header: np.ndarray | None = None, header_weight: float = 1.0,
                  max_inserted: int | None = None) -> list[int | None]:
    """Optimal placement: for each position (row of ``relevance``), the index of its image or None.

    ``header``: optional relevance of each image to the whole answer; position 0's relevance for
    image i becomes ``max(R[0, i], header_weight * header[i])`` (rule 4). ``max_inserted``: at
    most this many images in all; the best such placement is found by raising the "Not Insert"
    value (a Lagrange multiplier) until the optimal assignment uses few enough images."""
    r = _matrix(relevance)
    n_pos, n_img = r.shape
    if n_pos == 0:
        return []
    if n_img == 0:
        return [None] * n_pos
    r = _with_header(r, header, header_weight)
    return _at_most(lambda t: _solve(r, t), lambda o: sum(c is not None for c in o), threshold, float(r.max()),
                    max_inserted, [None] * n_pos)


def _matrix(relevance) -> np.ndarray:
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError("relevance must be a [positions, images] matrix")
    return r


def _with_header(r: np.ndarray, header: np.ndarray | None, header_weight: float) -> np.ndarray:
    """A checked copy of ``r`` (finite entries) with position 0 taking the header relevance (rule 4)."""
    if not np.all(np.isfinite(r)):
        raise ValueError("relevance has NaN or infinite entries")
    r = r.copy()
    if header is not None:
        h = np.asarray(header, dtype=np.float64).reshape(-1)
        if h.shape[0] != r.shape[1]:
            raise ValueError("header must have one entry per image")
        r[0] = np.maximum(r[0], header_weight * h)
    return r


def _at_most(solve, count, threshold: float, top: float, limit: int | None, nothing):
    """``solve(threshold)``, or where that places more than ``limit`` (by ``count``), the placement
    at the lowest "Not Insert" value (a Lagrange multiplier) that places few enough: the number
    placed only falls as that value rises, so bisect on it."""
    out = solve(threshold)
    if limit is None or count(out) <= limit:
        return out
    if limit <= 0:
        return nothing
    lo, hi = float(threshold), top
    best = solve(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        got = solve(mid)
        if count(got) <= limit:
            hi, best = mid, got
        else:
            lo = mid
        if hi - lo < 1e-7:
            break
    return best


CAPACITY_RULES = ("fixed", "mentions", "length")


def section_capacity(texts: Sequence[str], capacity: int, rule: str = "fixed") -> np.ndarray:
    """How many images each section may take, from its own text only (never gold), at most
    ``capacity``: ``"fixed"``: ``capacity`` everywhere; ``"mentions"``: as many as the section
    mentions a figure (:func:`figure_mentions`), at least 1; ``"length"``: its word count over the
    median word count of the document's sections with text, rounded, at least 1."""
    if rule not in CAPACITY_RULES:
        raise ValueError(f"capacity rule must be one of {', '.join(CAPACITY_RULES)}, got {rule!r}")
    if int(capacity) != capacity or capacity < 1:
        raise ValueError(f"capacity must be a whole number >= 1, got {capacity!r}")
    n = len(texts)
    if rule == "fixed" or capacity == 1:
        return np.full(n, int(capacity), np.int64)
    if rule == "mentions":
        k = np.array([figure_mentions(t) for t in texts], np.int64)
    else:
        words = np.array([len((t or "").split()) for t in texts], np.float64)
        med = float(np.median(words[words > 0])) if (words > 0).any() else 1.0
        k = np.rint(words / max(med, 1.0)).astype(np.int64)
    return np.clip(k, 1, int(capacity))


def _solve_slots(r: np.ndarray, threshold: float, capacity: np.ndarray, slot_penalty: float) -> list[list[int]]:
    # each position p becomes capacity[p] rows (slots); slot j's images lose j x slot_penalty, so a
    # second image must beat "Not Insert" by more than the first: still one exact assignment
    owner = np.repeat(np.arange(r.shape[0]), capacity)
    slot = np.concatenate([np.arange(k) for k in capacity])
    gain_img = r[owner] - slot[:, None] * float(slot_penalty)
    n_rows, n_img = gain_img.shape
    gain = np.concatenate([gain_img, np.full((n_rows, n_rows), float(threshold))], axis=1)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    got: list[list[int]] = [[] for _ in range(r.shape[0])]
    for row, c in zip(rows, cols):
        if c < n_img:
            got[owner[row]].append(int(c))
    out: list[list[int]] = []
    for p, imgs in enumerate(got):
        imgs.sort(key=lambda c: (-r[p, c], c))  # best first; slot j must beat the threshold by j penalties
        out.append([c for j, c in enumerate(imgs) if r[p, c] - j * slot_penalty > threshold])
    return out


def assign_slots(relevance: np.ndarray, threshold: float = DEFAULT_THRESHOLD, capacity=1,
                 slot_penalty: float = 0.0, header: np.ndarray | None = None, header_weight: float = 1.0,
                 max_occupied: int | None = None) -> list[list[int]]:
    """Optimal placement where position p may take up to ``capacity[p]`` images (an int for every
    position, or one per position): for each position, the indices of its images, best first.

    The k-th image at a position (k from 0) counts its relevance minus ``k × slot_penalty``
    against "Not Insert" (``threshold``); each image at most once; one exact assignment over the
    positions' slots. ``max_occupied``: at most this many positions get an image (the "Not
    Insert" value is raised as in :func:`assign_images`). With capacity 1 everywhere this is
    :func:`assign_images` (same choice, as one-element lists)."""
    r = _matrix(relevance)
    n_pos, n_img = r.shape
    cap = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (n_pos,)).copy() if n_pos else np.zeros(0, np.int64)
    if n_pos and (cap < 1).any():
        raise ValueError("capacity must be at least 1 at every position")
    if n_pos and (cap == 1).all():
        return [[] if c is None else [c] for c in assign_images(r, threshold, header, header_weight, max_occupied)]
    if n_pos == 0:
        return []
    if n_img == 0:
        return [[] for _ in range(n_pos)]
    if slot_penalty < 0 or not np.isfinite(slot_penalty):
        raise ValueError("slot_penalty must be a non-negative number")
    r = _with_header(r, header, header_weight)
    np.minimum(cap, n_img, out=cap)
    return _at_most(lambda t: _solve_slots(r, t, cap, slot_penalty), lambda o: sum(bool(x) for x in o), threshold,
                    float(r.max()), max_occupied, [[] for _ in range(n_pos)])


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray: ...


_TEXT_EMBEDDER: TextEmbedder | None = None


def default_text_embedder() -> TextEmbedder:
    """all-MiniLM-L6-v2 (loaded once per process), with vectors cached on disk by text
    (:class:`~mmrag.retrieval.cache.CachedTextEmbedder`)."""
    global _TEXT_EMBEDDER
    if _TEXT_EMBEDDER is None:
        from mmrag.encoders.minilm import MiniLMTextEncoder
        from mmrag.retrieval.cache import CachedTextEmbedder

        _TEXT_EMBEDDER = CachedTextEmbedder(MiniLMTextEncoder())
    return _TEXT_EMBEDDER


@dataclass
class Relevance:
    """Section <-> image relevance.

    ``semantic``: for each section, the similarity of its best-matching chunk to the image
    caption, mixed with the similarity of the section's mean chunk vector (``pool`` in [0, 1]:
    1 = max only); ``lexical="tfidf"``: tf-idf cosine (sublinear tf, English stop words, idf
    fitted on the sections and captions of the one document); combined as
    ``(1 - lexical_weight) * semantic + lexical_weight * lexical``, in [about -1, 1].

    ``lexical="bm25"`` (:func:`bm25_similarity`, the caption as the query): BM25 has no fixed
    scale, so each part is first standardised over the document's matrix
    (:func:`calibrated_scores`) and the result is in standard deviations -- for the
    ``calibrated``/``cued`` placements, not for a fixed cosine threshold. ``heading_weight``
    adds that much of the tf-idf cosine between the section's heading alone and the caption
    (standardised too under BM25): a heading names what a figure there shows."""

    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    pool: float = DEFAULT_POOL
    embedder: TextEmbedder | None = None
    lexical: str = "tfidf"
    heading_weight: float = 0.0

    def matrix(self, sections: Sequence[Sequence[str]], captions: Sequence[str],
               section_vectors: Sequence[np.ndarray] | None = None,
               caption_vectors: np.ndarray | None = None, headings: Sequence[str] | None = None) -> np.ndarray:
        """``sections``: each section's chunk texts; ``captions``: one text per image;
        ``headings``: each section's heading (for ``heading_weight``).
        Precomputed unit vectors may be passed to avoid re-embedding (benchmarks)."""
        if self.lexical not in ("tfidf", "bm25"):
            raise ValueError(f"lexical must be 'tfidf' or 'bm25', got {self.lexical!r}")
        n_s, n_i = len(sections), len(captions)
        if n_s == 0 or n_i == 0:
            return np.zeros((n_s, n_i), np.float32)
        sem = np.zeros((n_s, n_i))
        if self.lexical_weight < 1.0:
            emb = self.embedder or default_text_embedder()
            if caption_vectors is None:
                caption_vectors = emb.embed(list(captions))
            if section_vectors is None:
                flat = [c for chunks in sections for c in chunks]
                vecs = emb.embed(flat) if flat else np.zeros((0, caption_vectors.shape[1]), np.float32)
                section_vectors, k = [], 0
                for chunks in sections:
                    section_vectors.append(vecs[k : k + len(chunks)])
                    k += len(chunks)
            for s, v in enumerate(section_vectors):
                if len(v) == 0:
                    continue
                sims = v @ caption_vectors.T
                mean = v.mean(axis=0)
                mean = mean / max(np.linalg.norm(mean), 1e-12)
                sem[s] = self.pool * sims.max(axis=0) + (1 - self.pool) * (mean @ caption_vectors.T)
        lex = np.zeros((n_s, n_i))
        texts = [" ".join(c) for c in sections]
        bm25 = self.lexical == "bm25"
        if self.lexical_weight > 0.0:
            lex = bm25_similarity(texts, list(captions)) if bm25 else lexical_similarity(texts, list(captions))
        if bm25:
            sem, lex = calibrated_scores(sem), calibrated_scores(lex)
        out = (1 - self.lexical_weight) * sem + self.lexical_weight * lex
        if self.heading_weight:
            if headings is None or len(headings) != n_s:
                raise ValueError("heading_weight needs one heading per section")
            head = lexical_similarity(list(headings), list(captions))
            out = out + self.heading_weight * (calibrated_scores(head) if bm25 else head)
        return out.astype(np.float32)


def bm25_similarity(section_texts: Sequence[str], captions: Sequence[str], k1: float = 1.2,
                    b: float = 0.75) -> np.ndarray:
    """Okapi BM25 of each section (a "document" of the one document's sections) for each caption
    (the query: its distinct terms), idf over the sections (the Lucene form, never negative)."""
    from sklearn.feature_extraction.text import CountVectorizer

    n_s, n_i = len(section_texts), len(captions)
    vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]+\b")
    try:
        counts = vec.fit_transform(list(section_texts) + list(captions))
    except ValueError:  # no words, or only stop words
        return np.zeros((n_s, n_i))
    tf = counts[:n_s].toarray().astype(np.float64)
    query = (counts[n_s:].toarray() > 0).astype(np.float64)
    df = (tf > 0).sum(axis=0)
    idf = np.log(1.0 + (n_s - df + 0.5) / (df + 0.5))
    length = tf.sum(axis=1, keepdims=True)
    norm = k1 * (1 - b + b * length / max(float(length.mean()), 1e-9))
    weights = tf * (k1 + 1) / (tf + norm) * idf
    return weights @ query.T


def lexical_similarity(section_texts: Sequence[str], captions: Sequence[str]) -> np.ndarray:
    """tf-idf cosine between sections and captions (idf over both, so it adapts to the document)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = list(section_texts) + list(captions)
    if not any(d.strip() for d in docs):
        return np.zeros((len(section_texts), len(captions)))
    vec = TfidfVectorizer(sublinear_tf=True, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]+\b")
    try:
        m = vec.fit_transform(docs)
    except ValueError:  # only stop words
        return np.zeros((len(section_texts), len(captions)))
    s, c = m[: len(section_texts)], m[len(section_texts):]
    return np.asarray((s @ c.T).todense())
