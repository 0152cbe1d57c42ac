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

Why a per-word cache: FTS5 ranks an OR query by computing ``bm25()`` for *every* matching row
before its LIMIT (it has no top-k pruning), and a common word ("dog") matches a quarter of a
captioned index, so one lookup on 100k rows costs 60-200 ms. FTS5's BM25 is a sum over the
query's phrases of a term that depends only on the phrase and the row (IDF, the phrase's
weighted frequency in the row, the row's length against the average), so each word's terms are
fetched once (a one-phrase query) and kept; a query adds its words' terms in phrase order, as
FTS5 does, which gives the same scores to the last bit. Any write, on this connection
(``total_changes``) or another (``PRAGMA data_version``), empties the cache: the terms depend on
the row count and lengths.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import OrderedDict
from pathlib import PurePath
from typing import Any

import numpy as np

from mmrag.errors import InvalidInputError

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


def phrases(words: list[str]) -> str:
    """The FTS5 MATCH expression of ``words``: each a quoted phrase, OR-ed."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


BM25_WEIGHTS = "1.0, 0.5"  # bm25() column weights: body, name (the file name counts half)


CACHE_ENV = "MMRAG_KEYWORD_CACHE_ROWS"
MAX_ROWS = 2**62  # more rows than any table holds: a larger k means "all of them"


def cache_budget() -> int:
    """The keyword cache's budget in (word, row) entries: ``$MMRAG_KEYWORD_CACHE_ROWS`` if set
    (0: no cache), else :attr:`KeywordTable.CACHE_ROWS`."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if not raw:
        return KeywordTable.CACHE_ROWS
    try:
        n = int(raw)
    except ValueError:
        raise InvalidInputError(f"{CACHE_ENV} must be a whole number of entries (0: no cache), got {raw!r}") from None
    if n < 0:
        raise InvalidInputError(f"{CACHE_ENV} must be >= 0, got {n}")
    return n


class KeywordTable:
    """The FTS5 table ``items_fts(body, name)`` (trigram tokenizer; rowid = the caller's int64
    row key) on ``conn``. Writes run in the caller's transaction.

    Unfiltered searches read each query word's BM25 terms from a cache (module docstring) of at
    most ``cache_rows`` (word, row) entries in all, least recently used words dropped first
    (12 bytes an entry; default: :func:`cache_budget`); 0 turns it off. Callers serialise access,
    as for the connection."""

    NAME = "items_fts"
    CACHE_ROWS = 8_000_000  # a 100k-image captioned index's whole query vocabulary, ~100 MB

    def __init__(self, conn: sqlite3.Connection, cache_rows: int | None = None):
        self.conn = conn
        self.cache_rows = cache_budget() if cache_rows is None else int(cache_rows)
        self._terms: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # word -> (positions, terms)
        self._cached = 0  # entries in _terms
        self._rowids: np.ndarray | None = None  # position -> rowid, ascending
        self._state: tuple | None = None  # (total_changes, data_version) the cache reflects

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

    def clear(self) -> None:
        """Delete every row."""
        self.conn.execute(f"DELETE FROM {self.NAME}")

    def search(self, query: str, k: int, join: str = "", where: str = "1",
               params=()) -> list[tuple[int, float]]:
        """(rowid, BM25 score; higher is better) of the ``k`` best matches of ``query``, among
        the rows matching ``where`` (over the table ``join``ed in, if any); [] when the query
        has no usable word. Equal scores: the lower rowid first."""
        words = query_words(query)
        if not words or k <= 0:
            return []
        k = min(int(k), MAX_ROWS)  # SQLite's LIMIT takes a signed 64-bit integer
        if where == "1" and not join and self.cache_rows > 0 and not self.conn.in_transaction:
            return self._search_cached(words, k)
        # bm25() is smaller for better matches; the file name counts half as much as the text
        sql = (f"SELECT {self.NAME}.rowid, -bm25({self.NAME}, {BM25_WEIGHTS}) AS s FROM {self.NAME}" + join
               + f" WHERE {self.NAME} MATCH ? AND {where} ORDER BY s DESC, {self.NAME}.rowid LIMIT ?")
        return [(r, float(s)) for r, s in self.conn.execute(sql, [phrases(words), *params, k])]

    def _search_cached(self, words: list[str], k: int) -> list[tuple[int, float]]:
        self._check_fresh()
        if self._rowids is None:
            self._rowids = np.fromiter((r for (r,) in self.conn.execute(f"SELECT rowid FROM {self.NAME} ORDER BY rowid")),
                                       np.int64)
        n = len(self._rowids)
        parts = [self._word_terms(w) for w in words]
        pos = np.concatenate([p for p, _ in parts])
        if not len(pos):
            return []
        # bincount adds in input order, so each row's sum runs over the words in query order
        score = np.bincount(pos, weights=np.concatenate([t for _, t in parts]), minlength=n)
        hit = np.flatnonzero(np.bincount(pos, minlength=n))
        s = score[hit]
        if len(hit) > k:  # every row tied with the k-th stays in, so the cut below is by rowid
            keep = s >= s[np.argpartition(-s, k - 1)[k - 1]]
            hit, s = hit[keep], s[keep]
        order = np.lexsort((hit, -s))[:k]  # best first; ties: lower position = lower rowid first
        return [(int(self._rowids[i]), float(v)) for i, v in zip(hit[order], s[order])]

    def _check_fresh(self) -> None:
        # this connection's own writes (any table: every store write touches this one too) and
        # other connections' commits, which data_version counts and total_changes does not
        state = (self.conn.total_changes, self.conn.execute("PRAGMA data_version").fetchone()[0])
        if state != self._state:
            self._terms.clear()
            self._cached = 0
            self._rowids = None
            self._state = state

    def _word_terms(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``_rowids``, BM25 terms) of the rows matching ``word``."""
        got = self._terms.get(word)
        if got is not None:
            self._terms.move_to_end(word)
            return got
        rows = self.conn.execute(f"SELECT rowid, -bm25({self.NAME}, {BM25_WEIGHTS}) FROM {self.NAME} WHERE {self.NAME} MATCH ?",
                                 [phrases([word])]).fetchall()
        rid = np.fromiter((r for r, _ in rows), np.int64, len(rows))
        got = (np.searchsorted(self._rowids, rid), np.fromiter((t for _, t in rows), np.float64, len(rows)))
        if len(rid) <= self.cache_rows:
            self._terms[word] = got
            self._cached += len(rid)
            while self._cached > self.cache_rows:
                _, (p, _) = self._terms.popitem(last=False)
                self._cached -= len(p)
        return got

    def has_body(self) -> bool:
        """Whether any row has text beyond its file name."""
        return self.conn.execute(f"SELECT 1 FROM {self.NAME} WHERE body != '' LIMIT 1").fetchone() is not None


__all__ = ["KeywordTable", "cache_budget", "CACHE_ENV", "keyword_text", "query_words", "phrases", "STOPWORDS", "MIN_WORD"]
