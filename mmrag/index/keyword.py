"""Keyword search text: what of an item's metadata is searchable by words, and how a query
becomes an FTS5 expression. Shared by the stores that offer keyword search.

Indexed per item: ``body`` = captions, ``text`` (a caption row's own text), ``ocr_text`` and any
other string metadata (not the path, hash or split); ``name`` = the file name without extension,
separators as spaces. The FTS5 table uses the *trigram* tokenizer: OCR often runs words
together ("HARBORBOOKS") or misreads a letter, and trigrams still match "harbor" and "books"
inside it; a query word is a quoted trigram phrase, the words OR-ed, ranked by BM25.

:class:`KeywordTable` is that table's SQL (create, write, BM25 query) on a caller's connection;
the FAISS store keeps it in ``store.db`` (rowid = the item's row id), the Milvus store in a side
file (rowid = the item's primary key). The caller owns the transactions.
"""

from __future__ import annotations

import json
import re
import sqlite3
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


class KeywordTable:
    """The FTS5 table ``items_fts(body, name)`` (trigram tokenizer; rowid = the caller's int64
    row key) on ``conn``. Writes run in the caller's transaction."""

    NAME = "items_fts"

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def exists(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (self.NAME,)).fetchone() is not None

    def create(self) -> None:
        """Create the table (sqlite3.Error where SQLite lacks FTS5)."""
        self.conn.execute(f"CREATE VIRTUAL TABLE {self.NAME} USING fts5(body, name, tokenize='trigram')")

    def insert(self, rowids, metas) -> None:
        """One row per item with text; ``metas``: metadata dicts or their JSON text."""
        texts = [keyword_text(json.loads(m) if isinstance(m, str) else m) for m in metas]
        self.conn.executemany(f"INSERT INTO {self.NAME}(rowid, body, name) VALUES (?, ?, ?)",
                              [(int(r), b, n) for r, (b, n) in zip(rowids, texts) if b or n])

    def delete(self, rowids) -> None:
        self.conn.execute(f"DELETE FROM {self.NAME} WHERE rowid IN (SELECT value FROM json_each(?))",
                          (json.dumps([int(r) for r in rowids]),))

    def search(self, query: str, k: int, join: str = "", where: str = "1",
               params=()) -> list[tuple[int, float]]:
        """(rowid, BM25 score; higher is better) of the ``k`` best matches of ``query``, among
        the rows matching ``where`` (over the table ``join``ed in, if any); [] when the query
        has no usable word."""
        expr = fts_query(query)
        if expr is None or k <= 0:
            return []
        # bm25() is smaller for better matches; the file name counts half as much as the text
        sql = (f"SELECT {self.NAME}.rowid, -bm25({self.NAME}, 1.0, 0.5) AS s FROM {self.NAME}" + join
               + f" WHERE {self.NAME} MATCH ? AND {where} ORDER BY s DESC LIMIT ?")
        return [(r, float(s)) for r, s in self.conn.execute(sql, [expr, *params, int(k)])]

    def has_body(self) -> bool:
        """Whether any row has text beyond its file name."""
        return self.conn.execute(f"SELECT 1 FROM {self.NAME} WHERE body != '' LIMIT 1").fetchone() is not None


__all__ = ["KeywordTable", "keyword_text", "query_words", "fts_query", "STOPWORDS", "MIN_WORD"]
