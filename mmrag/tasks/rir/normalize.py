"""Answer normalisation for VQA scoring and voting, as the VQA / VQA-RAD / RIR evaluations do it.

:func:`normalize_answer`: lower-case; drop punctuation (a full stop between digits is kept, so
"1.5 cm" stays); number words zero..twenty become digits; the articles a/an/the are dropped;
whitespace collapsed. E.g. ``"The Left Lung."`` -> ``"left lung"``, ``"Two"`` -> ``"2"``.

:func:`closed_form`: what a free-text prediction says to a yes/no question — the first yes/no
word of the normalised text (``"Yes, there is a mass"`` -> ``"yes"``; also ``true``/``false``
and ``not``/``none`` at the start), else the normalised text.

Metrics (RIR paper, VQA-RAD convention):

* :func:`exact_match` (CLOSED questions): normalised prediction == a normalised reference; for
  yes/no references the prediction is first reduced by :func:`closed_form`.
* :func:`answer_in_prediction` (OPEN questions, the RIR paper's lenient "recall"): a normalised
  reference occurs in the normalised prediction as a whole-word sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["normalize_answer", "closed_form", "exact_match", "answer_in_prediction"]

_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"(?<!\d)\.|\.(?!\d)|[^\w\s.]|_")
_YES = {"yes", "true", "correct", "present"}
_NO = {"no", "false", "not", "none", "absent", "incorrect"}


def normalize_answer(text: str) -> str:
    t = _PUNCT.sub(" ", str(text).lower())
    words = [_NUMBERS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


def closed_form(text: str) -> str:
    norm = normalize_answer(text)
    words = norm.split()
    for w in words[:3]:  # "yes", "yes there is", "answer yes" - the first yes/no word decides
        if w in _YES:
            return "yes"
        if w in _NO:
            return "no"
    return norm


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    refs = [normalize_answer(r) for r in references]
    pred = normalize_answer(prediction)
    if any(r in ("yes", "no") for r in refs):
        pred_closed = closed_form(prediction)
        return any(pred_closed == r if r in ("yes", "no") else pred == r for r in refs)
    return pred in refs


def answer_in_prediction(prediction: str, references: Sequence[str]) -> bool:
    pred = f" {normalize_answer(prediction)} "
    return any(r and f" {r} " in pred for r in (normalize_answer(x) for x in references))
