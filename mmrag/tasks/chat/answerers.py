"""Answerers: who answers the questions — a person, a dialog file (replay), or a simulated user.

Simulated user (:class:`SimulatedUser`), for evaluation. It is built from the target image's
reference captions *other than the one used as the description* and sees nothing else (not the
image, not the index, not the candidates). Deterministic rules, applied to the question ``q``:

Words are read with :mod:`.words`: lower case, punctuation dropped, stopwords removed, a few
synonyms/irregular plurals mapped (puppy->dog, guy->man, men->man, ...), regular plurals
stripped. ``C`` is the set of such words over all its captions; ``K`` the content words of ``q``
minus the template words (anyone, anything, picture, photo, image, there).

1. *what colo(u)r ...*: the first colour word (in caption order) followed within 3 tokens by a
   word of ``K``; else, when ``K`` is empty, the first colour word of any caption; else
   ``"i don't know"``.
2. *how many ...*: over the caption tokens equal to a word of ``K``, the first number word
   other than "one"/"a"/"an" found within 2 tokens before one of them; else "several" if any is
   plural; else "one"; no such token -> ``"none"``.
3. *what is/are ... doing*: the first ``-ing`` word of the captions not in ``q`` (caption
   order); none -> ``"i don't know"``.
4. *where ...*: from the caption sharing most words with ``K`` (ties: the earlier caption), the
   first phrase starting at in/on/at/near/by/under/through/along/across/beside/behind, up to 4
   tokens; none -> ``"i don't know"``.
5. Choice questions (a yes/no opening with "or": "is it a boy or a girl?", "is there a dog, a
   ball or anyone swimming?"): the first of the options (:func:`~.words.choice_options`: the
   last content word of each comma-separated part before "or", the first after it) that is in
   ``C``; none -> ``"neither"`` (as in rule 6, what no caption mentions counts as absent).
6. Yes/no questions (first word is/are/does/do/can/was/were/has/have/could/would/will/did/any):
   the topic is the last word of ``K``; ``"yes"`` if it is in ``C``, else ``"no"`` (captions name
   what is salient, so something no caption mentions counts as absent); no topic ->
   ``"i don't know"``.
7. Any other question: the caption sharing most words with ``K`` (ties: earlier); the answer is
   its first (up to 4) content words not in ``q``; no shared word -> ``"i don't know"``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

from mmrag.errors import MmragError
from mmrag.tasks.chat.words import (
    COLORS,
    QUESTION_FRAME,
    STOPWORDS,
    choice_options,
    content_words,
    is_yes_no,
    normalize,
    question_topic,
    stem,
    tokens,
)

DONT_KNOW = "i don't know"
NEITHER = "neither"
_NUMBERS = {"a": "one", "an": "one", "one": "one", "two": "two", "three": "three", "four": "four",
            "five": "five", "six": "six", "seven": "seven", "eight": "eight", "nine": "nine", "ten": "ten",
            "several": "several", "many": "many", "some": "several", "group": "several", "couple": "two"}
_PREPS = ("in", "on", "at", "near", "by", "under", "through", "along", "across", "beside", "behind")


class AnswererError(MmragError):
    """An answerer cannot answer (no captions, the replayed dialog ran out of rounds)."""


@runtime_checkable
class Answerer(Protocol):
    def answer(self, question: str) -> str: ...


class SimulatedUser:
    """Answers from the target's reference captions only (rules in the module docstring)."""

    def __init__(self, captions: Iterable[str]):
        self.captions = [c for c in captions if isinstance(c, str) and c.strip()]
        if not self.captions:
            raise AnswererError("the simulated user needs at least one reference caption")
        self._tokens = [tokens(c) for c in self.captions]
        self._norm = [[normalize(t) for t in ts] for ts in self._tokens]
        self._words = {w for ns, ts in zip(self._norm, self._tokens) for w, t in zip(ns, ts) if t not in STOPWORDS}
        self._stems = {stem(w) for w in self._words}

    def _mentions(self, word: str) -> bool:
        return word in self._words or stem(word) in self._stems

    def _keys(self, question: str) -> list[str]:
        return [w for w in content_words(question) if w not in QUESTION_FRAME]

    def _best_caption(self, keys: Sequence[str]) -> int | None:
        ks = set(keys)
        overlap = [len(ks & set(n)) for n in self._norm]
        best = max(range(len(overlap)), key=lambda i: (overlap[i], -i))
        return best if overlap[best] > 0 else None

    def answer(self, question: str) -> str:
        qt = tokens(question)
        if not qt:
            return DONT_KNOW
        keys = self._keys(question)
        kset = set(keys) - {"color", "colour"}
        head = " ".join(qt[:2])
        if head in ("what color", "what colour") or (qt[0] == "which" and "color" in qt):
            for ts, ns in zip(self._tokens, self._norm):
                for j, t in enumerate(ts):
                    if t in COLORS and (not kset or kset & set(ns[j + 1 : j + 4])):
                        return t
            return DONT_KNOW
        if head == "how many":
            found = []  # (count word or None, plural) per mention of an asked word
            for ts, ns in zip(self._tokens, self._norm):
                for j, n in enumerate(ns):
                    if n in kset:
                        num = next((_NUMBERS[t] for t in reversed(ts[max(0, j - 2) : j]) if t in _NUMBERS), None)
                        found.append((num, ts[j] != n))
            if not found:
                return "none"
            for num, _ in found:
                if num not in (None, "one"):
                    return num
            return "several" if any(pl for _, pl in found) else "one"
        if qt[0] == "what" and qt[-1] == "doing":
            qs = set(qt)
            for ts in self._tokens:
                for t in ts:
                    if t.endswith("ing") and len(t) > 4 and t not in qs and t not in STOPWORDS:
                        return t
            return DONT_KNOW
        if qt[0] == "where":
            order = [self._best_caption(keys)] if self._best_caption(keys) is not None else []
            order += [i for i in range(len(self._tokens)) if i not in order]
            for i in order:
                ts = self._tokens[i]
                for j, t in enumerate(ts):
                    if t in _PREPS and j + 1 < len(ts):
                        return " ".join(ts[j : j + 4])
            return DONT_KNOW
        options = choice_options(question)
        if options:
            for o in options:
                if self._mentions(o):
                    return o
            return NEITHER
        if is_yes_no(question):
            topic = question_topic(question)
            if topic is None:
                return DONT_KNOW
            return "yes" if self._mentions(topic) else "no"
        i = self._best_caption(keys)
        if i is None:
            return DONT_KNOW
        words = [n for t, n in zip(self._tokens[i], self._norm[i]) if t not in STOPWORDS and n not in kset
                 and t not in qt]
        return " ".join(words[:4]) if words else DONT_KNOW


class ReplayAnswerer:
    """Answers with a recorded dialog's answers, in order."""

    def __init__(self, answers: Sequence[str]):
        self.answers = list(answers)
        self._next = 0

    def answer(self, question: str) -> str:
        if self._next >= len(self.answers):
            raise AnswererError(f"the recorded dialog has only {len(self.answers)} answers")
        a = self.answers[self._next]
        self._next += 1
        return a


class HumanAnswerer:
    """A person at a terminal (``ask``: a function that shows the question and returns a line)."""

    def __init__(self, ask: Callable[[str], str] = input):
        self.ask = ask

    def answer(self, question: str) -> str:
        return self.ask(f"{question} ").strip()
