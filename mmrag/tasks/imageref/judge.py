"""The paper's LLM-as-judge text score: a 1-10 rating of an answer, image markup stripped.

Prompts are ImageRef-VL's (``test/imageref/prompt.jsonl``, from MT-Bench): ``single-cmi`` when a
reference answer is given (the reference guides style and structure, not correctness), else
``single-v1``. The rating is the first ``[[n]]`` in the judge's reply (``judge_rslt.py``); a reply
without one gives ``rating=None`` and is left out of the mean, as in the reference. Image
references (``![caption](IMAGE_k)``) are removed from both answers before judging.

Any generator of the registry can judge; the usual one is ``openai`` against an
OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, ...).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from mmrag.generators import GenerationRequest, Generator, create_generator
from mmrag.tasks.imageref.render import strip_image_markup

__all__ = ["JUDGE_PROMPTS", "JudgeResult", "judge_answer", "judge_many", "parse_rating", "read_judge_rows"]

JUDGE_PROMPTS = {
    "single-v1": (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
        "AI assistant to the user question displayed below. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
        "evaluation by providing a short explanation. Be as objective as possible. After providing your "
        "explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
        "\"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
    ),
    "single-cmi": (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
        "AI assistant to the user question displayed below. You will also be given a reference answer to guide "
        "your evaluation in terms of style and structure, but not as a measure of correctness. Your evaluation "
        "should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of "
        "detail of the response. Begin by providing a brief explanation. Be as objective as possible. After your "
        "explanation, rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", "
        "for example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n"
        "{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
        "[The End of Assistant's Answer]"
    ),
}
JUDGE_SYSTEM = "You are a helpful assistant."
_RATING = re.compile(r"\[\[(\d+)\]\]")


@dataclass
class JudgeResult:
    rating: int | None
    explanation: str
    prompt: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_rating(text: str) -> int | None:
    """The first ``[[n]]`` in ``text`` (None if there is none or it is outside 1..10)."""
    m = _RATING.search(text or "")
    if not m:
        return None
    n = int(m.group(1))
    return n if 1 <= n <= 10 else None


def build_judge_prompt(question: str, answer: str, reference: str | None = None) -> str:
    answer = strip_image_markup(answer)
    if reference:
        return JUDGE_PROMPTS["single-cmi"].format(question=question, ref_answer_1=strip_image_markup(reference),
                                                  answer=answer)
    return JUDGE_PROMPTS["single-v1"].format(question=question, answer=answer)


def judge_answer(question: str, answer: str, reference: str | None = None,
                 generator: Generator | str = "openai", max_tokens: int = 512, **generator_options) -> JudgeResult:
    """Rate ``answer`` 1-10 with a judge model (``generator``: an instance or a registry name built
    with ``generator_options``, e.g. ``base_url``, ``model``)."""
    gen = create_generator(generator, **generator_options) if isinstance(generator, str) else generator
    prompt = build_judge_prompt(question, answer, reference)
    req = GenerationRequest.from_prompt(prompt, system=JUDGE_SYSTEM, max_tokens=max_tokens, temperature=0.0)
    text = gen.generate(req).text
    return JudgeResult(parse_rating(text), text, prompt)


def judge_many(items: Iterable[dict[str, Any]], generator: Generator | str = "openai",
               **generator_options) -> dict[str, Any]:
    """Judge rows ``{"question", "answer", "reference"?}``; returns the mean rating over parsed
    ratings, how many were parsed, and every result."""
    gen = create_generator(generator, **generator_options) if isinstance(generator, str) else generator
    results: list[JudgeResult] = []
    for row in items:
        results.append(judge_answer(row["question"], row["answer"], row.get("reference"), generator=gen))
    ratings: Sequence[int] = [r.rating for r in results if r.rating is not None]
    return {
        "n": len(results),
        "n_rated": len(ratings),
        "mean_rating": (sum(ratings) / len(ratings)) if ratings else None,
        "results": [r.to_dict() for r in results],
    }


def read_judge_rows(path) -> list[dict[str, Any]]:
    """The answers to judge: a UTF-8 JSONL file of ``{question, answer, reference?}`` rows."""
    import json

    from mmrag.errors import MmragError
    from mmrag.corpus.documents import read_document_text

    rows = []
    for n, line in enumerate(read_document_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MmragError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise MmragError(f"{path}:{n}: a row needs 'question' and 'answer' strings")
        rows.append(row)
    if not rows:
        raise MmragError(f"{path}: no answers to judge")
    return rows
