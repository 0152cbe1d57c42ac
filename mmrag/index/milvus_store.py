"""The Milvus vector store: ``pymilvus.MilvusClient`` against Milvus Lite or a Milvus server.

Where the data lives is the ``uri`` option:

* none (default): Milvus Lite in ``<store dir>/milvus.db`` -- embedded, one local file, nothing
  to run (the ``milvus-lite`` package starts its engine in a child process on first use);
* a file path (``/data/mmrag.db``): Milvus Lite in that file; several stores may share one file
  (each is its own collection);
* ``http(s)://host:19530``: a Milvus standalone or cluster deployment. Credentials come from
  the ``token`` option or ``$MILVUS_TOKEN`` (``user:password`` or an API key) and are never
  written to disk.

The store directory always holds ``milvus.json`` (uri, collection name, dim, metric, index),
so a store reopens the same collection even if the directory is moved.

Schema: ``pk`` INT64 primary key = the first 8 bytes of BLAKE2b(id) (ids are arbitrary strings,
and a hash keeps quotes and backslashes out of Milvus expressions; a collision among 10^6 ids
has probability ~3e-8), ``item_id`` VARCHAR (the caller's id), ``seq`` INT64 (insertion order,
so ``ids()`` lists like the FAISS store), ``vector`` FLOAT_VECTOR, ``metadata`` JSON.
Collections use Strong consistency: a search sees every add/delete that returned before it.

Semantics match :mod:`mmrag.index.faiss_store` (the shared contract tests run on both; argument
checks are :mod:`mmrag.index.validation`, filter checks and matching :mod:`mmrag.index.filters`):
``add`` replaces ids that exist (upsert; a repeated id within one call: the last wins),
``delete`` returns how many existed, scores are inner products (``metric="l2"``: minus the
squared distance), ``search`` filters ``{"key": value | [values]}`` by JSON type and value.
Filters are translated to a Milvus expression that selects a superset of the matches (JSON
``null`` and odd keys cannot be expressed portably, and engines differ on ``1 == true``), and
every hit is then checked exactly in Python; when too few survive, the search is repeated with
a larger limit, so a filtered search still returns ``k`` hits when ``k`` rows match.

Keyword search (BM25) uses a side index, ``<store dir>/keyword.db``: SQLite with the FAISS
store's FTS5 table (:class:`mmrag.index.keyword.KeywordTable`, rowid = ``pk``) and ``keyed``, the
pk of every row written. ``add``/``delete`` write Milvus first, then the side file in one
transaction; a ``dirty`` flag is set before the Milvus write and cleared with the side write, so a
crash in between (or a side file lost, or a count that differs from the collection's) makes the
next open rebuild it from the collection's metadata in one pass. Filters are checked in Python on
an over-fetched page, as in vector search. The side file is per store directory: processes writing
one server collection from other directories do not update it (their rows are found after a
rebuild, when the count differs).

One process per Milvus Lite file: Milvus Lite's engine locks ``.<file>.lock`` beside the file
while it runs; this store stops the engine when the last store of the process on that file
closes (pymilvus never does: the file stayed locked until the process exited). A second process
opening the file (``mmrag index`` while ``mmrag serve`` has the index open) gets a one-line error
naming the file and the holder's pid, checked here before Milvus Lite is started: Milvus Lite's
own failed start deletes the lock file it lost to, and a third process then ran a second engine
on the file, whose writes were lost when the engines exited.
A Milvus server (``uri="http://..."``) has no such limit: a store kept open sees other
processes' adds and deletes at its next search, count or keyword search (Strong consistency,
and the side file's keyword cache follows SQLite's ``data_version``).

Index types (``index_type``): ``FLAT`` (exact; the default for Milvus Lite), ``IVF_FLAT``
(``nlist``/``nprobe``), ``HNSW`` (``hnsw_m``/``ef_search``; servers only), ``AUTOINDEX``, or
any other type the server knows with ``index_params``/``search_params``. Milvus Lite 2.5
supports FLAT, IVF_FLAT and AUTOINDEX. Milvus answers at most 16,384 hits per query.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.base import VECTOR_STORES, Hit
from mmrag.index.filters import check_filter, filter_values, matches
from mmrag.index.keyword import KeywordTable
from mmrag.index.sqlite_meta import connect, transaction
from mmrag.index.validation import as_matrix, check_ids, metadata_json

MARKER_NAME = "milvus.json"
LITE_FILE = "milvus.db"
KEYWORD_FILE = "keyword.db"
MAX_TOPK = 16_384  # Milvus' limit on hits per query (and on query offset+limit)
WRITE_CHUNK = 2_000  # rows per upsert call (gRPC messages stay well under 64 MiB)
READ_CHUNK = 4_096  # primary keys per `pk in [...]` query
ITEM_ID_MAX = 8_192  # bytes of an id (VARCHAR max_length is in bytes)
METRICS = {"ip": "IP", "l2": "L2"}
DEFAULT_INDEX = "FLAT"


class MilvusStoreError(IndexError_, ValueError):
    """The Milvus store cannot be opened as asked (dimension or metric mismatch, bad option)."""


def _pk(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _collection_name(path: Path) -> str:
    """A valid, stable Milvus collection name for a store directory (letters, digits, _)."""
    stem = re.sub(r"[^0-9A-Za-z_]+", "_", f"{path.parent.name}_{path.name}").strip("_")[:120] or "store"
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:10]
    return f"mmrag_{stem}_{digest}"


_LITE_CLAIMS: dict[str, list[int]] = {}  # Milvus Lite file -> [fd of its lock file, open stores]
_LITE_CLAIMS_LOCK = threading.Lock()


def _lite_lock_path(db: str) -> Path:
    return Path(db).parent / f".{Path(db).name}.lock"  # milvus_lite.server.Server's lock path


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, ft = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (ft.st_dev, ft.st_ino)


def _lock_holder(fd: int) -> str:
    """The pid holding a POSIX lock on ``fd``'s file, or "unknown" (F_GETLK's struct is Linux's)."""
    import fcntl
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        return "unknown"
    try:
        fmt = "hhxxxxqqixxxx"  # struct flock: l_type, l_whence, l_start, l_len, l_pid
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(fmt, fcntl.F_WRLCK, 0, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack(fmt, got)
        return str(pid) if kind != fcntl.F_UNLCK and pid > 0 else "unknown"
    except (OSError, struct.error):
        return "unknown"


def _claim_lite_file(db: str) -> None:
    """Take Milvus Lite's lock on ``db`` for this process, or raise IndexError_ when another
    process holds it (module docstring). POSIX locks belong to the process, so Milvus Lite's own
    lock on the file still succeeds, and no process can start an engine on the file between this
    check and Milvus Lite's. Held until the last store of this process on the file closes."""
    import fcntl

    lock = _lite_lock_path(db)
    with _LITE_CLAIMS_LOCK:
        claim = _LITE_CLAIMS.get(db)
        if claim is not None:
            if _same_file(claim[0], lock):
                claim[1] += 1
                return
            os.close(claim[0])  # the engine stopped and deleted the file: claim anew
            del _LITE_CLAIMS[db]
        for _ in range(100):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise IndexError_(f"cannot open Milvus Lite file {db}: {e.strerror} ({lock})") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _lock_holder(fd)
                os.close(fd)  # this process held no lock on the file, so closing releases nothing
                raise IndexError_(
                    f"Milvus Lite file {db} is open in another process (pid {holder}), and Milvus Lite lets one "
                    "process use a file at a time: stop that process (e.g. a running `mmrag serve`) and retry, "
                    "or keep the index on a Milvus server (--store-uri http://host:19530) to search and write at once"
                ) from None
            if _same_file(fd, lock):
                break
            os.close(fd)  # its holder deleted it as it let go: lock the file that is there now
        else:
            raise IndexError_(f"cannot lock Milvus Lite file {db}: {lock} keeps being replaced")
        _LITE_CLAIMS[db] = [fd, 1]


def _release_lite_file(db: str) -> None:
    """The last store of this process on ``db`` closed: stop its Milvus Lite engine (pymilvus
    never does, so the file stayed locked until the process exited) and let the file go. The lock
    file is deleted while still locked, so a process that opened it meanwhile sees a stale file
    and locks a new one, never a second engine on the database."""
    with _LITE_CLAIMS_LOCK:
        claim = _LITE_CLAIMS.get(db)
        if claim is None:
            return
        claim[1] -= 1
        if claim[1] > 0:
            return
        del _LITE_CLAIMS[db]
        if _same_file(claim[0], _lite_lock_path(db)):
            try:
                os.unlink(_lite_lock_path(db))
            except OSError:
                pass
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(db)
        except Exception:
            pass  # no engine started here (e.g. a failed open), or it is gone already
        os.close(claim[0])


@atexit.register
def _release_all_lite_files() -> None:
    # before Milvus Lite's own teardown, which unlocks before it deletes the lock file
    for db in list(_LITE_CLAIMS):
        _LITE_CLAIMS[db][1] = 1
        _release_lite_file(db)


def _client_class():
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise IndexError_(
            f"the milvus store needs pymilvus (and milvus-lite for local files): {e}. "
            "Install with: pip install 'pymilvus==2.6.17' 'milvus-lite==2.5.1'"
        ) from None
    return MilvusClient


def _check_id_bytes(i: str) -> None:
    if len(i.encode("utf-8")) > ITEM_ID_MAX:
        raise ValueError(f"ids are limited to {ITEM_ID_MAX} bytes in the milvus store, got {len(i.encode())}")


def _literal(v: Any) -> str | None:
    """A Milvus expression literal for a filter value, or None where none is portable."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        v = int(v)
        return str(v) if -(2**63) <= v < 2**63 else None
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if np.isfinite(v) else None
    if isinstance(v, str) and v.isprintable():
        return json.dumps(v, ensure_ascii=False)  # "..." with \" and \\ escaped
    return None


def filter_expression(filter: dict[str, Any]) -> str:
    """The Milvus boolean expression selecting a superset of ``filter``'s matches ("" = all)."""
    clauses = []
    for key, value in filter.items():
        lits = [_literal(v) for v in filter_values(value)]
        if not key.isprintable() or any(lit is None for lit in lits):
            continue  # not expressible: no server-side clause, the exact check decides
        ref = f'metadata["{key}"]'
        alts = [f"{ref} == {lit}" for lit in lits]
        clauses.append(alts[0] if len(alts) == 1 else "(" + " or ".join(alts) + ")")
    return " and ".join(clauses)


class _SideKeywords:
    """``<store dir>/keyword.db``: the keyword table beside a Milvus collection (module docstring)."""

    def __init__(self, path: Path):
        self.conn = connect(path)
        self.table = KeywordTable(self.conn)
        try:
            self._init_tables()
        except BaseException:
            self.conn.close()
            raise

    def _init_tables(self) -> None:
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS keyed (pk INTEGER PRIMARY KEY)")
            c.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            if not self.table.exists():
                self.table.create()  # sqlite3.Error without FTS5: the store has no keyword search
                c.execute("INSERT OR REPLACE INTO state VALUES ('dirty', '1')")  # fill it from the collection

    def transaction(self):
        return transaction(self.conn)

    def stale(self, count: int) -> bool:
        row = self.conn.execute("SELECT value FROM state WHERE key = 'dirty'").fetchone()
        return (row is not None and row[0] == "1") or \
            self.conn.execute("SELECT COUNT(*) FROM keyed").fetchone()[0] != count

    def mark_dirty(self) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO state VALUES ('dirty', '1')")

    def write(self, delete: list[int], pks: list[int], metas: list[dict[str, Any]], clean: bool = True) -> None:
        """Drop the rows of ``delete``, then add ``pks`` with ``metas`` (in the caller's transaction)."""
        c = self.conn
        if delete:
            self.table.delete(delete)
            c.execute("DELETE FROM keyed WHERE pk IN (SELECT value FROM json_each(?))", (json.dumps(delete),))
        if pks:
            self.table.insert(pks, metas)
            c.executemany("INSERT INTO keyed(pk) VALUES (?)", [(p,) for p in pks])
        if clean:
            c.execute("INSERT OR REPLACE INTO state VALUES ('dirty', '0')")

    def clear(self) -> None:
        self.table.clear()
        self.conn.execute("DELETE FROM keyed")

    def close(self) -> None:
        self.conn.close()


@VECTOR_STORES.register("milvus")
class MilvusStore:
    """A Milvus collection behind the VectorStore protocol. See the module docstring."""

    def __init__(
        self,
        path: Path,
        dim: int,
        uri: str | None = None,
        collection: str | None = None,
        index_type: str | None = None,
        metric: str = "ip",
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int | None = None,
        ef_search: int | None = None,
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        token: str | None = None,
        db_name: str | None = None,
        timeout: float | None = None,
    ):
        if importlib.util.find_spec("pymilvus") is None:  # pragma: no cover - depends on the environment
            _client_class()  # its one-line error; importing pymilvus waits until the file is ours (~1 s)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {tuple(METRICS)}, got {metric!r}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self.path = Path(path)
        self.dim = int(dim)
        self.metric = metric
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self._read_marker()
        if uri is None:
            uri = marker.get("uri") if marker else None
        self.uri = str(uri) if uri is not None else str((self.path / LITE_FILE).resolve())
        if not _is_remote(self.uri):
            self.uri = str(Path(self.uri).expanduser().resolve())
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.collection = collection or (marker or {}).get("collection") or (
            "items" if self.uri == str((self.path / LITE_FILE).resolve()) else _collection_name(self.path)
        )
        self.index_type = (index_type or (marker or {}).get("index_type") or DEFAULT_INDEX).upper()
        if self.index_type == "AUTO":  # the CLI's --index-type default means "the backend's default"
            self.index_type = (marker or {}).get("index_type") or DEFAULT_INDEX
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self._index_params = dict(index_params or {})
        self._search_params = dict(search_params or {})
        self._timeout = timeout
        self._lock = threading.RLock()
        self._closed = False
        self._last_seq = 0
        token = token if token is not None else os.environ.get("MILVUS_TOKEN", "")
        kwargs: dict[str, Any] = {"uri": self.uri, "token": token}
        if db_name:
            kwargs["db_name"] = db_name
        self._lite = not _is_remote(self.uri)
        if self._lite:
            _claim_lite_file(self.uri)
        try:
            self._client = _client_class()(**kwargs)
        except IndexError_:
            if self._lite:
                _release_lite_file(self.uri)
            raise
        except Exception as e:
            if self._lite:
                _release_lite_file(self.uri)
            raise IndexError_(f"cannot connect to Milvus at {self.uri}: {e}") from None
        self._kw: _SideKeywords | None = None
        try:
            self._open_or_create()
            self._open_keywords()
        except BaseException:
            if self._kw is not None:
                self._kw.close()
            self._client.close()
            if self._lite:
                _release_lite_file(self.uri)
            raise
        if marker is None or marker.get("uri") != self.uri or marker.get("collection") != self.collection:
            self._write_marker()

    # ---------------------------------------------------------------- setup
    def _read_marker(self) -> dict[str, Any] | None:
        p = self.path / MARKER_NAME
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def _write_marker(self) -> None:
        data = {"uri": self.uri, "collection": self.collection, "dim": self.dim, "metric": self.metric,
                "index_type": self.index_type}
        tmp = self.path / (MARKER_NAME + ".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self.path / MARKER_NAME)

    def _build_index_params(self) -> dict[str, Any]:
        params = dict(self._index_params)
        if self.index_type.startswith("IVF") and self.nlist:
            params.setdefault("nlist", int(self.nlist))
        if self.index_type == "HNSW":
            params.setdefault("M", int(self.hnsw_m or 32))
            params.setdefault("efConstruction", 200)
        return params

    def _open_or_create(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self._client
        if c.has_collection(self.collection):
            desc = c.describe_collection(self.collection)
            fields = {f["name"]: f for f in desc.get("fields", [])}
            if not {"pk", "item_id", "seq", "vector", "metadata"} <= set(fields):
                raise MilvusStoreError(
                    f"Milvus collection {self.collection!r} at {self.uri} was not created by mmrag "
                    f"(fields: {sorted(fields)}); pass another collection name"
                )
            have = int(fields["vector"].get("params", {}).get("dim", -1))
            if have != self.dim:
                raise MilvusStoreError(
                    f"store {self.path} (Milvus collection {self.collection!r}) holds {have}-dimensional vectors, "
                    f"opened with dim={self.dim}; use the encoder the store was built with, or a new directory"
                )
            idx = self._describe_vector_index()
            if idx and idx.get("metric_type") and idx["metric_type"] != METRICS[self.metric]:
                raise MilvusStoreError(
                    f"store {self.path} uses metric {idx['metric_type']}, opened with metric={self.metric!r}"
                )
            if idx and idx.get("index_type"):
                self.index_type = str(idx["index_type"])
            c.load_collection(self.collection)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("item_id", DataType.VARCHAR, max_length=ITEM_ID_MAX)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("metadata", DataType.JSON)
        ip = c.prepare_index_params()
        ip.add_index("vector", index_type=self.index_type, metric_type=METRICS[self.metric],
                     params=self._build_index_params())
        try:
            c.create_collection(self.collection, schema=schema, index_params=ip, consistency_level="Strong")
        except Exception as e:
            raise MilvusStoreError(
                f"cannot create Milvus collection {self.collection!r} at {self.uri} with index {self.index_type}: {e}"
            ) from None

    def _open_keywords(self) -> None:
        try:
            self._kw = _SideKeywords(self.path / KEYWORD_FILE)
        except sqlite3.Error:
            self._kw = None  # no FTS5 (or an unwritable directory): no keyword search
        self.supports_keyword = self._kw is not None
        if self._kw is not None and self._kw.stale(self.count()):
            self._rebuild_keywords()

    def _rebuild_keywords(self) -> None:
        """Refill the side index from the collection's metadata, in one pass and one transaction."""
        assert self._kw is not None
        with self._kw.transaction():
            self._kw.clear()
            it = self._client.query_iterator(self.collection, batch_size=MAX_TOPK // 2, filter="",
                                             output_fields=["pk", "metadata"], timeout=self._timeout)
            try:
                while page := it.next():
                    self._kw.write([], [int(r["pk"]) for r in page], [r.get("metadata") or {} for r in page],
                                   clean=False)
            finally:
                it.close()
            self._kw.write([], [], [])

    def _describe_vector_index(self) -> dict[str, Any]:
        try:
            names = self._client.list_indexes(self.collection, field_name="vector")
            return self._client.describe_index(self.collection, names[0]) if names else {}
        except Exception:
            return {}

    # ---------------------------------------------------------------- validation
    def _check_open(self) -> None:
        if self._closed:
            raise IndexError_(f"store {self.path} is closed")

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> list[str]:
        return check_ids(ids, each=_check_id_bytes)

    def _next_seqs(self, n: int) -> np.ndarray:
        # Insertion order that survives reopening: nanoseconds since the epoch, strictly increasing.
        start = max(time.time_ns(), self._last_seq + 1)
        self._last_seq = start + n - 1
        return np.arange(start, start + n, dtype=np.int64)

    def _rows_by_pk(self, pks: Sequence[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        pks = list(pks)
        for a in range(0, len(pks), READ_CHUNK):
            chunk = pks[a : a + READ_CHUNK]
            rows = self._client.query(self.collection, filter=f"pk in [{','.join(map(str, chunk))}]",
                                      output_fields=["pk", *fields], limit=len(chunk), timeout=self._timeout)
            for r in rows:
                out[int(r["pk"])] = r
        return out

    # ---------------------------------------------------------------- protocol
    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> int:
        ids = self._check_ids(ids)
        x = as_matrix(vectors, self.dim, "vectors")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids but {len(x)} vectors")
        # JSON round trip: what Milvus stores is exactly what get() returns
        metas: list[dict[str, Any]] = [json.loads(m) for m in metadata_json(metadata, len(ids))]
        if not ids:
            return 0
        last = {i: n for n, i in enumerate(ids)}  # a repeated id in one batch: the last one wins
        keep = sorted(last.values())
        with self._lock:
            self._check_open()
            seqs = self._next_seqs(len(keep))
            rows = [
                {"pk": _pk(ids[n]), "item_id": ids[n], "seq": int(s), "vector": x[n], "metadata": metas[n]}
                for n, s in zip(keep, seqs)
            ]
            if self._kw is not None:
                self._kw.mark_dirty()
            for a in range(0, len(rows), WRITE_CHUNK):
                self._client.upsert(self.collection, rows[a : a + WRITE_CHUNK], timeout=self._timeout)
            if self._kw is not None:
                pks = [r["pk"] for r in rows]
                with self._kw.transaction():
                    self._kw.write(pks, pks, [r["metadata"] for r in rows])
        return len(keep)

    def delete(self, ids: Sequence[str]) -> int:
        ids = self._check_ids(ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            pks = list(dict.fromkeys(_pk(i) for i in ids))
            existing = list(self._rows_by_pk(pks, []))
            if existing and self._kw is not None:
                self._kw.mark_dirty()
            for a in range(0, len(existing), READ_CHUNK):
                self._client.delete(self.collection, ids=existing[a : a + READ_CHUNK], timeout=self._timeout)
            if existing and self._kw is not None:
                with self._kw.transaction():
                    self._kw.write(existing, [], [])
            return len(existing)

    def _search_param_dict(self) -> dict[str, Any]:
        params = dict(self._search_params)
        if self.index_type.startswith("IVF"):
            params.setdefault("nprobe", int(self.nprobe or 16))
        if self.index_type == "HNSW":
            params.setdefault("ef", int(self.ef_search or 128))
        return {"metric_type": METRICS[self.metric], "params": params}

    def _raw_search(self, q: np.ndarray, limit: int, expr: str) -> list[list[tuple[float, str, dict]]]:
        res = self._client.search(
            self.collection, data=[row for row in q], anns_field="vector", limit=int(limit), filter=expr,
            output_fields=["item_id", "metadata"], search_params=self._search_param_dict(), timeout=self._timeout,
        )
        sign = -1.0 if self.metric == "l2" else 1.0
        out = []
        for hits in res:
            row = []
            for h in hits:
                ent = h["entity"]
                row.append((sign * float(h["distance"]), ent["item_id"], ent.get("metadata") or {}))
            row.sort(key=lambda t: -t[0])
            out.append(row)
        return out

    def search(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        q = as_matrix(vectors, self.dim, "query vectors")
        k = int(k)
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        if filter:
            check_filter(filter)
            if any(isinstance(v, (list, tuple, set, frozenset)) and not v for v in filter.values()):
                return [[] for _ in range(len(q))]  # "any of nothing" matches nothing
        with self._lock:
            self._check_open()
            if not filter:
                rows = self._raw_search(q, min(k, MAX_TOPK), "")
                return [[Hit(id=i, score=s, metadata=m) for s, i, m in row[:k]] for row in rows]
            expr = filter_expression(filter)
            out: list[list[Hit]] = [[] for _ in range(len(q))]
            todo = np.arange(len(q))
            limit = min(k, MAX_TOPK)
            while len(todo):
                rows = self._raw_search(q[todo], limit, expr)
                again = []
                for qi, row in zip(todo.tolist(), rows):
                    good = [Hit(id=i, score=s, metadata=m) for s, i, m in row if matches(m, filter)]
                    out[qi] = good[:k]
                    # a full page with too few exact matches: the server filter was a superset
                    if len(good) < k and len(row) >= limit and limit < MAX_TOPK:
                        again.append(qi)
                todo = np.asarray(again, np.int64)
                limit = min(limit * 4, MAX_TOPK)
            return out

    supports_keyword = False  # set per store on open: True where the side index has FTS5

    def keyword_search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        if self._kw is None:
            raise IndexError_(f"store {self.path}: this SQLite has no FTS5, so no keyword search")
        k = int(k)
        if filter:
            check_filter(filter)
            if any(isinstance(v, (list, tuple, set, frozenset)) and not v for v in filter.values()):
                return []
        with self._lock:
            self._check_open()
            limit = k
            while True:
                found = self._kw.table.search(str(query), limit)
                rows = self._rows_by_pk([p for p, _ in found], ["item_id", "metadata"])
                hits = [Hit(id=rows[p]["item_id"], score=s, metadata=dict(rows[p].get("metadata") or {}))
                        for p, s in found if p in rows]
                if filter:
                    hits = [h for h in hits if matches(h.metadata, filter)]
                # a full page with too few survivors: fetch a larger one (filtered in Python)
                if len(hits) >= k or len(found) < limit:
                    return hits[:k]
                limit *= 4

    def has_keyword_text(self) -> bool:
        with self._lock:
            self._check_open()
            return self._kw is not None and self._kw.table.has_body()

    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        ids = self._check_ids(ids)
        with self._lock:
            self._check_open()
            rows = self._rows_by_pk(list(dict.fromkeys(_pk(i) for i in ids)), ["item_id", "metadata"])
        out: list[dict[str, Any] | None] = []
        for i in ids:
            r = rows.get(_pk(i))
            out.append(dict(r.get("metadata") or {}) if r is not None and r["item_id"] == i else None)
        return out

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = self._check_ids(ids)
        with self._lock:
            self._check_open()
            rows = self._rows_by_pk(list(dict.fromkeys(_pk(i) for i in ids)), ["item_id", "vector"])
        missing = [i for i in ids if _pk(i) not in rows or rows[_pk(i)]["item_id"] != i]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the store, e.g. {missing[0]!r}")
        if not ids:
            return np.empty((0, self.dim), np.float32)
        return np.asarray([rows[_pk(i)]["vector"] for i in ids], dtype=np.float32)

    def ids(self) -> list[str]:
        with self._lock:
            self._check_open()
            it = self._client.query_iterator(self.collection, batch_size=MAX_TOPK // 2, filter="",
                                             output_fields=["item_id", "seq"], timeout=self._timeout)
            got: list[tuple[int, str]] = []
            try:
                while True:
                    page = it.next()
                    if not page:
                        break
                    got.extend((int(r["seq"]), r["item_id"]) for r in page)
            finally:
                it.close()
        got.sort()
        return [i for _, i in got]

    def count(self) -> int:
        with self._lock:
            self._check_open()
            res = self._client.query(self.collection, filter="", output_fields=["count(*)"], timeout=self._timeout)
            return int(res[0]["count(*)"]) if res else 0

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: str) -> bool:
        if not isinstance(id, str) or not id:
            return False
        return self.get([id])[0] is not None

    def save(self) -> None:
        """Seal the growing segments (Milvus makes every write durable when it returns; a flush
        turns them into indexed segments, so it is worth doing after a bulk load)."""
        with self._lock:
            self._check_open()
            self._client.flush(self.collection, timeout=self._timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._client.flush(self.collection, timeout=self._timeout)
            except Exception:
                pass  # writes are durable already; a failed flush only delays sealing
            finally:
                self._client.close()
                if self._kw is not None:
                    self._kw.close()
                if self._lite:
                    _release_lite_file(self.uri)

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        idx = self._describe_vector_index()
        return {
            "backend": "milvus",
            "path": str(self.path),
            "uri": self.uri,
            "mode": "server" if _is_remote(self.uri) else "lite",
            "collection": self.collection,
            "count": self.count(),
            "dim": self.dim,
            "metric": self.metric,
            "index_type": idx.get("index_type", self.index_type),
            "index": {k: v for k, v in idx.items() if k not in ("field_name", "index_name")},
            "search_params": self._search_param_dict(),
        }
