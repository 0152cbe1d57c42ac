"""Answerers: a question (+ the RIR cues) in, an answer out. Registry names (:data:`ANSWERERS`):

``knn`` (no language model)
    Votes with the answers of known questions similar to the user's (cosine of the encoder's
    text vectors). Two pools, each a distribution over normalised answers:

    * *global* (the answerer's "memory", used with and without RIR): the ``top_m`` most similar
      questions of the whole QA bank, weight ``exp((cos_q - 1) / tau_q)``. Without RIR this is
      all there is: it never sees which images resemble the query image.
    * *neighbours* (RIR only): every QA pair of the retrieved images, weight
      ``exp((cos_q - 1) / tau_q) * exp((sim_img - sim_img_best) / tau_img)``.

    With RIR the answer is the argmax of ``(1 - mix) * global + mix * neighbours`` (``mix = 0``
    is exactly the no-RIR answer). Defaults were chosen on a VQA-RAD dev split carved out of
    train by image (``benchmarks/bench_rir.py``; docs/benchmarks.md).
``captions`` (no language model; any captioned index)
    Answers from the retrieved images' captions: a yes/no question ("Is there a dog?") is
    answered by whether its content words occur in the neighbours' captions (similarity-weighted
    majority); any other question gets the caption the neighbours agree on most (``consensus``
    generator, CIDEr-D). What the default answerer (``auto``) falls back to without QA pairs.
``generator``
    Any generator of the shared layer (``local``, ``openai``, ...): a prompt with the cue block
    (RIR) or without it (no RIR), the question, and an instruction to answer briefly; the image is
    attached for generators that take images (``local`` is text-only and ignores it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from mmrag.errors import MmragError
from mmrag.registry import Registry
from mmrag.retrieval.exact import select_k
from mmrag.tasks.rir.cues import CueBlock
from mmrag.tasks.rir.knowledge import QABank
from mmrag.tasks.rir.providers import Neighbour

__all__ = ["AnswerRequest", "AnswerOutput", "Answerer", "ANSWERERS", "KnnConfig", "KnnAnswerer",
           "GeneratorAnswerer", "CaptionAnswerer", "AnswererError", "build_prompt", "SYSTEM_PROMPT"]


class AnswererError(MmragError):
    """An answerer cannot answer with what it was given (e.g. knn without any QA pairs)."""


@dataclass
class AnswerRequest:
    """What an answerer gets. ``neighbours`` and ``cues`` are empty without RIR;
    ``exclude_images``: image ids whose QA pairs must not be used (the query image itself when
    evaluating on unseen images)."""

    question: str
    question_vector: np.ndarray | None = None
    image: Any = None
    neighbours: Sequence[Neighbour] = ()
    cues: CueBlock | None = None
    exclude_images: frozenset[str] = frozenset()


@dataclass
class AnswerOutput:
    text: str
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Answerer(Protocol):
    name: str

    def answer(self, request: AnswerRequest) -> AnswerOutput: ...


ANSWERERS: Registry[Answerer] = Registry("answerer")


@dataclass
class KnnConfig:
    # Chosen on the VQA-RAD dev split (by image) of train for the default encoder
    # (benchmarks/bench_rir.py); another encoder's neighbour similarities are spread otherwise,
    # so re-choose tau_img and k with `bench_rir.py --bridge` when switching.
    top_m: int = 50
    tau_q: float = 0.05
    tau_img: float = 0.05
    mix: float = 0.25


class KnnAnswerer:
    """Weighted vote over the answers of similar known questions (see the module docstring)."""

    name = "knn"

    def __init__(self, bank: QABank, config: KnnConfig | None = None):
        self.bank = bank
        self.config = config or KnnConfig()

    def _vote(self, rows: np.ndarray, weights: np.ndarray) -> dict[str, float]:
        votes: dict[str, float] = {}
        keys = self.bank.norm_answers
        for r, w in zip(rows.tolist(), weights.tolist()):
            votes[keys[r]] = votes.get(keys[r], 0.0) + w
        total = sum(votes.values())
        return {a: v / total for a, v in votes.items()} if total > 0 else {}

    def distributions(self, request: AnswerRequest) -> tuple[dict[str, float], dict[str, float]]:
        """(global, neighbours) answer distributions; neighbours is empty without RIR."""
        if len(self.bank) == 0:
            raise AnswererError("the knn answerer needs QA pairs in the index (metadata 'qa'); "
                                "index a VQA dataset (`mmrag eval ask` builds one) or use --generator")
        if request.question_vector is None:
            raise AnswererError("the knn answerer needs the question's vector")
        c = self.config
        # einsum, not BLAS: a threaded gemv is ~50x slower on a busy small machine, and one
        # question at a time is the common case.
        sims = np.einsum("ij,j->i", self.bank.vectors, np.asarray(request.question_vector, np.float32))
        if request.exclude_images:
            allowed = np.flatnonzero(~np.isin(self.bank.image_ids, list(request.exclude_images)))
        else:
            allowed = np.arange(len(sims))
        m = min(c.top_m, len(allowed))
        top = allowed[select_k(sims[allowed], m)]
        glob = self._vote(top, np.exp((sims[top] - 1.0) / c.tau_q))
        rows, img_sims = [], []
        for n in request.neighbours:
            if n.id in request.exclude_images:
                continue
            r = self.bank.rows_of(n.id)
            rows.extend(r)
            img_sims.extend([n.similarity] * len(r))
        nb: dict[str, float] = {}
        if rows:
            rows_a, img = np.asarray(rows), np.asarray(img_sims, np.float32)
            img_w = np.exp((img - img.max()) / c.tau_img) if math.isfinite(c.tau_img) else np.ones_like(img)
            nb = self._vote(rows_a, np.exp((sims[rows_a] - 1.0) / c.tau_q) * img_w)
        return glob, nb

    def answer(self, request: AnswerRequest) -> AnswerOutput:
        glob, nb = self.distributions(request)
        mix = self.config.mix if nb else 0.0
        scores = {a: (1 - mix) * glob.get(a, 0.0) + mix * nb.get(a, 0.0) for a in set(glob) | set(nb)}
        scores = {a: v for a, v in scores.items() if v > 0}
        if not scores:
            raise AnswererError("no known question to vote with")
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return AnswerOutput(text=ranked[0][0], details={
            "votes": [{"answer": a, "score": round(s, 4)} for a, s in ranked[:5]],
            "mix": mix, "neighbour_pairs": sum(len(self.bank.rows_of(n.id)) for n in request.neighbours),
        })


SYSTEM_PROMPT = ("You answer questions about an image. Answer with a single word or a short phrase; "
                 "for yes/no questions answer yes or no.")


def build_prompt(question: str, cues: CueBlock | None) -> str:
    """The user turn: the cue block (RIR) then the question."""
    parts = []
    if cues is not None and cues.items:
        parts += [cues.text, ""]
    parts += [f"Question: {question.strip()}", "Answer:"]
    return "\n".join(parts)


class GeneratorAnswerer:
    """Answers with a generator of the shared layer from the question and the cue block."""

    def __init__(self, generator, max_tokens: int = 16, system: str = SYSTEM_PROMPT):
        if isinstance(generator, str):
            from mmrag.generators import create_generator

            generator = create_generator(generator)
        self.generator = generator
        self.name = "generator:" + generator.name
        self.max_tokens = int(max_tokens)
        self.system = system

    def answer(self, request: AnswerRequest) -> AnswerOutput:
        from mmrag.generators import GenerationRequest

        prompt = build_prompt(request.question, request.cues)
        images = [request.image] if request.image is not None and not hasattr(request.image, "size") else []
        evidence = [t for e in (request.cues.items if request.cues else []) for t in e.texts]
        gen = GenerationRequest.from_prompt(prompt, system=self.system, images=images,
                                            max_tokens=self.max_tokens, temperature=0.0, stop=["\n"],
                                            evidence=evidence)
        out = self.generator.generate(gen)
        return AnswerOutput(text=out.text.strip(), details={"prompt": prompt, "usage": out.usage})


_YES_NO_START = frozenset("is are was were am does do did can could has have will would should".split())
# Words that carry no object to look for in a caption.
_QUESTION_STOP = frozenset(
    "is are was were am be does do did can could has have had will would should there here this that these "
    "those it its a an the any some of in on at to for with by from and or not no yes what which who whom "
    "whose where when why how image picture photo photograph shown visible see seen".split())


def _stem(word: str) -> str:
    # plural/verb endings, so "dogs" matches "dog" and "running" matches "runs"
    for suffix in ("ing", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+", text.lower())


class CaptionAnswerer:
    """Answers from the neighbours' captions (see the module docstring); needs RIR."""

    name = "captions"

    def __init__(self, yes_threshold: float = 0.5):
        self.yes_threshold = float(yes_threshold)

    def answer(self, request: AnswerRequest) -> AnswerOutput:
        captioned = [n for n in request.neighbours if n.captions and n.id not in request.exclude_images]
        if not captioned:
            raise AnswererError("the captions answerer needs retrieved images with captions; this index has none "
                                "near this image (caption the index with `mmrag caption`, or use a generator)")
        words = _words(request.question)
        content = [_stem(w) for w in words if w not in _QUESTION_STOP and len(w) > 1]
        if words and words[0] in _YES_NO_START and content:
            # similarity-weighted share of neighbours whose captions mention every content word
            weights = np.exp([n.similarity - captioned[0].similarity for n in captioned])
            hits = np.array([all(c in {_stem(w) for cap in n.captions for w in _words(cap)} for c in content)
                             for n in captioned], dtype=np.float64)
            share = float((weights * hits).sum() / weights.sum())
            return AnswerOutput(text="yes" if share >= self.yes_threshold else "no",
                                details={"method": "yes/no from the neighbours' captions", "looked_for": content,
                                         "share": round(share, 4), "neighbours": len(captioned)})
        from mmrag.generators import GenerationRequest, create_generator

        captions = [c for n in captioned for c in n.captions]
        scores = [n.similarity for n in captioned for _ in n.captions]
        out = create_generator("consensus").generate(GenerationRequest(evidence=captions, evidence_scores=scores))
        return AnswerOutput(text=out.text.strip(), details={"method": "consensus caption of the neighbours",
                                                             "candidates": len(captions)})


@ANSWERERS.register("captions")
def _make_captions(**kwargs) -> CaptionAnswerer:
    return CaptionAnswerer(**kwargs)


@ANSWERERS.register("knn")
def _make_knn(bank: QABank, **config) -> KnnAnswerer:
    return KnnAnswerer(bank, KnnConfig(**config))


@ANSWERERS.register("generator")
def _make_generator(generator="local", **kwargs) -> GeneratorAnswerer:
    return GeneratorAnswerer(generator, **kwargs)
