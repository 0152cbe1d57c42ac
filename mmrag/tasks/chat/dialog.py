"""Dialog state (a description plus question-answer rounds) and the query text it makes.

The query text follows ChatIR: the description and each round ``"question? answer"`` joined
with ``", "``. ChatIR's dialog files store rounds in exactly that form, so :meth:`Dialog.from_chatir`
reads them back (the question is the text up to the last ``"?"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrag.errors import MmragError


class DialogError(MmragError):
    """A dialog is empty or malformed (no description, empty answer, bad dialog file row)."""


@dataclass
class Round:
    """One question and its answer. ``topic``: the word a yes/no question is about (for the
    answer-aware re-ranking), set by the questioner or parsed from the question."""

    question: str
    answer: str
    topic: str | None = None

    def text(self) -> str:
        q = self.question.strip()
        if not q.endswith("?"):
            q += "?"
        return f"{q} {self.answer.strip()}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "topic": self.topic}


@dataclass
class Dialog:
    description: str
    rounds: list[Round] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.description, str) or not self.description.strip():
            raise DialogError("a chat starts with a non-empty description of the image")
        self.description = self.description.strip()

    def query_text(self, upto: int | None = None) -> str:
        """ChatIR's query: description + ``", "`` + ``"question? answer"`` per round (the first
        ``upto`` rounds, all by default)."""
        rounds = self.rounds if upto is None else self.rounds[:upto]
        return ", ".join([self.description] + [r.text() for r in rounds])

    def asked(self) -> list[str]:
        return [r.question for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "rounds": [r.to_dict() for r in self.rounds]}

    def to_chatir(self) -> list[str]:
        """The ChatIR file form: ``[description, "question? answer", ...]``."""
        return [self.description] + [r.text() for r in self.rounds]

    @classmethod
    def from_chatir(cls, dialog: list[str]) -> "Dialog":
        """Parse ChatIR's ``[caption, "question? answer", ...]``."""
        if not isinstance(dialog, list) or not dialog or not all(isinstance(t, str) for t in dialog):
            raise DialogError("a ChatIR dialog is a non-empty list of strings [caption, 'question? answer', ...]")
        rounds = []
        for t in dialog[1:]:
            q, sep, a = t.rpartition("?")
            rounds.append(Round(q.strip() + "?", a.strip()) if sep else Round(t.strip(), ""))
        return cls(dialog[0], rounds)
