"""Questioners: given the dialog so far and the current top candidates, the next question.

Registry :data:`QUESTIONERS`, chosen by name (:func:`create_questioner`):

``split``  asks about the word whose answer best separates the current top candidates: for each
           word ``w`` of the candidates' nearest captions (:mod:`.features`, never the target's
           own captions in evaluation), with candidate weights ``pi`` (softmax of scores /
           ``temperature``, 0.1: on dev 0.05 / 0.1 / 0.2 gave +18.8 / +20.1 / +19.4) and
           ``p_i[w]`` the chance a viewer of candidate ``i`` names ``w``, the expected information
           gain of the yes/no answer, ``H(sum_i pi_i p_i[w]) - sum_i pi_i H(p_i[w])``.
           Words of the description, words already asked and generic words are skipped. The
           question is a template by word class ("is there a dog?", "is anyone running?", ...).
           With ``max_options`` > 1 (default 2; 1: yes/no questions only) it also weighs choice
           questions over ordered tuples of up to ``max_options`` of the ``choice_words`` best words ("is there a dog or
           anyone swimming?"; answers: the first option, the second, ..., neither) and asks one
           when its expected gain is higher (up to log2(3) = 1.58 bits for two options instead
           of 1). Either-or questions add 1.5 points of cumulative Hits@10 by round 5 over yes/no
           questions only on Flickr8k dev (+20.1 vs +18.6) and 2.1 on test; three options
           measured the same as two on dev (+19.8) at 5x the time (benchmarks/bench_chat.py,
           docs/benchmarks.md).
``bank``   picks from a bank of real questions (default: the VisDial questions of ChatIR's
           ``VisDial_v1.0_queries_val.json``; or any file/list the user gives) the not-yet-asked
           question most useful now: the highest information gain of its topic word over the
           candidates (same measure as ``split``), ties and topic-less questions by frequency.
``llm``    prompts a generator (``local`` SmolLM2 by default, or ``openai``) with the dialog and
           what the top candidates show, and asks for one new short question.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.errors import MmragError
from mmrag.registry import Registry
from mmrag.tasks.chat.dialog import Dialog
from mmrag.tasks.chat.words import askable, choice_question, content_set, question_topic, tokens, yes_no_question


class QuestionerError(MmragError):
    """A questioner cannot ask (no candidates' captions, empty bank, generator failure)."""


@dataclass
class Question:
    text: str
    topic: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "topic": self.topic, **({"info": self.info} if self.info else {})}


@dataclass
class Candidates:
    """The current ranking's top images as a questioner sees them (never the target's identity).

    ``words``: ``[n, V]`` caption-word fractions (CSR) of these images with ``vocab`` (word ->
    column) and ``words_list`` (column -> word); ``texts``: a few nearest captions per image
    (for ``llm``)."""

    ids: list[str]
    scores: np.ndarray
    words: Any = None
    vocab: dict[str, int] = field(default_factory=dict)
    words_list: list[str] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)


#: How many of the top candidates a questioner looks at (unless it says otherwise).
QUESTIONER_TOP = 20


class Questioner(ABC):
    """Asks the next question of a dialog about the current top candidates (or None: nothing
    left worth asking). ``top``: how many candidates it wants to see."""

    name: str
    top: int = QUESTIONER_TOP

    @abstractmethod
    def ask(self, dialog: Dialog, candidates: Candidates) -> Question | None: ...


QUESTIONERS: Registry[Questioner] = Registry("questioner")


def create_questioner(name: str = "split", **kwargs) -> Questioner:
    """Build a questioner by registry name (see ``QUESTIONERS.names()``)."""
    return QUESTIONERS.create(name, **kwargs)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _entropy_rows(P: np.ndarray) -> np.ndarray:
    """Entropy (bits) of discrete distributions along the last axis."""
    P = np.clip(P, 1e-12, 1.0)
    return -(P * np.log2(P)).sum(-1)


def candidate_weights(candidates: Candidates, top: int, temperature: float | None) -> np.ndarray:
    """How likely each of the first ``top`` candidates is the target: softmax(scores / temperature)."""
    n = min(top, len(candidates.ids))
    s = np.asarray(candidates.scores[:n], np.float64)
    pi = np.exp((s - s.max()) / temperature) if temperature else np.ones(n)
    return pi / pi.sum() if n else pi


def information_gain(candidates: Candidates, top: int, temperature: float | None) -> np.ndarray:
    """Expected information gain (bits) of a yes/no answer about each vocabulary word."""
    if candidates.words is None:
        raise QuestionerError("this questioner needs the candidates' caption words (a caption source)")
    n = min(top, len(candidates.ids))
    if n == 0:
        return np.zeros(candidates.words.shape[1], np.float32)
    pi = candidate_weights(candidates, top, temperature)
    W = candidates.words[:n].tocsc()
    cols = np.flatnonzero(np.diff(W.indptr))  # words some candidate mentions; the rest gain 0
    gain = np.zeros(W.shape[1], np.float32)
    if len(cols):
        F = W[:, cols].toarray().astype(np.float64)
        gain[cols] = _entropy(pi @ F) - pi @ _entropy(F)
    return gain


def choice_gain(candidates: Candidates, cols: np.ndarray, top: int, temperature: float | None,
                n_options: int = 2) -> np.ndarray:
    """Expected information gain (bits) of the choice question "A, B or C?" for every ordered
    tuple of ``n_options`` of the vocabulary columns ``cols``: an array ``[len(cols)] * n_options``
    (repeated columns -inf). The answer has ``n_options + 1`` outcomes: the first option shown, or
    the first not shown and the second shown, ..., or none of them; a candidate shows each word
    independently with its chance ``p[w]`` (:mod:`.features`)."""
    n = min(top, len(candidates.ids))
    m = len(cols)
    shape = (m,) * n_options
    if n == 0 or m < n_options:
        return np.full(shape, -np.inf)
    pi = candidate_weights(candidates, top, temperature)
    F = candidates.words[:n][:, cols].toarray().astype(np.float64)  # [n, m]
    outcomes = []
    absent = np.ones((n,) + (1,) * n_options)  # chance that every earlier option is absent
    for k in range(n_options):
        f = F.reshape((n,) + (1,) * k + (m,) + (1,) * (n_options - k - 1))
        outcomes.append(np.broadcast_to(absent * f, (n,) + shape))
        absent = absent * (1 - f)
    outcomes.append(np.broadcast_to(absent, (n,) + shape))
    P = np.stack(outcomes, axis=-1)  # [n, m, ..., m, n_options + 1]
    gain = _entropy_rows(np.tensordot(pi, P, axes=1)) - np.tensordot(pi, _entropy_rows(P), axes=1)
    idx = np.indices(shape)
    repeated = np.zeros(shape, bool)
    for a in range(n_options):
        for b in range(a + 1, n_options):
            repeated |= idx[a] == idx[b]
    gain[repeated] = -np.inf
    return gain


def _excluded_words(dialog: Dialog) -> set[str]:
    ex = content_set(dialog.description)
    for r in dialog.rounds:
        if r.topic:
            ex.add(r.topic)
        ex |= content_set(r.question)
    return ex


@QUESTIONERS.register("split")
class SplitQuestioner(Questioner):
    """Asks about the word that best splits the top candidates (see module docstring)."""

    name = "split"

    def __init__(self, top: int = 20, temperature: float | None = 0.1, min_fraction: float = 0.0,
                 choice_words: int = 24, max_options: int = 2):
        self.top = int(top)
        self.temperature = temperature
        self.min_fraction = float(min_fraction)
        self.max_options = int(max_options)
        if self.max_options < 1:
            raise ValueError(f"max_options must be >= 1, got {max_options}")
        self.choice_words = int(choice_words)

    def ask(self, dialog: Dialog, candidates: Candidates) -> Question | None:
        ig = information_gain(candidates, self.top, self.temperature)
        excluded = _excluded_words(dialog)
        wanted = max(1, self.choice_words) if self.max_options > 1 else 1  # words for choices, or the best one
        best: list[int] = []  # askable columns, highest yes/no gain first
        for c in np.argsort(-ig, kind="stable"):
            if ig[c] <= 0 or len(best) >= wanted:
                break
            w = candidates.words_list[c]
            if w not in excluded and askable(w):
                best.append(int(c))
        if not best:
            return None
        c = best[0]
        question = Question(yes_no_question(candidates.words_list[c]), topic=candidates.words_list[c],
                            info={"gain_bits": round(float(ig[c]), 4)})
        top_gain = float(ig[c])
        cols = np.asarray(best)
        for k in range(2, min(self.max_options, len(best)) + 1):
            g = choice_gain(candidates, cols, self.top, self.temperature, n_options=k)
            at = np.unravel_index(int(np.argmax(g)), g.shape)
            if g[at] > top_gain:
                top_gain = float(g[at])
                opts = [candidates.words_list[cols[i]] for i in at]
                question = Question(choice_question(*opts), topic=None,
                                    info={"gain_bits": round(top_gain, 4), "options": opts})
        return question


def _bank_questions(source) -> list[str]:
    """Questions from a ChatIR dialog file (the text up to "?" of each round), a JSON list of
    strings, or a text file with one question per line."""
    if isinstance(source, (list, tuple)):
        return [str(q).strip() for q in source if str(q).strip()]
    p = Path(source)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuestionerError(f"question bank {p} does not exist") from None
    except UnicodeDecodeError as e:
        raise QuestionerError(f"question bank {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise QuestionerError(f"question bank {p}: invalid JSON ({e})") from None
        out = []
        if isinstance(data, list):
            for row in data:
                if isinstance(row, str):
                    out.append(row)
                elif isinstance(row, dict) and isinstance(row.get("dialog"), list):
                    for t in row["dialog"][1:]:
                        q, sep, _ = str(t).rpartition("?")
                        if sep and q.strip():
                            out.append(q.strip() + "?")
        if not out:
            raise QuestionerError(f"question bank {p}: expected a list of questions or ChatIR dialogs")
        return out
    return [line.strip() for line in raw.splitlines() if line.strip()]


def default_bank_path() -> Path | None:
    from mmrag.paths import repo_data_dir

    base = repo_data_dir()
    p = base / "chatir" / "dialogues" / "VisDial_v1.0_queries_val.json" if base else None
    return p if p is not None and p.exists() else None


@QUESTIONERS.register("bank")
class BankQuestioner(Questioner):
    """Picks the most useful not-yet-asked question of a bank (see module docstring)."""

    name = "bank"

    def __init__(self, bank: str | Path | Sequence[str] | None = None, top: int = 20,
                 temperature: float | None = 0.1):
        if bank is None:
            bank = default_bank_path()
            if bank is None:
                raise QuestionerError("no question bank given and ../shared/data/chatir is absent; "
                                      "pass bank=FILE (one question per line, a JSON list, or ChatIR dialogs)")
        qs = _bank_questions(bank)
        norm = Counter(" ".join(tokens(q)) for q in qs)
        first: dict[str, str] = {}
        for q in qs:
            first.setdefault(" ".join(tokens(q)), q if q.endswith("?") else q + "?")
        order = sorted(norm, key=lambda k: (-norm[k], k))
        self.questions = [first[k] for k in order if k]
        if not self.questions:
            raise QuestionerError("the question bank is empty")
        self.topics = [question_topic(q) for q in self.questions]
        self._keys = {" ".join(tokens(q)): i for i, q in enumerate(self.questions)}
        self.top = int(top)
        self.temperature = temperature
        self._cols: np.ndarray | None = None
        self._cols_vocab = (None, -1)

    def _topic_columns(self, vocab: dict[str, int]) -> np.ndarray:
        """Vocabulary column of each question's topic (-1: none), recomputed when vocab grows."""
        if self._cols is None or self._cols_vocab != (id(vocab), len(vocab)):
            self._cols = np.asarray([vocab.get(t, -1) if t else -1 for t in self.topics], np.int64)
            self._cols_vocab = (id(vocab), len(vocab))
        return self._cols

    def ask(self, dialog: Dialog, candidates: Candidates) -> Question | None:
        gain = np.zeros(len(self.questions), np.float32)
        if candidates.words is not None:
            ig = information_gain(candidates, self.top, self.temperature)
            cols = self._topic_columns(candidates.vocab)
            ok = (cols >= 0) & (cols < len(ig))
            gain[ok] = ig[cols[ok]]
        for q in dialog.asked():
            i = self._keys.get(" ".join(tokens(q)))
            if i is not None:
                gain[i] = -np.inf
        excluded = _excluded_words(dialog)
        # questions are in frequency order, so argmax's first maximum is the most common phrasing
        for i in np.argsort(-gain, kind="stable")[:256]:
            if not np.isfinite(gain[i]):
                break
            if self.topics[i] is not None and self.topics[i] in excluded:
                continue
            return Question(self.questions[i], topic=self.topics[i], info={"gain_bits": round(float(gain[i]), 4)})
        return None


LLM_SYSTEM = ("You help someone find one photo in a large collection. They described it; ask ONE short "
              "new question about that photo, ending with a question mark. Reply with the question only.")
#: Two worked turns: a 135M model otherwise often answers with a caption instead of a question.
LLM_SHOTS = [
    {"role": "user", "content": "Description: a man rides a bike down a hill\nAsk one new short question about the photo."},
    {"role": "assistant", "content": "Is the man wearing a helmet?"},
    {"role": "user", "content": "Description: two girls at the beach\nQuestions already asked:\n- is there a dog? no\n"
                                "Ask one new short question about the photo."},
    {"role": "assistant", "content": "What color are their swimsuits?"},
]


def parse_llm_question(text: str) -> str:
    """The first question in a model's reply (prefixes like "Question:" and quotes removed)."""
    for line in text.strip().splitlines():
        line = line.strip().strip('"').strip()
        for pre in ("question:", "q:", "next question:", "assistant:"):
            if line.lower().startswith(pre):
                line = line[len(pre):].strip()
        if not line:
            continue
        q, sep, _ = line.partition("?")
        return (q.strip() + "?") if sep else line
    return ""


@QUESTIONERS.register("llm")
class LLMQuestioner(Questioner):
    """A prompted generator asks the next question (``generator``: registry name or object)."""

    name = "llm"

    def __init__(self, generator: Any = "local", generator_options: dict | None = None, max_tokens: int = 40,
                 show_candidates: int = 3):
        if isinstance(generator, str):
            from mmrag.generators import create_generator

            generator = create_generator(generator, **(generator_options or {}))
        self.generator = generator
        self.max_tokens = int(max_tokens)
        self.show_candidates = int(show_candidates)

    def prompt(self, dialog: Dialog, candidates: Candidates) -> str:
        lines = [f"Description: {dialog.description}"]
        if dialog.rounds:
            lines.append("Questions already asked:")
            lines += [f"- {r.text()}" for r in dialog.rounds]
        shown = [t[0] for t in candidates.texts[: self.show_candidates] if t]
        if shown:
            lines.append("The best matches so far show: " + "; ".join(shown))
        lines.append("Ask one new short question about the photo.")
        return "\n".join(lines)

    def ask(self, dialog: Dialog, candidates: Candidates) -> Question | None:
        from mmrag.generators import GenerationRequest

        messages = [{"role": "system", "content": LLM_SYSTEM}, *LLM_SHOTS,
                    {"role": "user", "content": self.prompt(dialog, candidates)}]
        req = GenerationRequest(messages=messages, max_tokens=self.max_tokens, temperature=0.0)
        text = parse_llm_question(self.generator.generate(req).text)
        if not text:
            raise QuestionerError("the language model returned no question")
        return Question(text, topic=question_topic(text), info={"generator": self.generator.name})
