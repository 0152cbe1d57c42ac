"""Ask when unsure: one ChatIR split question under a search's results when its top hits are close.

A plain search returns a ranking and stops. When the best few images are about equally close to
the query, the search cannot tell them apart, but one question can: the ``split`` questioner's
question over the shown hits ("is there a dog or a ball?", :mod:`.questioners`) whose answer best
separates them. :func:`clarifying_question` decides whether to ask and returns the question, its
options (the choice words and "neither", or yes / no), and for each option the shown hits
re-ordered as that answer says, so a click re-ranks the page without another search.

"Close" is measured, not assumed (``ClarifyConfig.signal``, on the text->image cosines of the
first ``top`` shown hits; higher = more unsure):

``entropy``    normalised entropy of the ChatIR candidate weights softmax(cos / temperature)
               (the weights the questioner's information gain uses), 0 = one clear winner,
               1 = all equal;
``gap``        1 - (cos_1 - cos_2) / (cos_1 - cos_top): how small the lead of hit 1 over hit 2
               is next to the spread of the top hits;
``relevance``  1 - the calibrated relevance of hit 1 (:mod:`mmrag.retrieval.relevance`); an
               encoder without a relevance fit has no such signal, and is never asked about.

A question is offered when the signal is at least ``threshold``. The default signal, threshold
and re-ordering were chosen on Flickr8k dev with the simulated user of ``mmrag eval chat``
(benchmarks/bench_clarify.py; docs/benchmarks.md, "Ask when unsure").

What an answer does to the shown hits (``rerank``): ``P(answer | hit)`` comes from the hit's
caption-word chances ``p[w]`` (:mod:`.features`) as in the questioners' model (a choice "A or B?"
answered "B" means A absent and B present: ``(1 - p[A]) * p[B]``). A hit *keeps* with an answer
when that probability is at least 0.5. ``partition``: the kept hits first, each group in the
shown order; ``loglik``: the chat's re-scoring (:func:`~.ranking.rescore`), ``cos + weight *
sum of log P(what the answer says about a word | hit)``, each chance clipped to [floor, 1 - floor]
(in a hybrid search, the fused score plus the same term brought to its scale, :func:`rerank`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from mmrag.tasks.chat.dialog import Dialog, Round
from mmrag.tasks.chat.features import CaptionWordFeatures
from mmrag.tasks.chat.questioners import Candidates, Question, SplitQuestioner, _entropy_rows
from mmrag.tasks.chat.ranking import answer_constraints, answer_word_chances, log_chance

SIGNALS = ("entropy", "gap", "relevance")
RERANKS = ("partition", "loglik")
#: A hit keeps with an answer when the answer is at least this likely for it (even odds).
KEEP_PROBABILITY = 0.5
NEITHER = "neither"


@dataclass
class ClarifyConfig:
    """When to ask and how an answer re-orders the shown hits (module docstring). Defaults
    chosen on Flickr8k dev (benchmarks/bench_clarify.py)."""

    signal: str = "relevance"
    threshold: float = 0.0027  # ask when hit 1's relevance is below 0.9973
    top: int = 20
    temperature: float = 0.1
    rerank: str = "loglik"
    rescore_weight: float = 0.01
    rescore_floor: float = 0.02
    max_options: int = 2

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.rerank not in RERANKS:
            raise ValueError(f"rerank must be one of {', '.join(RERANKS)}, got {self.rerank!r}")
        if self.top < 2:
            raise ValueError(f"top must be >= 2, got {self.top}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClarifyOption:
    """One answer: ``hit_ids``, the shown hits after it (best first); ``kept_ids``, those of them
    consistent with it (``P(answer | hit) >= KEEP_PROBABILITY``), in the same order."""

    answer: str
    hit_ids: list[str]
    kept_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "hit_ids": list(self.hit_ids), "kept_ids": list(self.kept_ids)}


@dataclass
class Clarification:
    question: str
    topic: str | None
    options: list[ClarifyOption]
    signal: str
    closeness: float
    threshold: float
    gain_bits: float | None = None
    asked: Question | None = field(default=None, repr=False)  # the questioner's question itself

    def option(self, answer: str) -> ClarifyOption:
        for o in self.options:
            if o.answer == answer:
                return o
        raise KeyError(f"{answer!r} is not an option (options: {', '.join(o.answer for o in self.options)})")

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "topic": self.topic,
                "options": [o.to_dict() for o in self.options], "signal": self.signal,
                "closeness": round(float(self.closeness), 4), "threshold": self.threshold,
                "gain_bits": self.gain_bits}


def closeness(cosines: Sequence[float], signal: str = "entropy", top: int = 20, temperature: float = 0.1,
              relevance_model=None) -> float | None:
    """How unsure the ranking is, in [0, 1] (module docstring; higher = closer top hits).
    None when it cannot be said (fewer than 2 hits; ``relevance`` without a model)."""
    c = np.sort(np.asarray(cosines, np.float64)[:top])[::-1] if len(cosines) else np.zeros(0)
    if len(c) < 2:
        return None
    if signal == "entropy":
        w = np.exp((c - c[0]) / temperature)
        w /= w.sum()
        return float(_entropy_rows(w) / np.log2(len(c)))
    if signal == "gap":
        spread = c[0] - c[-1]
        return 1.0 if spread <= 0 else float(1.0 - (c[0] - c[1]) / spread)
    if signal == "relevance":
        return None if relevance_model is None else float(1.0 - relevance_model([c[0]])[0])
    raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")


def answer_options(question: Question) -> list[str]:
    """The answers offered for a question: a choice question's options and "neither", else yes / no."""
    opts = question.info.get("options")
    return [*opts, NEITHER] if opts else ["yes", "no"]


def answer_evidence(words, vocab: dict[str, int], question: Question, answer: str) -> list[tuple[int, np.ndarray]]:
    """What ``answer`` says about each word, with each hit's ``p[w]`` (rows of ``words``, the
    hits' matrix): :func:`~.ranking.answer_word_chances` of the answer's constraints."""
    return list(answer_word_chances(words, vocab, answer_constraints(Round(question.text, answer, question.topic))))


def answer_likelihood(evidence: Sequence[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    """``P(answer | hit)`` for ``n`` hits: the product over the answer's words (present: ``p``,
    absent: ``1 - p``)."""
    prob = np.ones(n, np.float64)
    for pol, p in evidence:
        prob *= p if pol > 0 else 1.0 - p
    return prob


def rerank(ids: Sequence[str], scores: np.ndarray, evidence: Sequence[tuple[int, np.ndarray]], config: ClarifyConfig,
           cosines: np.ndarray | None = None) -> tuple[list[str], list[str]]:
    """(the shown hits after an answer, those that keep with it in that order): module docstring.
    ``evidence``: :func:`answer_evidence`. ``scores``: what ranked the shown hits (cosines in
    vector search). When they are another search's scores (hybrid fusion), the answer term is
    brought to their scale by the ratio of the scores' and the ``cosines``' spreads over the shown
    hits, so the weight means what it was chosen for and the displayed order (its keyword
    evidence included) is the starting point. The term is the chat's re-scoring
    (:func:`~.ranking.rescore`): the weight times the sum of each word's clipped log chance."""
    keep = answer_likelihood(evidence, len(ids)) >= KEEP_PROBABILITY
    if config.rerank == "partition":
        order = np.concatenate([np.flatnonzero(keep), np.flatnonzero(~keep)])
    else:
        base = np.asarray(scores, np.float64)
        scale = 1.0
        if cosines is not None and len(base) > 1:
            sd_c = float(np.std(np.asarray(cosines, np.float64)))
            scale = float(np.std(base)) / sd_c if sd_c > 0 else 1.0
        loglik = np.zeros(len(ids), np.float64)
        for pol, p in evidence:
            loglik += log_chance(pol, p, config.rescore_floor)
        order = np.argsort(-(base + scale * config.rescore_weight * loglik), kind="stable")
    return [ids[i] for i in order], [ids[i] for i in order if keep[i]]


def clarify(query_text: str, ids: Sequence[str], cosines: Sequence[float], words, features: CaptionWordFeatures,
            config: ClarifyConfig | None = None, relevance_model=None, force: bool = False,
            shown: int | None = None, scores: Sequence[float] | None = None) -> Clarification | None:
    """The array form of :func:`clarifying_question`: ``ids`` the hits in their order,
    ``cosines`` their text->image cosines, ``words`` their ``p[w]`` matrix from ``features``,
    ``scores`` the search's own scores when they are not the cosines (see :func:`rerank`).
    ``force``: ask whatever the signal says (to measure the rule)."""
    config = config or ClarifyConfig()
    ids = list(ids)
    cos = np.asarray(cosines, np.float64)
    if len(ids) < 2 or not query_text or not query_text.strip():
        return None
    value = closeness(cos, config.signal, config.top, config.temperature, relevance_model)
    if value is None or (not force and value < config.threshold):
        return None
    n = min(config.top, len(ids))
    cand = Candidates(ids[:n], cos[:n].astype(np.float32), words=words[:n], vocab=features.vocab,
                      words_list=features.words)
    q = SplitQuestioner(top=n, temperature=config.temperature, max_options=config.max_options).ask(
        Dialog(query_text), cand)
    if q is None:
        return None
    m = len(ids) if shown is None else max(1, min(int(shown), len(ids)))
    base = cos[:m] if scores is None else np.asarray(scores, np.float64)[:m]
    options = []
    for a in answer_options(q):
        order, kept = rerank(ids[:m], base, answer_evidence(words[:m], features.vocab, q, a), config,
                             None if scores is None else cos[:m])
        options.append(ClarifyOption(a, order, kept))
    return Clarification(q.text, q.topic, options, config.signal, value, config.threshold,
                         q.info.get("gain_bits"), asked=q)


def clarifying_question(searcher, query_text: str, hits: Sequence[Any], features: CaptionWordFeatures | None,
                        config: ClarifyConfig | None = None, force: bool = False,
                        shown: int | None = None) -> Clarification | None:
    """The split question over a text search's ``hits`` when they are close (module
    docstring), or None: not unsure enough, no caption source (``features`` None, see
    :func:`~.session.caption_features`), fewer than two hits, or nothing worth asking.
    The rule and the question read the first ``config.top`` hits (search at least that many:
    the rule was chosen at that many); ``shown``: how many of them the user sees (default all),
    the ones each option re-orders.
    Cosines are recomputed from the stored vectors, so the rule reads the same numbers in every
    search mode (a hybrid or keyword hit's score is not a cosine)."""
    if features is None or len(hits) < 2 or not isinstance(query_text, str) or not query_text.strip():
        return None
    config = config or ClarifyConfig()
    ids = [h.id for h in hits]
    vectors = searcher.vectors(ids)
    q = searcher.encoder.embed_texts([query_text])[0]
    cos = np.asarray(vectors, np.float64) @ np.asarray(q, np.float64)
    model = searcher.relevance_model() if config.signal == "relevance" else None
    words = features.matrix(ids, vectors)
    scores = [float(h.score) for h in hits]
    return clarify(query_text, ids, cos, words, features, config, model, force, shown,
                   None if np.allclose(scores, cos, atol=1e-5) else scores)


__all__ = ["SIGNALS", "RERANKS", "KEEP_PROBABILITY", "ClarifyConfig", "ClarifyOption", "Clarification",
           "closeness", "answer_options", "answer_evidence", "answer_likelihood", "rerank", "clarify", "clarifying_question"]
