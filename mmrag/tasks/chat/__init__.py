"""Chat-based image retrieval (ChatIR): describe an image, answer questions, watch it climb.

Python API (an index built by ``mmrag index``, opened with :class:`mmrag.retrieval.Searcher`)::

    from mmrag.retrieval import Searcher
    from mmrag.tasks.chat import ChatSession

    s = ChatSession(Searcher("idx"), questioner="split", k=10)
    turn = s.start("a dog runs on the beach")    # Turn: round 0, ranking, first question
    turn.hits[0].id, turn.hits[0].score, turn.hits[0].metadata
    turn.question.text                           # e.g. "is there a ball?"
    turn = s.answer("yes")                       # round 1: new ranking + next question
    turn.to_dict()                               # JSON-friendly: {"round", "query", "hits", "question", ...}
    s.to_dict()                                  # the whole chat

:class:`Turn` holds ``round`` (answers so far), ``query`` (the dialog's ChatIR text), ``hits``
(:class:`ChatHit`: ``id``, ``score``, ``rank``, ``metadata``) and ``question`` (a
:class:`Question` with ``text`` and ``topic``, or None when nothing is left to ask). Calls on one
session are serialized by a lock; sessions can share one Searcher. Each round ranks the images
as text->image search does (``cos - prior`` where the index stores the images' hubness prior and
its gate admits the query, else cosine), then re-scores the best with the answers.

Parts (each a small module): :mod:`.dialog` (state and ChatIR query text), :mod:`.ranking`
(query vector and answer-aware re-scoring, :class:`RankingConfig`), :mod:`.features` (words of
candidates' nearest captions), :mod:`.questioners` (registry :data:`QUESTIONERS`: ``split``,
``bank``, ``llm``), :mod:`.answerers` (:class:`SimulatedUser`, :class:`ReplayAnswerer`,
:class:`HumanAnswerer`; the simulated user's rules are in that module's docstring),
:mod:`.evaluate` (Hits@K per round, ChatIR dialog replay), :mod:`.clarify` (ask when unsure:
:func:`clarifying_question`, one split question under a search whose top hits are close, and how
each answer re-orders them). Command line: ``mmrag chat``, ``mmrag eval chat``
(:mod:`mmrag.cli.chat`), ``mmrag search --clarify``.
"""

from mmrag.tasks.chat.answerers import (
    Answerer,
    AnswererError,
    HumanAnswerer,
    ReplayAnswerer,
    SimulatedUser,
)
from mmrag.tasks.chat.clarify import Clarification, ClarifyConfig, ClarifyOption, clarifying_question
from mmrag.tasks.chat.dialog import Dialog, DialogError, Round
from mmrag.tasks.chat.features import CaptionWordFeatures
from mmrag.tasks.chat.questioners import (
    QUESTIONERS,
    Candidates,
    Question,
    Questioner,
    QuestionerError,
    create_questioner,
)
from mmrag.tasks.chat.ranking import RankingConfig
from mmrag.tasks.chat.session import ChatHit, ChatSession, Turn

__all__ = [
    "QUESTIONERS",
    "Answerer",
    "AnswererError",
    "Candidates",
    "CaptionWordFeatures",
    "ChatHit",
    "ChatSession",
    "Clarification",
    "ClarifyConfig",
    "ClarifyOption",
    "Dialog",
    "DialogError",
    "HumanAnswerer",
    "Question",
    "Questioner",
    "QuestionerError",
    "RankingConfig",
    "ReplayAnswerer",
    "Round",
    "SimulatedUser",
    "Turn",
    "clarifying_question",
    "create_questioner",
]
