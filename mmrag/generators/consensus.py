"""``consensus``: choose the retrieved caption that agrees most with the others (no language model).

Consensus re-ranking (Devlin et al. 2015, "Exploring nearest neighbor approaches for image
captioning"): given k candidate captions (``request.evidence``, e.g. the captions of the nearest
images), score each by its mean similarity to the *other* candidates and return the best one.
Similarities:

``"cider"``
    CIDEr-D of the candidate against each other candidate as the single reference, exactly as
    pycocoevalcap computes it (1-4-grams, tf-idf, clipped counts, Gaussian length penalty σ=6,
    ×10), vectorised with numpy. Document frequencies come from the candidate set (each candidate
    a document), or from a reference corpus given as :class:`DocumentFrequency` (e.g. built from
    the caption datastore with :meth:`DocumentFrequency.from_captions`).
``"bleu"``
    Smoothed sentence BLEU-4 of the candidate against each other one (clipped n-gram precision,
    add-one smoothing for 2-4-grams as in Lin & Och 2004, brevity penalty).
``"embedding"``
    Cosine similarity of ``request.evidence_vectors`` (one row per candidate).

Options: ``top_m`` (mean over the m most similar others only, Devlin's variant), ``weighted``
(weight each other candidate by its retrieval similarity, ``request.evidence_scores``),
``alpha`` (add ``alpha × own retrieval similarity`` to the consensus score). Ties go to the
earlier candidate, i.e. the better-ranked retrieval. Everything is deterministic.

Captions are tokenised like the captioning metrics' Python tokeniser
(:func:`mmrag.eval.caption_metrics.simple_ptb_tokenize`): lower-cased, punctuation removed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mmrag.eval.caption_metrics import simple_ptb_tokenize
from mmrag.generators.base import GENERATORS, GenerationRequest, GenerationResult, Generator, GeneratorError

__all__ = [
    "ConsensusGenerator",
    "DocumentFrequency",
    "SIMILARITIES",
    "bleu_matrix",
    "cider_d_matrix",
    "embedding_matrix",
]

SIMILARITIES = ("cider", "bleu", "embedding")
_N = 4
_SIGMA = 6.0


def _ngrams(tokens: Sequence[str], n: int = _N) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def tokenize(text: str) -> list[str]:
    return simple_ptb_tokenize(text).split()


@dataclass(frozen=True)
class DocumentFrequency:
    """n-gram document frequencies for CIDEr-D's idf: ``df[ngram]`` = number of documents
    (images) whose reference captions contain the n-gram; ``n_docs`` = number of documents."""

    df: dict[tuple[str, ...], float]
    n_docs: int

    @classmethod
    def from_captions(cls, captions_by_image: Iterable[Sequence[str]]) -> "DocumentFrequency":
        """One document per image: the union of the n-grams of its captions (as in CIDEr-D)."""
        df: dict[tuple[str, ...], float] = defaultdict(float)
        n = 0
        for caps in captions_by_image:
            if isinstance(caps, str):
                caps = [caps]
            seen = set()
            for c in caps:
                seen.update(_ngrams(tokenize(c)))
            for g in seen:
                df[g] += 1.0
            n += 1
        if n == 0:
            raise GeneratorError("document frequencies need at least one document")
        return cls(dict(df), n)


def _count_matrix(token_lists: Sequence[Sequence[str]]):
    """Dense n-gram count matrix [k, V], the order (1..4) of each column, and the vocabulary."""
    counts = [_ngrams(t) for t in token_lists]
    vocab: dict[tuple[str, ...], int] = {}
    for c in counts:
        for g in c:
            if g not in vocab:
                vocab[g] = len(vocab)
    mat = np.zeros((len(counts), len(vocab)), dtype=np.float64)
    for i, c in enumerate(counts):
        for g, v in c.items():
            mat[i, vocab[g]] = v
    order = np.zeros(len(vocab), dtype=np.int64)
    for g, j in vocab.items():
        order[j] = len(g)
    return mat, order, vocab


def _pairwise_clipped(a: np.ndarray, weight_by_ref: bool, chunk_elems: int = 4_000_000) -> np.ndarray:
    """out[i, j] = sum_g min(a[i,g], a[j,g]) * (a[j,g] if weight_by_ref else 1)."""
    k, v = a.shape
    out = np.empty((k, k), dtype=np.float64)
    rows = max(1, chunk_elems // max(1, k * v))
    for s in range(0, k, rows):
        block = np.minimum(a[s : s + rows, None, :], a[None, :, :])
        if weight_by_ref:
            block *= a[None, :, :]
        out[s : s + rows] = block.sum(-1)
    return out


def _pairwise_min_counts(counts: np.ndarray, col_weight: np.ndarray | None = None,
                         weight_by_ref: bool = False) -> np.ndarray:
    """Like :func:`_pairwise_clipped` for non-negative integer ``counts`` scaled per column:
    ``out[i, j] = sum_g w_g * min(c[i,g], c[j,g]) * (c[j,g] if weight_by_ref else 1)``.

    ``min(x, y) = sum_t [x >= t][y >= t]`` for integers, so this is a few matrix products (one
    per count level, usually <= 3) instead of a dense k x k x V minimum: same values, and fast
    enough for consensus over 100+ candidates.
    """
    k = counts.shape[0]
    out = np.zeros((k, k), dtype=np.float64)
    if counts.size == 0:
        return out
    try:  # sparse products: no BLAS threads (which crawl on a busy 2-core machine), tiny nnz
        from scipy import sparse
    except ImportError:  # pragma: no cover - scipy comes with sentence-transformers
        sparse = None
    top = int(counts.max())
    for t in range(1, top + 1):
        b = (counts >= t).astype(np.float64)
        left = b * col_weight[None, :] if col_weight is not None else b
        right = b * counts if weight_by_ref else b
        if sparse is not None:
            out += (sparse.csr_matrix(left) @ sparse.csr_matrix(right).T).toarray()
        else:
            out += left @ right.T
    return out


def cider_d_matrix(
    texts: Sequence[str], document_frequency: DocumentFrequency | None = None,
    sigma: float = _SIGMA, tokenized: bool = False,
) -> np.ndarray:
    """``M[i, j]`` = CIDEr-D of ``texts[i]`` with ``texts[j]`` as its only reference (×10 scale,
    like pycocoevalcap's per-image scores); document frequencies from the texts themselves
    (each one a document) unless given."""
    toks = [list(t) if tokenized else tokenize(t) for t in texts]
    k = len(toks)
    mat, order, vocab = _count_matrix(toks)
    if document_frequency is None:
        df = (mat > 0).sum(0).astype(np.float64)
        log_n = math.log(float(k))
    else:
        df = np.array([document_frequency.df.get(g, 0.0) for g in vocab], dtype=np.float64)
        log_n = math.log(float(document_frequency.n_docs))
    idf = log_n - np.log(np.maximum(df, 1.0))
    vec = mat * idf[None, :]
    fast = bool((idf >= 0).all())
    # pycocoevalcap's "length" counts bigrams (its n == 1 is the 2-gram index): words - 1.
    length = np.array([max(len(t) - 1, 0) for t in toks], dtype=np.float64)
    total = np.zeros((k, k), dtype=np.float64)
    for n in range(1, _N + 1):
        cols = order == n
        if not cols.any():
            continue
        a = vec[:, cols]
        if fast:  # vec = counts * idf with idf >= 0: min(c_i idf, c_j idf) c_j idf = idf^2 min(c_i, c_j) c_j
            num = _pairwise_min_counts(mat[:, cols], idf[cols] ** 2, weight_by_ref=True)
        else:
            num = _pairwise_clipped(a, weight_by_ref=True)
        norm = np.sqrt((a * a).sum(1))
        den = norm[:, None] * norm[None, :]
        total += np.where(den != 0, num / np.where(den != 0, den, 1.0), num)
    delta = length[:, None] - length[None, :]
    penalty = np.exp(-(delta**2) / (2 * sigma**2))
    return total / _N * penalty * 10.0


def bleu_matrix(texts: Sequence[str], tokenized: bool = False) -> np.ndarray:
    """``M[i, j]`` = smoothed sentence BLEU-4 (0..1) of ``texts[i]`` against ``texts[j]``."""
    toks = [list(t) if tokenized else tokenize(t) for t in texts]
    k = len(toks)
    mat, order, _ = _count_matrix(toks)
    hyp_len = np.array([len(t) for t in toks], dtype=np.float64)
    log_p = np.zeros((k, k), dtype=np.float64)
    zero = np.zeros((k, k), dtype=bool)
    for n in range(1, _N + 1):
        cols = order == n
        matches = _pairwise_min_counts(mat[:, cols]) if cols.any() else np.zeros((k, k))
        guesses = np.maximum(hyp_len - n + 1, 0.0)[:, None] * np.ones((1, k))
        if n == 1:
            zero |= matches == 0
            p = matches / np.maximum(guesses, 1.0)
        else:
            p = (matches + 1.0) / (guesses + 1.0)
        log_p += np.log(np.where(p > 0, p, 1.0))
    ref_len = hyp_len[None, :]
    hl = hyp_len[:, None]
    bp = np.where(hl >= ref_len, 1.0, np.exp(1.0 - ref_len / np.maximum(hl, 1e-9)))
    out = bp * np.exp(log_p / _N)
    out[zero] = 0.0
    return out


def embedding_matrix(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


class ConsensusGenerator(Generator):
    """Returns the candidate in ``request.evidence`` with the highest consensus score."""

    reads_messages = False
    reads_evidence = True

    def __init__(
        self,
        similarity: str = "cider",
        top_m: int | None = None,
        weighted: bool = False,
        alpha: float = 0.0,
        document_frequency: DocumentFrequency | None = None,
    ):
        if similarity not in SIMILARITIES:
            raise GeneratorError(
                f"unknown consensus similarity {similarity!r}; choose from {', '.join(SIMILARITIES)}"
            )
        if top_m is not None and (not isinstance(top_m, int) or top_m < 1):
            raise GeneratorError(f"top_m must be a positive integer or None, got {top_m!r}")
        self.name = f"consensus-{similarity}"
        self.similarity = similarity
        self.top_m = top_m
        self.weighted = bool(weighted)
        self.alpha = float(alpha)
        self.document_frequency = document_frequency

    def similarity_matrix(self, request: GenerationRequest) -> np.ndarray:
        texts = list(request.evidence)
        if self.similarity == "cider":
            return cider_d_matrix(texts, self.document_frequency)
        if self.similarity == "bleu":
            return bleu_matrix(texts)
        vecs = request.evidence_vectors
        if vecs is None:
            raise GeneratorError("consensus similarity 'embedding' needs request.evidence_vectors")
        vecs = np.asarray(vecs)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise GeneratorError(
                f"evidence_vectors must have shape [{len(texts)}, dim], got {tuple(vecs.shape)}"
            )
        return embedding_matrix(vecs)

    def scores(self, request: GenerationRequest) -> np.ndarray:
        """The consensus score of each candidate (higher = agrees more with the others)."""
        k = len(request.evidence)
        retrieval = None
        if request.evidence_scores is not None:
            retrieval = np.asarray(request.evidence_scores, dtype=np.float64)
            if retrieval.shape != (k,):
                raise GeneratorError(
                    f"evidence_scores must hold {k} values (one per evidence text), got {retrieval.shape}"
                )
        if (self.weighted or self.alpha) and retrieval is None:
            raise GeneratorError("weighted/alpha consensus needs request.evidence_scores")
        if k == 1:
            return np.zeros(1)
        sim = self.similarity_matrix(request)
        others = ~np.eye(k, dtype=bool)
        m = k - 1 if self.top_m is None else min(self.top_m, k - 1)
        weights = np.maximum(retrieval, 0.0) if self.weighted else np.ones(k)
        out = np.empty(k, dtype=np.float64)
        for i in range(k):
            s, w = sim[i, others[i]], weights[others[i]]
            if m < k - 1:
                keep = np.argsort(-s, kind="stable")[:m]
                s, w = s[keep], w[keep]
            out[i] = float((s * w).sum() / w.sum()) if w.sum() > 0 else float(s.mean())
        if self.alpha:
            out = out + self.alpha * retrieval
        return out

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if not request.evidence:
            raise GeneratorError(
                "the consensus generator chooses among retrieved texts: request.evidence is empty"
            )
        if not all(isinstance(t, str) for t in request.evidence):
            raise GeneratorError("request.evidence must be a list of strings")
        scores = self.scores(request)
        best = int(np.argmax(scores))  # first maximum: ties go to the better-ranked candidate
        return GenerationResult(
            text=request.evidence[best],
            raw={"index": best, "scores": scores.tolist(), "similarity": self.similarity},
        )


@GENERATORS.register("consensus")
def _make_consensus(**kwargs) -> ConsensusGenerator:
    return ConsensusGenerator(**kwargs)
