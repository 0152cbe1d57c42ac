"""Text chunks of documents, the unit of retrieval for contextual image referencing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from mmrag.corpus.documents import Document

__all__ = ["Chunk", "chunk_document", "text_fingerprint"]


@dataclass
class Chunk:
    """A piece of a section's text, the unit of retrieval."""

    id: str
    doc_id: str
    section: int
    heading: str
    text: str


def chunk_document(doc: Document, max_words: int = 120) -> list[Chunk]:
    """Split each section into chunks of whole paragraphs, at most ``max_words`` words each
    (a longer paragraph is cut at word boundaries). The heading is not repeated in the text."""
    chunks: list[Chunk] = []
    for s_idx, sec in enumerate(doc.sections):
        pieces: list[str] = []
        for para in sec.paragraphs():
            w = para.split()
            for i in range(0, len(w), max_words):
                pieces.append(" ".join(w[i : i + max_words]))
        cur: list[str] = []
        n = 0

        def flush() -> None:
            if cur:
                chunks.append(Chunk(f"{doc.id}#s{s_idx}c{len([c for c in chunks if c.section == s_idx])}",
                                    doc.id, s_idx, sec.heading, "\n\n".join(cur)))

        for piece in pieces:
            k = len(piece.split())
            if cur and n + k > max_words:
                flush()
                cur, n = [], 0
            cur.append(piece)
            n += k
        flush()
    return chunks


def text_fingerprint(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
