"""Text chunks of documents, the unit of retrieval for contextual image referencing."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

from mmrag.corpus.documents import Document

__all__ = ["Chunk", "chunk_document", "split_sentences", "text_fingerprint"]


@dataclass
class Chunk:
    """A piece of a section's text, the unit of retrieval."""

    id: str
    doc_id: str
    section: int
    heading: str
    text: str


# A paragraph that is nothing but one link ("[Discussions](https://...)"): site furniture, not text.
_LINK_ONLY = re.compile(r"^\s*\[[^\]]*\]\([^)]*\)\s*$")
# A sentence ends at . ! ? (optionally closed by a quote or bracket) before whitespace and a capital,
# digit, quote or bracket -- so "e.g. the" and "3.5" stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[$`])")


def split_sentences(text: str) -> list[str]:
    return [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]


def _word_cuts(text: str, max_words: int) -> list[str]:
    w = text.split()
    return [" ".join(w[i : i + max_words]) for i in range(0, len(w), max_words)]


def _sentence_cuts(text: str, max_words: int) -> list[str]:
    """Whole sentences, at most ``max_words`` words a piece; only a longer sentence is cut by words."""
    pieces: list[str] = []
    cur: list[str] = []
    n = 0
    for sent in split_sentences(text):
        k = len(sent.split())
        if cur and n + k > max_words:
            pieces.append(" ".join(cur))
            cur, n = [], 0
        if k > max_words:
            pieces.extend(_word_cuts(sent, max_words))
            continue
        cur.append(sent)
        n += k
    if cur:
        pieces.append(" ".join(cur))
    return pieces


def chunk_document(doc: Document, max_words: int = 120, sentences: bool = False) -> list[Chunk]:
    """Split each section into chunks of whole paragraphs, at most ``max_words`` words each.

    A longer paragraph is cut at word boundaries, or -- ``sentences=True``, for chunks shown to
    a reader -- at sentence ends (a single over-long sentence still by words), and link-only
    paragraphs ("[Discussions](...)") are dropped. The figure-position evaluation keeps the word
    cuts its benchmark was measured with. The heading is not repeated in the text."""
    chunks: list[Chunk] = []
    for s_idx, sec in enumerate(doc.sections):
        pieces: list[str] = []
        for para in sec.paragraphs():
            if sentences:
                if _LINK_ONLY.match(para):
                    continue
                pieces.extend(_sentence_cuts(para, max_words))
            else:
                pieces.extend(_word_cuts(para, max_words))
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
