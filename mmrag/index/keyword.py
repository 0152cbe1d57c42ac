"""Keyword search text: what of an item's metadata is searchable by words, and how a query
becomes an FTS5 expression. Shared by the stores that offer keyword search.

Indexed per item: ``body`` = captions, ``text`` (a caption row's own text), ``ocr_text`` and any
other string metadata (not the path, hash or split); ``name`` = the file name without extension,
separators as spaces. The FTS5 table uses the *trigram* tokenizer: OCR often runs words
together ("HARBORBOOKS") or misreads a letter, and trigrams still match "harbor" and "books"
inside it; a query word is a quoted trigram phrase, the words OR-ed, ranked by BM25.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

NOT_TEXT = frozenset({"path", "sha256", "split", "image_id", "source", "ocr_lines", "nsfw", "prior", "cosine"})

# function words carry no evidence; with trigrams "the" would match "there", "other", ...
STOPWORDS = frozenset(
    "a an the and or of in on at to for with by from is are was were be been being it its this that "
    "these those there their they them his her he she we you i as into onto over under near next some "
    "while who whom which what where when how not no yes has have had do does did very".split()
)
MIN_WORD = 3  # trigram phrases need three characters


def keyword_text(meta: dict[str, Any] | None) -> tuple[str, str]:
    """(body, name) of an item's metadata for the keyword index."""
    meta = meta or {}
    parts: list[str] = []
    for key, v in meta.items():
        if key in NOT_TEXT:
            continue
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts.extend(x for x in v if isinstance(x, str))
    name = ""
    path = meta.get("path")
    if isinstance(path, str) and path:
        name = re.sub(r"[_\-.]+", " ", PurePath(path).stem)
    return "\n".join(p for p in parts if p.strip()), name


def query_words(query: str) -> list[str]:
    """The words of a query that keyword search uses (lower case, no stopwords, >= 3 chars)."""
    words = re.findall(r"\w+", query.lower())
    return list(dict.fromkeys(w for w in words if len(w) >= MIN_WORD and w not in STOPWORDS))


def fts_query(query: str) -> str | None:
    """An FTS5 MATCH expression (words OR-ed, each a quoted phrase), or None when the query has
    no usable word."""
    words = query_words(query)
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words) if words else None


__all__ = ["keyword_text", "query_words", "fts_query", "STOPWORDS", "MIN_WORD"]
