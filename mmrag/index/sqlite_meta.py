"""The SQLite side of the FAISS store: the source of truth for ids, vectors and metadata.

``store.db`` (WAL, synchronous=FULL) holds the table ``items`` (per string id an int64 row id
``rid`` (AUTOINCREMENT: a re-added id gets a fresh one), the float32 vector as a little-endian
blob and the metadata as JSON text) and the table ``meta`` (format, dim, metric, a random store
uuid and a *generation* counter that every committed add/delete bumps in the same transaction).
``items_fts`` (FTS5, trigram tokenizer, rowid = ``rid``) holds each row's keyword text
(:func:`mmrag.index.keyword.keyword_text`), written in the same transactions as ``items``; a
store made before it existed gets it filled on first open.

:class:`SqliteMeta` owns the connection; every write is one ``BEGIN IMMEDIATE`` transaction
(:meth:`SqliteMeta.transaction`), durable when it returns. Callers serialise access (the store's
lock); the connection may be used from any thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.filters import key_expr
from mmrag.index.keyword import KeywordTable

__all__ = ["CHUNK", "DB_NAME", "FORMAT_VERSION", "SqliteMeta", "StoreMismatchError", "connect", "json_list", "transaction"]

DB_NAME = "store.db"
FORMAT_VERSION = 1
CHUNK = 50_000  # rows per read (and row ids per `IN (json_each(?))` list)


class StoreMismatchError(IndexError_, ValueError):
    """The store on disk was created with another dimension or metric."""


def json_list(values) -> str:
    """Row ids (or ids) as the JSON array bound to ``IN (SELECT value FROM json_each(?))``."""
    return json.dumps([v if isinstance(v, str) else int(v) for v in values])



def connect(path: Path) -> sqlite3.Connection:
    """A connection as the stores use it: autocommit (explicit :func:`transaction`), shared
    across threads (the store serialises), WAL, durable commits, and a wait of up to 10 s for
    another process's write instead of failing at once."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``; any exception (KeyboardInterrupt too) rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteMeta:
    """``<path>/store.db`` opened (created if needed) for ``dim``-dimensional vectors and
    ``metric``; a store made with another dim or metric is a :class:`StoreMismatchError`.

    ``uuid``, ``generation`` and ``count`` mirror the database (``count``: rows in ``items``)."""

    def __init__(self, path: Path, dim: int, metric: str):
        self.path = Path(path)  # the store directory (named in errors)
        self.dim = int(dim)
        self.metric = metric
        self._indexed_keys: set[str] = set()
        self.conn = connect(self.path / DB_NAME)
        try:
            self._init_db()
        except BaseException:
            self.conn.close()
            raise

    def _init_db(self) -> None:
        c = self.conn
        c.execute("PRAGMA cache_size=-65536")  # 64 MiB of hot pages (re-rank and metadata reads)
        with self.transaction():
            c.execute(
                "CREATE TABLE IF NOT EXISTS items ("
                " rid INTEGER PRIMARY KEY AUTOINCREMENT,"
                " id TEXT NOT NULL UNIQUE,"
                " vector BLOB NOT NULL,"
                " metadata TEXT NOT NULL DEFAULT '{}')"
            )
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {
                    "format": str(FORMAT_VERSION),
                    "dim": str(self.dim),
                    "metric": self.metric,
                    "uuid": uuid.uuid4().hex,
                    "generation": "0",
                }
                c.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        if int(meta["dim"]) != self.dim:
            raise StoreMismatchError(
                f"store {self.path} holds {meta['dim']}-dimensional vectors, opened with dim={self.dim}; "
                "use the encoder the store was built with, or a new directory"
            )
        if meta["metric"] != self.metric:
            raise StoreMismatchError(
                f"store {self.path} uses metric {meta['metric']!r}, opened with metric={self.metric!r}"
            )
        self.uuid = meta["uuid"]
        self.generation = int(meta["generation"])
        self.count = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        self._data_version = c.execute("PRAGMA data_version").fetchone()[0]
        self.has_fts = self._init_fts()

    def _init_fts(self) -> bool:
        """Create (and, for an older store, fill) the keyword table; False where SQLite lacks
        FTS5 or the file is read-only without it."""
        c = self.conn
        self.fts = KeywordTable(c)
        try:
            if self.fts.exists():
                return True
            with self.transaction():
                self.fts.create()
                cur = c.execute("SELECT rid, metadata FROM items")
                while rows := cur.fetchmany(CHUNK):
                    self.fts.insert([r for r, _ in rows], [m for _, m in rows])
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- transactions
    def transaction(self):
        return transaction(self.conn)

    def refresh(self) -> bool:
        """Whether another connection (another process writing this store) committed since this
        one last looked (``PRAGMA data_version``, which this connection's own commits leave
        alone) and changed the rows; the generation and count are then re-read."""
        v = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if v == self._data_version:
            return False
        self._data_version = v
        gen = int(self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        count = self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        changed = gen != self.generation or count != self.count
        self.generation, self.count = gen, count
        return changed

    def _bump_generation(self) -> None:
        self.generation += 1
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(self.generation),))

    def _rids_of(self, ids: list[str]) -> list[int]:
        return [r for (r,) in self.conn.execute(
            "SELECT rid FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
        )]

    def replace(self, ids: list[str], blobs: list[bytes], metas: list[str]) -> tuple[list[int], np.ndarray]:
        """Insert the rows (distinct ``ids``), replacing those ids' old rows, in one transaction
        that bumps the generation. Returns (the old row ids, the new ones in ``ids`` order)."""
        with self.transaction() as c:
            old = self._rids_of(ids)
            if old:
                c.execute("DELETE FROM items WHERE rid IN (SELECT value FROM json_each(?))", (json.dumps(old),))
            row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            seq = row[0] if row else 0
            c.executemany(
                "INSERT INTO items(id, vector, metadata) VALUES (?, ?, ?)", zip(ids, blobs, metas)
            )
            new = np.fromiter(
                (r for (r,) in c.execute("SELECT rid FROM items WHERE rid > ? ORDER BY rid", (seq,))),
                np.int64,
            )
            if len(new) != len(ids):
                raise IndexError_(f"store {self.path}: inserted {len(ids)} rows but found {len(new)}")
            if self.has_fts:
                if old:
                    self.fts.delete(old)
                self.fts.insert(new, metas)
            self._bump_generation()
        self.count += len(ids) - len(old)
        return old, new

    def delete(self, ids: list[str]) -> list[int]:
        """Delete the rows of ``ids`` in one transaction (bumping the generation when any
        existed); returns their row ids."""
        with self.transaction() as c:
            old = self._rids_of(ids)
            if old:
                c.execute("DELETE FROM items WHERE rid IN (SELECT value FROM json_each(?))", (json.dumps(old),))
                if self.has_fts:
                    self.fts.delete(old)
                self._bump_generation()
        self.count -= len(old)
        return old

    # ---------------------------------------------------------------- reads by row id
    def rids(self) -> np.ndarray:
        """Every row id, ascending."""
        cur = self.conn.execute("SELECT rid FROM items ORDER BY rid")
        out = np.fromiter((r[0] for r in cur), dtype=np.int64)
        return out

    def decode(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.empty((0, self.dim), np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.dim).astype(np.float32, copy=False)

    def vectors_by_rid(self, rids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row ids found, their vectors), in ascending row-id order."""
        got_r: list[int] = []
        blobs: list[bytes] = []
        rids = np.asarray(rids, np.int64)
        for a in range(0, len(rids), CHUNK):
            cur = self.conn.execute(
                "SELECT rid, vector FROM items WHERE rid IN (SELECT value FROM json_each(?)) ORDER BY rid",
                (json_list(rids[a : a + CHUNK].tolist()),),
            )
            for r, b in cur:
                got_r.append(r)
                blobs.append(b)
        return np.asarray(got_r, np.int64), self.decode(blobs)

    def iter_rows(self, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row ids, vectors) of every row, in ascending row-id chunks."""
        cur = self.conn.execute("SELECT rid, vector FROM items ORDER BY rid")
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield np.fromiter((r[0] for r in rows), np.int64, len(rows)), self.decode([r[1] for r in rows])

    def rows_by_rid(self, rids: np.ndarray, with_vectors: bool = False) -> dict[int, tuple]:
        """rid -> (id, metadata JSON text[, vector blob]) for the row ids that exist."""
        rows: dict[int, tuple] = {}
        if len(rids):
            cols = "rid, id, metadata" if not with_vectors else "rid, id, metadata, vector"
            for row in self.conn.execute(
                f"SELECT {cols} FROM items WHERE rid IN (SELECT value FROM json_each(?))",
                (json_list(rids.tolist()),),
            ):
                rows[row[0]] = row[1:]
        return rows

    # ---------------------------------------------------------------- filters
    def count_where(self, where: str, params: Sequence[Any]) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM items WHERE {where}", params).fetchone()[0]

    def rids_where(self, where: str, params: Sequence[Any]) -> np.ndarray:
        """The matching row ids, ascending."""
        return np.fromiter(
            (r for (r,) in self.conn.execute(f"SELECT rid FROM items WHERE {where} ORDER BY rid", params)),
            np.int64,
        )

    def rids_among_where(self, rids: np.ndarray, where: str, params: Sequence[Any]) -> np.ndarray:
        """Those of ``rids`` whose rows match."""
        return np.fromiter((r for (r,) in self.conn.execute(
            f"SELECT rid FROM items WHERE rid IN (SELECT value FROM json_each(?)) AND {where}",
            [json_list(rids.tolist()), *params],
        )), np.int64)

    def index_metadata_keys(self, filter: dict[str, Any]) -> None:
        """Create (once) an expression index per filtered metadata key, so filters stay fast."""
        for key in filter:
            if key in self._indexed_keys:
                continue
            name = "meta_" + hashlib.sha1(key.encode()).hexdigest()[:16]
            try:
                self.conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON items({key_expr(key)})")
            except sqlite3.Error:
                pass  # e.g. a read-only file system: the filter still works, by a scan
            self._indexed_keys.add(key)

    # ---------------------------------------------------------------- keyword search
    def keyword_rids(self, query: str, k: int, where: str = "1", params: Sequence[Any] = ()) -> list[tuple[int, float]]:
        """(row id, BM25 score; higher is better) of the ``k`` best keyword matches of
        ``query`` among the rows matching ``where``; [] when the query has no usable word."""
        if not self.has_fts:
            return []
        join = "" if where == "1" else " JOIN items ON items.rid = items_fts.rowid"
        return self.fts.search(query, k, join, where, params)

    def has_keyword_text(self) -> bool:
        """Whether any row has text beyond its file name (captions, OCR text, metadata)."""
        return self.has_fts and self.fts.has_body()

    # ---------------------------------------------------------------- reads by id
    def metadata_by_id(self, ids: list[str]) -> dict[str, str]:
        """id -> metadata JSON text, for the ids that exist."""
        return dict(self.conn.execute(
            "SELECT id, metadata FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
        ).fetchall()) if ids else {}

    def vectors_by_id(self, ids: list[str]) -> dict[str, bytes]:
        """id -> vector blob, for the ids that exist."""
        return dict(self.conn.execute(
            "SELECT id, vector FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
        ).fetchall()) if ids else {}

    def ids(self) -> list[str]:
        """Every id in insertion (row id) order."""
        return [i for (i,) in self.conn.execute("SELECT id FROM items ORDER BY rid")]

    def contains(self, id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM items WHERE id = ?", (id,)).fetchone() is not None
