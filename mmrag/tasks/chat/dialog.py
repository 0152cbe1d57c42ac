"""Dialog state (a description plus question-answer rounds) and the query text it makes.

The query text follows ChatIR: the description and each round ``"question? answer"`` joined
with ``", "``. ChatIR's dialog files store rounds in that form, and :meth:`Dialog.from_chatir`
reads them back (the question is the text up to the last ``"?"``) while keeping each string as
recorded (``raw``): the query text of a replayed dialog at round ``r`` is then exactly ChatIR's
``", ".join(dialog[:r + 1])`` of the file's strings, byte for byte. (Rebuilding a round from its
parts is not: a recorded round without a ``"?"`` would gain one, ``"away?)"`` would become
``"away? )"``, and surrounding spaces would go.)
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
    raw: str | None = None  # the round exactly as a dialog file recorded it (ChatIR replay)

    def text(self) -> str:
        """``"question? answer"`` built from the parts (a ``"?"`` added when missing)."""
        q = self.question.strip()
        if not q.endswith("?"):
            q += "?"
        return f"{q} {self.answer.strip()}".strip()

    def chatir_text(self) -> str:
        """The round in ChatIR's query text: as recorded when read from a file, else :meth:`text`."""
        return self.raw if self.raw is not None else self.text()

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "topic": self.topic}


@dataclass
class Dialog:
    description: str
    rounds: list[Round] = field(default_factory=list)
    raw: str | None = None  # the description exactly as a dialog file recorded it (before strip)

    def __post_init__(self):
        if not isinstance(self.description, str) or not self.description.strip():
            raise DialogError("a chat starts with a non-empty description of the image")
        self.description = self.description.strip()

    def query_text(self, upto: int | None = None) -> str:
        """ChatIR's query: description + ``", "`` + ``"question? answer"`` per round (the first
        ``upto`` rounds, all by default). For a dialog read by :meth:`from_chatir` this is
        ``", ".join(dialog[:upto + 1])`` of the recorded strings."""
        rounds = self.rounds if upto is None else self.rounds[:upto]
        head = self.raw if self.raw is not None else self.description
        return ", ".join([head] + [r.chatir_text() for r in rounds])

    def prefix(self, rounds: int) -> "Dialog":
        """The dialog after its first ``rounds`` rounds (what a replay ranks at round ``rounds``)."""
        return Dialog(self.description, list(self.rounds[:rounds]), raw=self.raw)

    def asked(self) -> list[str]:
        return [r.question for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "rounds": [r.to_dict() for r in self.rounds]}

    def to_chatir(self) -> list[str]:
        """The ChatIR file form: ``[description, "question? answer", ...]`` (recorded strings
        as recorded)."""
        return [self.raw if self.raw is not None else self.description] + [r.chatir_text() for r in self.rounds]

    @classmethod
    def from_chatir(cls, dialog: list[str]) -> "Dialog":
        """Parse ChatIR's ``[caption, "question? answer", ...]``, keeping every string as ``raw``."""
        if not isinstance(dialog, list) or not dialog or not all(isinstance(t, str) for t in dialog):
            raise DialogError("a ChatIR dialog is a non-empty list of strings [caption, 'question? answer', ...]")
        rounds = []
        for t in dialog[1:]:
            q, sep, a = t.rpartition("?")
            rounds.append(Round(q.strip() + "?", a.strip(), raw=t) if sep else Round(t.strip(), "", raw=t))
        return cls(dialog[0], rounds, raw=dialog[0])
