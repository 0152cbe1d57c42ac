"""Reverse-image-retrieval augmented answering: image + question -> neighbours -> cues -> answer.

:class:`RIRPipeline` holds a provider (reverse image search), an answerer and the QA bank of the
provider's images; :meth:`RIRPipeline.ask` answers one question and returns an :class:`Answer`
with the evidence used. :func:`answer_question` is the one-call form (pipelines are cached per
index and answerer, so repeated calls do not reload models).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.errors import InvalidInputError
from mmrag.tasks.rir.answerers import ANSWERERS, AnswerRequest, Answerer
from mmrag.tasks.rir.cues import CueBlock, Evidence, build_cue_block
from mmrag.tasks.rir.knowledge import QABank
from mmrag.tasks.rir.providers import ReverseSearchProvider, create_provider

__all__ = ["Answer", "RIRPipeline", "answer_question", "auto_answerer", "DEFAULT_K", "GENERATOR_K"]

# knn: chosen on the VQA-RAD dev split (by image) of train with KnnConfig; see docs/benchmarks.md.
DEFAULT_K = 10
# Generators read the cue block as prompt text: fewer neighbours keep it within a small model's
# context (a fixed choice, not tuned).
GENERATOR_K = 5


@dataclass
class Answer:
    """An answer and what it rests on. ``evidence``: the retrieved images (id, similarity, the
    texts shown), best first; empty without RIR. ``details``: answerer specifics (knn votes, the
    generator prompt). JSON-friendly through :meth:`to_dict`."""

    question: str
    answer: str
    rir: bool
    answerer: str
    evidence: list[Evidence] = field(default_factory=list)
    cues: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "rir": self.rir, "answerer": self.answerer,
                "evidence": [e.to_dict() for e in self.evidence], "cues": self.cues,
                "details": _jsonable(self.details), "seconds": round(self.seconds, 4)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


class RIRPipeline:
    """Provider + answerer (+ the provider's QA bank for question similarities).

    ``answerer``: ``"auto"`` (knn when the index has QA pairs, else ``captions`` when it has captions;
    otherwise :class:`AnswererError` saying why), ``"knn"`` (options: :class:`KnnConfig` fields),
    ``"captions"``, ``"generator"`` (option
    ``generator=NAME``), a generator name directly (``"local"``, ``"openai"``), or an
    :class:`Answerer` instance. ``k``: neighbours retrieved; ``qa_per_image``: QA pairs per
    neighbour in the cue block.
    """

    def __init__(self, provider: ReverseSearchProvider, answerer: str | Answerer = "auto", k: int | None = None,
                 qa_per_image: int = 3, bank: QABank | None = None, **answerer_options: Any):
        if k is not None and k < 1:  # InvalidInputError: a ValueError the CLI and service report as bad input
            raise InvalidInputError(f"k must be at least 1, got {k}")
        self.provider = provider
        self.qa_per_image = int(qa_per_image)
        encoder = provider.encoder
        self.n_captioned: int | None = None  # images with captions, when the provider can list them
        if bank is None and encoder is not None:
            meta = provider.all_metadata()
            bank = QABank.from_metadata(meta, encoder)
            self.n_captioned = sum(bool(m.get("captions")) for _, m in meta) if meta else None
        self.bank = bank
        self.encoder = encoder
        if isinstance(answerer, str):
            answerer = self._make_answerer(answerer, answerer_options)
        self.answerer = answerer
        # Default k: DEFAULT_K for knn, GENERATOR_K for generators (prompt length).
        self.k = int(k) if k is not None else (DEFAULT_K if answerer.name in ("knn", "captions") else GENERATOR_K)

    def _make_answerer(self, name: str, options: dict[str, Any]) -> Answerer:
        if name == "auto":
            name = auto_answerer(self.bank, self.n_captioned)
        if name == "captions":
            return ANSWERERS.create("captions", **options)
        if name == "knn":
            if self.bank is None:
                from mmrag.tasks.rir.answerers import AnswererError

                raise AnswererError("the knn answerer needs a provider with QA knowledge (an index)")
            return ANSWERERS.create("knn", bank=self.bank, **options)
        if name == "generator":
            return ANSWERERS.create("generator", **options)
        from mmrag.generators import GENERATORS

        if name in GENERATORS:  # also an installed one or a MODULE:NAME of the user's
            return ANSWERERS.create("generator", generator=name, **options)
        raise KeyError(f"unknown answerer {name!r}; available: knn, generator, or a generator name "
                       f"({', '.join(GENERATORS.names())})")

    def question_vectors(self, questions: Sequence[str]) -> np.ndarray | None:
        if self.encoder is None:
            return None
        return self.encoder.embed_texts(list(questions))

    def ask(self, image: Any, question: str, rir: bool = True, *, k: int | None = None,
            exclude_ids: Sequence[str] = (), exclude_same_image: bool = False,
            image_vector: np.ndarray | None = None, question_vector: np.ndarray | None = None) -> Answer:
        """Answer ``question`` about ``image`` (path, bytes or PIL image).

        ``rir=False``: the same answerer without retrieval (it never sees the neighbours).
        ``exclude_ids`` / ``exclude_same_image``: leave those images (and, with
        ``exclude_same_image``, images with the same file bytes) out of the neighbours, and their
        QA pairs out of the knn answerer's memory — i.e. treat the query image as unseen.
        ``image_vector`` / ``question_vector``: precomputed embeddings (batch evaluation).
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("empty question")
        t0 = time.perf_counter()
        if question_vector is None and self.encoder is not None:
            question_vector = self.encoder.embed_texts([question])[0]
        neighbours = []
        excluded = set(exclude_ids)
        if rir:
            if image is None and image_vector is None:
                raise ValueError("RIR needs an image")
            neighbours = self.provider.search(image, k=k or self.k, vector=image_vector, exclude_ids=excluded,
                                              exclude_same_bytes=exclude_same_image)
        if exclude_same_image and image is not None and self.bank is not None:
            excluded |= self._same_bytes_ids(image)
        cues: CueBlock | None = build_cue_block(neighbours, question_vector, self.bank, self.qa_per_image) if rir else None
        out = self.answerer.answer(AnswerRequest(question=question, question_vector=question_vector, image=image,
                                                 neighbours=neighbours, cues=cues,
                                                 exclude_images=frozenset(excluded)))
        return Answer(question=question, answer=out.text, rir=rir, answerer=self.answerer.name,
                      evidence=cues.items if cues else [], cues=cues.text if cues else "", details=out.details,
                      seconds=time.perf_counter() - t0)

    def _same_bytes_ids(self, image: Any) -> set[str]:
        from mmrag.tasks.rir.providers import image_sha256

        digest = image_sha256(image)
        if not digest or not hasattr(self.provider, "all_metadata"):
            return set()
        if not hasattr(self, "_sha_index"):
            self._sha_index: dict[str, set[str]] = {}
            for i, m in self.provider.all_metadata():
                if m.get("sha256"):
                    self._sha_index.setdefault(m["sha256"], set()).add(i)
        return self._sha_index.get(digest, set())

    def close(self) -> None:
        self.provider.close()


def auto_answerer(bank: QABank | None, n_captioned: int | None) -> str:
    """The answerer that works with what the index has: knn (QA pairs), else captions; else why not."""
    if bank is not None and len(bank) > 0:
        return "knn"
    if n_captioned is None or n_captioned > 0:
        return "captions"
    from mmrag.tasks.rir.answerers import AnswererError

    raise AnswererError("this index has neither QA pairs nor captions, so no answerer without a language model "
                        "can answer: caption it (`mmrag caption`), index a VQA dataset, or answer with a "
                        "generator (--generator local)")


_PIPELINES: dict[tuple, RIRPipeline] = {}
_LOCK = threading.Lock()


def answer_question(image: Any, question: str, *, index: str | Path | None = None, searcher=None,
                    provider: ReverseSearchProvider | None = None, k: int | None = None, rir: bool = True,
                    answerer: str = "auto", exclude_same_image: bool = False, **answerer_options: Any) -> Answer:
    """Answer a question about an image with reverse image retrieval over an index.

    Give the index as ``index`` (a directory), ``searcher`` (an open :class:`mmrag.retrieval.Searcher`)
    or ``provider`` (any :class:`ReverseSearchProvider`). ``answerer``: ``"auto"`` (default: knn with
    QA pairs, else the neighbours' captions), ``"knn"``, ``"captions"``, or a generator name (``"local"``, ``"openai"``;
    generator options such as ``generator_options`` go through ``**answerer_options``).

    >>> a = answer_question("scan.jpg", "Is there a fracture?", index="vqa_rad_index")  # doctest: +SKIP
    >>> a.answer, [e.id for e in a.evidence]  # doctest: +SKIP
    """
    if provider is None:
        if searcher is None and index is None:
            raise ValueError("give index, searcher or provider")
        src = ("searcher", id(searcher)) if searcher is not None else ("index", str(Path(index).resolve()))
    else:
        src = ("provider", id(provider))
    key = (src, answerer, tuple(sorted((k_, repr(v)) for k_, v in answerer_options.items())))
    with _LOCK:
        pipe = _PIPELINES.get(key)
        if pipe is None:
            if provider is None:
                provider = create_provider("index", searcher=searcher) if searcher is not None else \
                    create_provider("index", index_dir=index)
            pipe = _PIPELINES[key] = RIRPipeline(provider, answerer=answerer, k=k, **answerer_options)
    return pipe.ask(image, question, rir=rir, k=k, exclude_same_image=exclude_same_image)
