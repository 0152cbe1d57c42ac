"""``extractive``: answers with the retrieved passages themselves (no language model).

The request's ``evidence`` holds passages best first (e.g. a document's sections that matched a
query); the answer is the first ``max_passages`` of them, unchanged, and ``raw["indices"]``
says which, so a caller can keep the structure (headings) it gave each passage.
"""

from __future__ import annotations

from mmrag.generators.base import GENERATORS, GenerationRequest, GenerationResult, Generator, GeneratorError


class ExtractiveGenerator(Generator):
    reads_messages = False
    reads_evidence = True

    def __init__(self, max_passages: int | None = None):
        if max_passages is not None and (not isinstance(max_passages, int) or max_passages < 1):
            raise GeneratorError(f"max_passages must be a positive integer or None, got {max_passages!r}")
        self.max_passages = max_passages
        self.name = "extractive"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        passages = list(request.evidence)
        if not passages:
            raise GeneratorError("the extractive generator answers from retrieved passages: the request has none")
        if not all(isinstance(p, str) for p in passages):
            raise GeneratorError("request.evidence must be a list of strings")
        chosen = list(range(len(passages) if self.max_passages is None else min(self.max_passages, len(passages))))
        return GenerationResult(text="\n\n".join(passages[i] for i in chosen), raw={"indices": chosen})


@GENERATORS.register("extractive")
def _make_extractive(**kwargs) -> ExtractiveGenerator:
    return ExtractiveGenerator(**kwargs)
