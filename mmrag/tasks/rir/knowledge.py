"""The QA knowledge of an index: every stored (image, question, answer) with question vectors,
and :func:`index_vqa`, which builds such an index from a VQA dataset.

Both answerers need to compare the user's question with known questions (by the encoder's text
side): the ``knn`` answerer votes with the answers of similar questions, the cue block lists each
neighbour's most relevant QA pairs first. Question vectors are cached on disk (keyed by the
encoder and the questions), so opening an index for ``mmrag ask`` does not re-embed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any, Iterable, Sequence

import numpy as np

from mmrag.corpus.vqa_rad import VQADataset, qa_corpus
from mmrag.retrieval.cache import cached_vectors, encoder_cache_key
from mmrag.tasks.rir.normalize import normalize_answer

__all__ = ["QAPair", "QABank", "index_vqa"]


@dataclass(frozen=True)
class QAPair:
    image_id: str
    question: str
    answer: str
    answer_type: str = "OPEN"
    question_type: str = "OTHER"

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "question": self.question, "answer": self.answer,
                "answer_type": self.answer_type, "question_type": self.question_type}


def _pairs_from(image_id: str, qa: Iterable[dict[str, Any]]) -> list[QAPair]:
    out = []
    for p in qa or []:
        if not isinstance(p, dict):
            continue
        q, a = str(p.get("question") or "").strip(), str(p.get("answer") or "").strip()
        if q and a:
            out.append(QAPair(image_id, q, a, str(p.get("answer_type") or "OPEN"),
                              str(p.get("question_type") or "OTHER")))
    return out


class QABank:
    """All QA pairs of a set of images, their question vectors, and lookups by image."""

    def __init__(self, pairs: Sequence[QAPair], vectors: np.ndarray):
        if len(pairs) != len(vectors):
            raise ValueError("one vector per pair")
        self.pairs = list(pairs)
        self.vectors = np.asarray(vectors, np.float32)
        self.image_ids = np.array([p.image_id for p in self.pairs], dtype=object)
        self.norm_answers = [normalize_answer(p.answer) for p in self.pairs]  # vote keys
        self._by_image: dict[str, list[int]] = {}
        for i, p in enumerate(self.pairs):
            self._by_image.setdefault(p.image_id, []).append(i)

    def __len__(self) -> int:
        return len(self.pairs)

    def rows_of(self, image_id: str) -> list[int]:
        return self._by_image.get(image_id, [])

    @classmethod
    def from_metadata(cls, items: Iterable[tuple[str, dict[str, Any]]], encoder, cache: bool = True) -> "QABank":
        """From ``(image id, index metadata)`` rows (their ``qa`` lists), embedding the questions
        with ``encoder.embed_texts`` (cached under the mmrag cache when ``cache``)."""
        pairs = [p for image_id, meta in items for p in _pairs_from(image_id, (meta or {}).get("qa"))]
        if not pairs:
            dim = int(encoder.dim)
            return cls([], np.zeros((0, dim), np.float32))
        return cls(pairs, _question_vectors(encoder, [p.question for p in pairs], cache))

    @classmethod
    def from_provider(cls, provider, cache: bool = True) -> "QABank":
        return cls.from_metadata(provider.all_metadata(), provider.encoder, cache=cache)


def _question_vectors(encoder, questions: list[str], cache: bool) -> np.ndarray:
    if not cache:
        return encoder.embed_texts(questions)

    def embed() -> np.ndarray:
        # Unique questions only: VQA sets repeat the same question over many images.
        uniq = list(dict.fromkeys(questions))
        pos = {q: i for i, q in enumerate(uniq)}
        return encoder.embed_texts(uniq, progress=len(uniq) > 2000)[[pos[q] for q in questions]]

    return cached_vectors("qa-questions", encoder_cache_key(encoder, "qa-questions", questions), embed,
                          shape=(len(questions), encoder.dim))


def index_vqa(dataset: VQADataset, out_dir: str | PathLike, encoder, progress: bool = True):
    """Index a VQA dataset's images with their QA pairs as metadata
    (:func:`mmrag.corpus.vqa_rad.qa_corpus`) using the normal indexer (resumable). Returns the
    :class:`~mmrag.embedding.IndexReport`.

    Index only questions whose answers may be shown (e.g. a train split, never test answers)."""
    from mmrag.embedding import IndexConfig, build_index

    return build_index(qa_corpus(dataset), out_dir, encoder, IndexConfig(progress=progress))
