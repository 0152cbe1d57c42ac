"""Calibrated relevance: the probability that an image matches a text query, from their cosine.

A cosine by itself does not say whether the best hit is any good (0.3 is a fine text->image match
for one encoder and noise for another), so searches answered with confident garbage. Per encoder,
a Platt scaling ``p = 1 / (1 + exp(-(a * cos + b)))`` is fitted on Flickr8k **dev** pairs:
every caption with its own image (relevant) and with one other image drawn at random (not
relevant), equal numbers of each, so ``p`` is the probability of relevance at even odds.

Where the parameters come from, first found wins (keyed by ``encoder.fingerprint()``, so a
changed bridge or model never reuses another's fit):

1. ``mmrag/assets/relevance.json``, shipped for the default encoder (made by
   ``benchmarks/bench_relevance.py``, which also reports the calibration error);
2. ``cache_dir()/relevance/<fingerprint>.json``, written by :func:`relevance_model` with
   ``fit=True`` (it needs the Flickr8k data).

Without either, hits carry no relevance and nothing is said about "no good match".
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmrag.paths import cache_dir

ASSET = Path(__file__).resolve().parents[1] / "assets" / "relevance.json"
#: Below this relevance the best hit is "no good match" (even odds of a matching pair).
NO_MATCH_THRESHOLD = 0.5


@dataclass
class RelevanceModel:
    a: float
    b: float
    fingerprint: str
    fitted_on: str = "flickr8k dev"
    n_pairs: int = 0

    def __call__(self, cosines) -> np.ndarray:
        z = self.a * np.asarray(cosines, np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-z))


def fit_platt(scores, labels, iterations: int = 50) -> tuple[float, float]:
    """Logistic regression of ``labels`` (0/1) on one feature by Newton's method (two
    parameters: no need for a solver library)."""
    x = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64)
    a, b = 0.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        g = np.array([((p - y) * x).sum(), (p - y).sum()])
        w = p * (1 - p) + 1e-9
        h = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def pair_scores(encoder, corpus, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, labels) of a captioned corpus: each caption with its own image (1) and with a
    random other image (0)."""
    from mmrag.retrieval.cache import corpus_image_vectors

    img = corpus_image_vectors(encoder, corpus, progress=False)
    texts, owner = [], []
    for j, it in enumerate(corpus.items):
        for c in it.captions:
            texts.append(c)
            owner.append(j)
    txt = encoder.embed_texts(texts)
    owner = np.asarray(owner)
    rng = random.Random(seed)
    n = len(corpus.items)
    other = np.asarray([(o + rng.randrange(1, n)) % n for o in owner])
    pos = (txt * img[owner]).sum(1)
    neg = (txt * img[other]).sum(1)
    return np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """ECE: the pair-weighted mean |accuracy - confidence| over equal-width probability bins."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(err)


def fit_relevance(encoder, corpus, seed: int = 0) -> RelevanceModel:
    s, y = pair_scores(encoder, corpus, seed)
    a, b = fit_platt(s, y)
    return RelevanceModel(a=a, b=b, fingerprint=encoder.fingerprint(),
                          fitted_on=f"{corpus.name} {corpus.items[0].split if corpus.items else ''}".strip(),
                          n_pairs=len(y))


def _cache_path(fingerprint: str) -> Path:
    return cache_dir() / "relevance" / f"{fingerprint}.json"


def load_relevance(fingerprint: str) -> RelevanceModel | None:
    """The shipped or cached fit for an encoder fingerprint, or None."""
    for path in (ASSET, _cache_path(fingerprint)):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        d = d.get(fingerprint) if path == ASSET else d
        if isinstance(d, dict) and {"a", "b"} <= d.keys():
            return RelevanceModel(**{k: d[k] for k in ("a", "b", "fingerprint", "fitted_on", "n_pairs") if k in d})
    return None


def relevance_model(encoder, fit: bool = False, data_dir: str | Path | None = None) -> RelevanceModel | None:
    """The encoder's relevance model; with ``fit`` one is fitted on Flickr8k dev (under
    ``data_dir`` or the shared data) and cached when none is stored."""
    fp = encoder.fingerprint()
    m = load_relevance(fp)
    if m is not None or not fit:
        return m
    from mmrag.corpus.readers import read_corpus
    from mmrag.paths import repo_data_dir

    root = Path(data_dir) if data_dir else repo_data_dir()
    if root is None or not (root / "flickr8k").exists():
        return None
    m = fit_relevance(encoder, read_corpus("flickr8k", root / "flickr8k", split="dev"))
    path = _cache_path(fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(m), indent=2))
    os.replace(tmp, path)
    return m


__all__ = ["RelevanceModel", "fit_platt", "pair_scores", "expected_calibration_error", "fit_relevance",
           "load_relevance", "relevance_model", "NO_MATCH_THRESHOLD"]
