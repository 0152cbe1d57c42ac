"""A chat over an index: describe an image, get a ranking and a question, answer, repeat.

Each round's dialog text ranks the index's images as text->image search does
(:meth:`~mmrag.retrieval.Searcher.rerank_by_image_prior`: the images' hubness prior where the
index stores one), so round 0 is the search for the description; the answers then re-score the
``pool`` best of that ranking (:func:`~.ranking.rescore`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrag.errors import InvalidInputError
from mmrag.tasks.chat.dialog import Dialog, DialogError, Round
from mmrag.tasks.chat.features import DEFAULT_N_CAPTIONS, CaptionWordFeatures
from mmrag.tasks.chat.questioners import Candidates, Question, Questioner, create_questioner
from mmrag.tasks.chat.ranking import RankingConfig, query_vectors, rescore, round_constraints

DEFAULT_K = 10


@dataclass
class ChatHit:
    id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "rank": self.rank, "metadata": self.metadata}


@dataclass
class Turn:
    """One step of a chat: the ranking after ``round`` answers and the next question (None when
    the questioner has nothing left to ask)."""

    round: int
    query: str
    hits: list[ChatHit]
    question: Question | None

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "query": self.query, "hits": [h.to_dict() for h in self.hits],
                "question": self.question.text if self.question else None,
                "question_topic": self.question.topic if self.question else None,
                "question_options": self.question.info.get("options") if self.question else None}


def caption_features(searcher, captions: Any = "auto", n_captions: int = DEFAULT_N_CAPTIONS) -> CaptionWordFeatures | None:
    """The caption-word source of a session: ``"index"`` (the index's own caption store),
    ``"datastore"`` (Flickr8k train captions, :func:`~mmrag.retrieval.default_datastore`),
    ``"auto"`` (the index's captions when it has any, else the datastore when available, else
    None), a :class:`~mmrag.retrieval.CaptionDatastore`, a ready
    :class:`CaptionWordFeatures`, or None."""
    if captions is None or isinstance(captions, CaptionWordFeatures):
        return captions
    if captions == "index" or (captions == "auto" and searcher.count("captions") > 0):
        return CaptionWordFeatures(searcher, n_captions)
    if captions in ("datastore", "auto"):
        from mmrag.retrieval import DatastoreError, default_datastore

        try:
            return CaptionWordFeatures(default_datastore(searcher.encoder), n_captions)
        except DatastoreError:
            if captions == "auto":
                return None
            raise
    if hasattr(captions, "rows_by_image"):
        return CaptionWordFeatures(captions, n_captions)
    # InvalidInputError: a ValueError that the CLI and the service report as bad input
    raise InvalidInputError(f"unknown caption source {captions!r}; use auto, index or datastore")


class ChatSession:
    """One chat over an index (see the package docstring). Thread-safe: calls on one session are
    serialized; sessions may share a :class:`~mmrag.retrieval.Searcher`."""

    def __init__(self, searcher, questioner: str | Questioner = "split", k: int = DEFAULT_K, *,
                 ranking: RankingConfig | None = None, captions: Any = "auto",
                 questioner_options: dict | None = None, n_captions: int = DEFAULT_N_CAPTIONS,
                 features: CaptionWordFeatures | None = None):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.searcher = searcher
        self.k = int(k)
        self.ranking = ranking or RankingConfig()
        self.questioner = (create_questioner(questioner, **(questioner_options or {}))
                           if isinstance(questioner, str) else questioner)
        self.features = features if features is not None else caption_features(searcher, captions, n_captions)
        self.dialog: Dialog | None = None
        self.turns: list[Turn] = []
        self._lock = threading.RLock()
        self._text_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ the loop
    def start(self, description: str) -> Turn:
        """Begin (or restart) the chat with a description of the wanted image."""
        with self._lock:
            self.dialog = Dialog(description)
            self.turns = []
            return self._step()

    def answer(self, text: str, question: str | None = None) -> Turn:
        """Answer the pending question (or ``question``, to record one the user chose)."""
        with self._lock:
            if self.dialog is None:
                raise DialogError("start the chat with a description first")
            if not isinstance(text, str) or not text.strip():
                raise DialogError("an answer must be non-empty text")
            pending = self.turns[-1].question if self.turns else None
            if question is not None:
                q, topic = question, None
            elif pending is not None:
                q, topic = pending.text, pending.topic
            else:
                raise DialogError("no question is pending (the questioner had nothing left to ask)")
            self.dialog.rounds.append(Round(q, text.strip(), topic))
            return self._step()

    @property
    def round(self) -> int:
        return len(self.dialog.rounds) if self.dialog else 0

    @property
    def question(self) -> Question | None:
        return self.turns[-1].question if self.turns else None

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"questioner": self.questioner.name, "k": self.k,
                    "ranking": self.ranking.to_dict(),
                    "dialog": self.dialog.to_dict() if self.dialog else None,
                    "turns": [t.to_dict() for t in self.turns]}

    def summary(self, n: int = 3) -> dict[str, Any]:
        """Where the chat ended, whatever ended it (an empty answer, the round limit, no question
        left): answers given, the query the last results came from, and the ``n`` best of them."""
        with self._lock:
            last = self.turns[-1] if self.turns else None
            return {"rounds": self.round, "query": last.query if last else "",
                    "pending_question": last.question.text if last and last.question else None,
                    "best": [{"rank": h.rank, "id": h.id, "score": h.score, "caption": _caption_of(h.metadata)}
                             for h in (last.hits[:n] if last else [])]}

    # ------------------------------------------------------------------ internals
    def _step(self) -> Turn:
        from mmrag.retrieval.searcher import prior_pool

        d = self.dialog
        q = query_vectors(self.searcher.encoder, [d], self.ranking, self._text_cache)
        # as text->image search ranks: cos - the images' prior when its gate admits the query
        # (plain cosine for an encoder without one), before the pool and the answers. The
        # candidates by cosine are search's for k (prior_pool) or the pool if more: the shown top
        # k is then search's, at the cost of fetching the pool as before (not 10 x the pool)
        n = max(self.k, self.ranking.pool)
        hits = self.searcher.rerank_by_image_prior(
            self.searcher.search_vectors(q, k=max(prior_pool(self.k), n))[0], n)
        ids = [h.id for h in hits]
        scores = np.asarray([h.score for h in hits], np.float32)
        words = None
        if self.features is not None and ids:
            words = self.features.matrix(ids, self.searcher.vectors(ids))
            scores = rescore(scores, words, self.features.vocab, round_constraints(d), self.ranking)
        order = np.argsort(-scores, kind="stable")
        ranked = [ChatHit(ids[i], float(scores[i]), r + 1, hits[i].metadata) for r, i in enumerate(order[: self.k])]
        question = None
        if ids:
            top = order[: self.questioner.top]
            cand = Candidates([ids[i] for i in top], scores[top])
            if words is not None:
                cand.words, cand.vocab, cand.words_list = words[top], self.features.vocab, self.features.words
                cand.texts = [self.features.top_words(ids[i], 8) for i in top[:5]]
            cand.texts = [[_caption_of(hits[i].metadata)] if _caption_of(hits[i].metadata) else
                          ([" ".join(cand.texts[j])] if j < len(cand.texts) else [])
                          for j, i in enumerate(top)]
            question = self.questioner.ask(d, cand)
        turn = Turn(len(d.rounds), d.query_text(), ranked, question)
        self.turns.append(turn)
        return turn


def _caption_of(metadata: dict) -> str:
    caps = metadata.get("captions") or []
    return str(caps[0]) if caps else ""
