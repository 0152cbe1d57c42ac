"""The cue block: what reverse image retrieval found, as evidence items and as prompt text.

Each neighbour becomes one :class:`Evidence` item: its id, its similarity to the query image,
and its texts — captions first, then up to ``qa_per_image`` of its QA pairs, the ones whose
questions are most similar to the user's question first (when question vectors are given).
The prompt text (:attr:`CueBlock.text`) reads::

    Similar images found by reverse image search (most similar first):
    [1] synpic1234.jpg (similarity 0.91, organ: CHEST)
      - Q: Is there a pneumothorax? A: no
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mmrag.retrieval.exact import top_k
from mmrag.tasks.rir.knowledge import QABank
from mmrag.tasks.rir.providers import Neighbour

__all__ = ["Evidence", "CueBlock", "build_cue_block", "CUE_HEADER"]

CUE_HEADER = "Similar images found by reverse image search (most similar first):"


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


def build_cue_block(neighbours: Sequence[Neighbour], question_vector: np.ndarray | None = None,
                    bank: QABank | None = None, qa_per_image: int = 3, captions_per_image: int = 2) -> CueBlock:
    items: list[Evidence] = []
    lines = [CUE_HEADER] if neighbours else []
    for rank, n in enumerate(neighbours, 1):
        texts = [c for c in n.captions[:captions_per_image]]
        for i in _qa_order(n, question_vector, bank)[:qa_per_image]:
            p = n.qa[i]
            texts.append(f"Q: {str(p.get('question', '')).strip()} A: {str(p.get('answer', '')).strip()}")
        items.append(Evidence(id=n.id, similarity=n.similarity, texts=texts, path=n.path))
        extra = ", ".join(f"{k.replace('image_', '')}: {v}" for k, v in n.metadata.items()
                          if isinstance(v, (str, int, float)) and k in ("image_organ", "organ", "modality", "title"))
        lines.append(f"[{rank}] {n.id} (similarity {n.similarity:.2f}{', ' + extra if extra else ''})")
        lines.extend(f"  - {t}" for t in texts)
    return CueBlock(items=items, text="\n".join(lines))
