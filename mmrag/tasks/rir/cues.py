"""The cue block: what reverse image retrieval found, as evidence items and as prompt text.

Each neighbour becomes one :class:`Evidence` item: its id, its similarity to the query image,
and its texts — captions first, then the text written in it when the index read it (``mmrag index
--ocr``: ``ocr_text``, one line "text in image: ...", at most :data:`OCR_CUE_CHARS` characters),
then up to ``qa_per_image`` of its QA pairs, the ones whose questions are most similar to the
user's question first (when question vectors are given).
The prompt text (:attr:`CueBlock.text`) reads::

    Similar images found by reverse image search (most similar first):
    [1] synpic1234.jpg (similarity 0.91, organ: CHEST)
      - text in image: L / PORTABLE
      - Q: Is there a pneumothorax? A: no
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mmrag.retrieval.exact import top_k
from mmrag.tasks.rir.knowledge import QABank
from mmrag.tasks.rir.providers import Neighbour

__all__ = ["Evidence", "CueBlock", "build_cue_block", "ocr_cue", "CUE_HEADER", "OCR_CUE_CHARS"]

CUE_HEADER = "Similar images found by reverse image search (most similar first):"
# A figure's words are good evidence; a scanned page of them would crowd out the other cues.
OCR_CUE_CHARS = 300


@dataclass
class Evidence:
    """One retrieved image and the texts shown about it."""

    id: str
    similarity: float
    texts: list[str] = field(default_factory=list)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "similarity": round(float(self.similarity), 6), "texts": self.texts,
                "path": self.path}


@dataclass
class CueBlock:
    items: list[Evidence]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"items": [e.to_dict() for e in self.items], "text": self.text}


def _qa_order(n: Neighbour, question_vector: np.ndarray | None, bank: QABank | None) -> list[int]:
    """Indices into ``n.qa``, most relevant to the question first."""
    order = list(range(len(n.qa)))
    if question_vector is None or bank is None or not n.qa:
        return order
    rows = bank.rows_of(n.id)
    if len(rows) != len(n.qa):  # the bank was built from other metadata; keep stored order
        return order
    sims = bank.vectors[rows] @ np.asarray(question_vector, np.float32)
    return [int(i) for i in top_k(sims, len(sims))]


def ocr_cue(metadata: dict[str, Any], max_chars: int = OCR_CUE_CHARS) -> str | None:
    """"text in image: ..." from a neighbour's ``ocr_text`` (OCR lines joined by " / "), cut at a
    word before ``max_chars`` and marked " ..."; None when the image has no text read."""
    text = metadata.get("ocr_text")
    if not isinstance(text, str):
        return None
    one = " / ".join(" ".join(ln.split()) for ln in text.splitlines() if ln.strip())
    if not one:
        return None
    if len(one) > max_chars:
        one = one[:max_chars].rsplit(" ", 1)[0].rstrip(" /") + " ..."
    return f"text in image: {one}"


def build_cue_block(neighbours: Sequence[Neighbour], question_vector: np.ndarray | None = None,
                    bank: QABank | None = None, qa_per_image: int = 3, captions_per_image: int = 2) -> CueBlock:
    items: list[Evidence] = []
    lines = [CUE_HEADER] if neighbours else []
    for rank, n in enumerate(neighbours, 1):
        texts = [c for c in n.captions[:captions_per_image]]
        if (ocr := ocr_cue(n.metadata)) is not None:
            texts.append(ocr)
        for i in _qa_order(n, question_vector, bank)[:qa_per_image]:
            p = n.qa[i]
            texts.append(f"Q: {str(p.get('question', '')).strip()} A: {str(p.get('answer', '')).strip()}")
        items.append(Evidence(id=n.id, similarity=n.similarity, texts=texts, path=n.path))
        extra = ", ".join(f"{k.replace('image_', '')}: {v}" for k, v in n.metadata.items()
                          if isinstance(v, (str, int, float)) and k in ("image_organ", "organ", "modality", "title"))
        lines.append(f"[{rank}] {n.id} (similarity {n.similarity:.2f}{', ' + extra if extra else ''})")
        lines.extend(f"  - {t}" for t in texts)
    return CueBlock(items=items, text="\n".join(lines))
