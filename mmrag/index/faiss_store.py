"""The embedded vector store: SQLite is the source of truth, a FAISS index is a derived cache.

A store is a directory::

    store.db          SQLite (WAL, synchronous=FULL): per string id an int64 row id, the
                      float32 vector (blob) and the metadata (JSON text); plus a ``meta`` table
                      (dim, metric, a random store uuid and a *generation* counter that every
                      committed add/delete bumps in the same transaction).
    index.json        the cache marker: which index file is current and which SQLite state
                      (generation, row count) it reflects.
    index-<gen>-<rand>.faiss
                      the FAISS index, keyed by the SQLite row ids.

Crash safety. ``add``/``delete`` are one SQLite transaction each and are durable when they
return; the in-memory FAISS index is updated after the commit. ``save()`` writes the index to a
*new* file (fsync), then atomically replaces ``index.json`` (temp file + fsync + ``os.replace``
+ directory fsync) -- that rename is the single commit point -- and only then deletes the old
index file. A ``kill -9`` at any moment therefore leaves either the old or the new marker, each
pointing at a complete file. On open the cache is loaded and, when it is missing, unreadable or
stale (its generation is not the database's, e.g. killed after a commit but before a save), it
is reconciled with SQLite by set difference of row ids: rows the index lacks are added, rows
SQLite no longer has are removed. Re-adding an id gives it a fresh row id (AUTOINCREMENT), so
replacements reconcile the same way. Nothing in the index is ever trusted over SQLite.

Index types (``index_type``):

* ``"flat"``  exact inner-product search (``IndexIDMap(IndexFlatIP)``); deletes by ``remove_ids``.
* ``"ivf"``   ``IndexIVFFlat`` with the row ids stored in the inverted lists; ``nlist`` defaults
  to ``4*sqrt(n)`` rounded to a power of two (at most n/32; 4096 at 1M), ``nprobe`` so that a query scans ~16k codes
  (64 lists at 1M, 128 at 100k; at least 16, at most nlist/4); deletes by ``remove_ids``. Below :data:`MIN_IVF_TRAIN` vectors there is
  nothing to train on and the store stays flat. With an automatic ``nlist`` the quantizer is
  retrained at save/open once the store has grown (or shrunk) 4x since training.
* ``"ivf_sq8"`` the same with 8-bit scalar-quantised codes (``IndexIVFScalarQuantizer``,
  QT_8bit: 384 B/vector instead of 1536), fetching ``2*k`` candidates and re-ranking them with
  their exact float32 vectors read from SQLite, so scores are exact and RAM holds one compact
  copy. IVF-Flat scanning is memory-bandwidth bound: at 1M x 384 on 2 cores it needs ~10 ms for
  recall 0.95, IVF-SQ8 + re-rank ~1 ms (see ``benchmarks/bench_search.py``).
* ``"hnsw"``  ``IndexIDMap(IndexHNSWFlat)`` (``hnsw_m`` default 32, ``ef_search`` default 128).
  HNSW cannot remove vectors: deletes are tombstones excluded with an ``IDSelectorNot`` at
  search time, and the graph is rebuilt at save once a fifth of it is dead. Builds are slow
  (1M x 384 takes many minutes on 2 cores), which is why ``auto`` does not pick it.
* ``"auto"`` (default) flat below ``flat_threshold`` (50,000) vectors, ivf_sq8 above; re-chosen at
  ``save()`` and on open (with hysteresis: an ivf store goes back to flat below half the
  threshold).

Filters: ``{"key": value}`` or ``{"key": [v1, v2]}`` (any of), several keys AND-ed, matched by
JSON type and value (``1`` does not match ``"1"`` or ``true``). SQLite (``json_extract``) gives
the matching row ids (an expression index per filtered key is created on first use). A broad
filter (matching >= 1/64 of the store) over-fetches unfiltered hits and keeps the matching ones;
otherwise, or when too few survive, the index is searched with an ``IDSelectorBatch`` of them (exact for flat; IVF probes up to 8x more lists
for selective filters, since non-matching codes are skipped cheaply), small candidate sets
(<= :data:`EXACT_SUBSET_MAX`) are scored exactly with numpy, and a query
whose ANN search found fewer than ``k`` hits while enough rows match falls back to an exact
search over the matching subset -- so a selective filter still returns ``k`` hits.

One process owns a store at a time (single writer); ``ef_search``/``nprobe`` may change on any
open, build parameters (``index_type``, ``nlist``, ``hnsw_m``) trigger a rebuild when they
differ from the cached index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import faiss
import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.base import VECTOR_STORES, Hit

DB_NAME = "store.db"
MARKER_NAME = "index.json"
FORMAT_VERSION = 1

AUTO_FLAT_MAX = 50_000  # auto: exact search below this many vectors
MIN_IVF_TRAIN = 1_000  # fewer vectors than this: an "ivf" store stays flat
IVF_SCAN_BUDGET = 16_384  # automatic nprobe: probe ~this many codes per query (>= 16, <= nlist/4 lists)
DEFAULT_HNSW_M = 32
DEFAULT_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 40
HNSW_DEAD_REBUILD = 0.2  # rebuild an HNSW graph at save once this fraction is tombstoned
EXACT_SUBSET_MAX = 2_000  # filtered ANN search: score up to this many candidates exactly
OVERFETCH_MIN_FRACTION = 1 / 64  # filters matching at least this share: over-fetch, then filter
OVERFETCH_MAX = 2048
FILTER_NPROBE_BOOST = 8  # filtered IVF search: nprobe * min(8, 1/selectivity)
TRAIN_POINTS_PER_LIST = 32
TRAIN_NITER = 12  # k-means iterations (faiss default 25; 12 halves 1M-scale training, same recall)
CHUNK = 50_000
REFINE_FACTOR = 2  # ivf_sq8: fetch k*2 candidates and re-rank them exactly from SQLite
AUTO_ANN = "ivf_sq8"  # what auto picks above flat_threshold (measured: benchmarks/bench_search.py)
INDEX_TYPES = ("auto", "flat", "ivf", "ivf_sq8", "hnsw")
IVF_KINDS = ("ivf", "ivf_sq8")
KINDS = ("flat", "ivf", "ivf_sq8", "hnsw")
METRICS = ("ip", "l2")


SMALL_BATCH = 8  # searches of fewer queries run on one OpenMP thread


@contextmanager
def _one_thread_if(small: bool):
    """faiss parallelises a search over its queries: for 1-query searches the extra OpenMP
    threads only add fork/join cost, and on a loaded machine a descheduled worker turns a
    1.4 ms search into 50 ms (measured on 2 cores). The setting is per calling thread."""
    prev = faiss.omp_get_max_threads()
    if not small or prev <= 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


class StoreMismatchError(IndexError_, ValueError):
    """The store on disk was created with another dimension or metric."""


def _json_list(values) -> str:
    return json.dumps([v if isinstance(v, str) else int(v) for v in values])


def _auto_nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(n, 1)))))
    return int(max(1, min(nlist, 65536, n // TRAIN_POINTS_PER_LIST)))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _key_expr(key: Any) -> str:
    """The SQL expression for metadata ``key``; written literally so an expression index applies."""
    if not isinstance(key, str) or not key or any(c in key for c in "\"\\\x00"):
        raise ValueError(f"filter keys must be non-empty strings without double quotes or backslashes, got {key!r}")
    path = "$.\"" + key + "\""
    return "json_extract(metadata, '" + path.replace("'", "''") + "')"


def _filter_sql(filter: dict[str, Any], coarse: bool = False) -> tuple[str, list[Any]]:
    """``{"key": value | [values]}`` -> a WHERE clause over ``items.metadata`` and its params.
    ``coarse``: values only, no JSON type checks -- answered from the expression indexes alone
    (a superset, used to estimate how selective a filter is)."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filter.items():
        ex = _key_expr(key)
        ty = ex.replace("json_extract(", "json_type(", 1)
        if coarse:
            ty = None
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        alts: list[str] = []
        for v in values:
            if v is None:
                alts.append(f"({ex} IS NULL AND {ty} = 'null')" if ty else f"{ex} IS NULL")
            elif isinstance(v, (bool, np.bool_)):
                alts.append(f"({ex} = ? AND {ty} = ?)" if ty else f"{ex} = ?")
                params += [int(bool(v)), "true" if v else "false"] if ty else [int(bool(v))]
            elif isinstance(v, (int, float, np.integer, np.floating)):
                alts.append(f"({ex} = ? AND {ty} IN ('integer', 'real'))" if ty else f"{ex} = ?")
                params.append(v.item() if isinstance(v, np.generic) else v)
            elif isinstance(v, str):
                alts.append(f"({ex} = ? AND {ty} = 'text')" if ty else f"{ex} = ?")
                params.append(v)
            else:
                raise ValueError(
                    f"filter value for {key!r} must be a str, number, bool, None or a list of them; got {type(v).__name__}"
                )
        clauses.append("(" + " OR ".join(alts) + ")" if alts else "0")
    return (" AND ".join(clauses) if clauses else "1"), params


@VECTOR_STORES.register("faiss")
class FaissStore:
    """FAISS + SQLite vector store in a directory. See the module docstring for the design."""

    def __init__(
        self,
        path: Path,
        dim: int,
        index_type: str = "auto",
        metric: str = "ip",
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int | None = None,
        ef_search: int | None = None,
        flat_threshold: int = AUTO_FLAT_MAX,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self.path = Path(path)
        self.dim = int(dim)
        self.index_type = index_type
        self.metric = metric
        self.nlist = nlist
        self.nprobe = nprobe  # None: automatic, see _nprobe()
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search or DEFAULT_EF_SEARCH
        self.flat_threshold = int(flat_threshold)
        self._lock = threading.RLock()
        self._closed = False
        self._index: faiss.Index | None = None
        self._kind = "flat"
        self._trained_n = 0
        self._dead = np.empty(0, np.int64)  # hnsw tombstones (row ids still in the graph)
        self._dead_sel: tuple | None = None
        self._stale = False  # in-memory index may disagree with SQLite (an error after commit)
        self._saved_gen = -1
        self._indexed_keys: set[str] = set()

        self.path.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(self.path / DB_NAME), isolation_level=None, check_same_thread=False
        )
        try:
            self._init_db()
            self._load_or_build()
        except BaseException:
            self._conn.close()
            raise

    # ---------------------------------------------------------------- SQLite
    def _init_db(self) -> None:
        c = self._conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA busy_timeout=10000")
        c.execute("PRAGMA cache_size=-65536")  # 64 MiB of hot pages (re-rank and metadata reads)
        c.execute("BEGIN IMMEDIATE")
        try:
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
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        if int(meta["dim"]) != self.dim:
            raise StoreMismatchError(
                f"store {self.path} holds {meta['dim']}-dimensional vectors, opened with dim={self.dim}; "
                "use the encoder the store was built with, or a new directory"
            )
        if meta["metric"] != self.metric:
            raise StoreMismatchError(
                f"store {self.path} uses metric {meta['metric']!r}, opened with metric={self.metric!r}"
            )
        self._uuid = meta["uuid"]
        self._gen = int(meta["generation"])
        self._count = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def _bump_generation(self) -> None:
        self._gen += 1
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(self._gen),))

    def _db_rids(self) -> np.ndarray:
        cur = self._conn.execute("SELECT rid FROM items ORDER BY rid")
        out = np.fromiter((r[0] for r in cur), dtype=np.int64)
        return out

    def _decode(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.empty((0, self.dim), np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), self.dim).astype(np.float32, copy=False)

    def _vectors_by_rid(self, rids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row ids found, their vectors), in ascending row-id order."""
        got_r: list[int] = []
        blobs: list[bytes] = []
        rids = np.asarray(rids, np.int64)
        for a in range(0, len(rids), CHUNK):
            cur = self._conn.execute(
                "SELECT rid, vector FROM items WHERE rid IN (SELECT value FROM json_each(?)) ORDER BY rid",
                (_json_list(rids[a : a + CHUNK].tolist()),),
            )
            for r, b in cur:
                got_r.append(r)
                blobs.append(b)
        return np.asarray(got_r, np.int64), self._decode(blobs)

    def _iter_db(self, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        cur = self._conn.execute("SELECT rid, vector FROM items ORDER BY rid")
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield np.fromiter((r[0] for r in rows), np.int64, len(rows)), self._decode([r[1] for r in rows])

    # ---------------------------------------------------------------- FAISS index
    def _faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def _desired_kind(self, n: int) -> str:
        t = self.index_type
        if t == "auto":
            if self._kind == AUTO_ANN and n >= self.flat_threshold // 2:
                return AUTO_ANN
            return AUTO_ANN if n >= self.flat_threshold else "flat"
        if t in IVF_KINDS:
            return t if n >= MIN_IVF_TRAIN else "flat"
        return t

    def _new_flat(self) -> faiss.Index:
        base = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        return faiss.IndexIDMap(base)

    def _new_hnsw(self) -> faiss.Index:
        h = faiss.IndexHNSWFlat(self.dim, self.hnsw_m or DEFAULT_HNSW_M, self._faiss_metric())
        h.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap(h)

    def _index_nlist(self) -> int | None:
        if self._kind not in IVF_KINDS or self._index is None:
            return None
        return faiss.extract_index_ivf(self._index).nlist

    def _index_hnsw_m(self) -> int | None:
        if self._kind != "hnsw" or self._index is None:
            return None
        h = faiss.downcast_index(faiss.downcast_index(self._index).index)
        return int(h.hnsw.nb_neighbors(1))

    def _index_rids(self) -> np.ndarray:
        """Every row id the index holds (tombstoned ones included), sorted."""
        idx = self._index
        if idx is None or idx.ntotal == 0:
            return np.empty(0, np.int64)
        if self._kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(idx)
            inv = ivf.invlists
            parts = []
            for lst in range(ivf.nlist):
                size = inv.list_size(lst)
                if size:
                    parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
            out = np.concatenate(parts) if parts else np.empty(0, np.int64)
        else:
            out = faiss.vector_to_array(faiss.downcast_index(idx).id_map).astype(np.int64)
        return np.sort(out)

    def _flat_view(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(row ids, vectors) viewed in place from an in-sync flat index, or None."""
        if self._kind != "flat" or self._index is None or self._stale or self._index.ntotal != self._count:
            return None
        idmap = faiss.downcast_index(self._index)
        flat = faiss.downcast_index(idmap.index)
        n = flat.ntotal
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        x = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        return faiss.vector_to_array(idmap.id_map).astype(np.int64), x

    def _build(self, kind: str) -> None:
        """(Re)build the index of ``kind`` from the in-memory flat index or from SQLite."""
        n = self._count
        view = self._flat_view()

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            if view is not None:
                r, x = view
                for a in range(0, len(r), CHUNK):
                    yield r[a : a + CHUNK], x[a : a + CHUNK]
            else:
                yield from self._iter_db()

        if kind in IVF_KINDS:
            nlist = int(self.nlist or _auto_nlist(n))
            nlist = max(1, min(nlist, n))
            quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self._faiss_metric())
            else:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, self._faiss_metric()
                )
            n_train = min(n, nlist * TRAIN_POINTS_PER_LIST)
            rng = np.random.default_rng(0)
            if view is not None:
                pos = np.sort(rng.choice(n, size=n_train, replace=False))
                sample = np.ascontiguousarray(view[1][pos])
            else:
                all_r = self._db_rids()
                _, sample = self._vectors_by_rid(np.sort(rng.choice(all_r, size=n_train, replace=False)))
            index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST + 1
            index.cp.niter = TRAIN_NITER
            index.cp.min_points_per_centroid = 16  # we sample >= 32 per list when we can
            index.train(sample)
            del sample
            self._trained_n = n
        elif kind == "hnsw":
            index = self._new_hnsw()
        else:
            index = self._new_flat()
        for r, x in chunks():
            index.add_with_ids(np.ascontiguousarray(x), r)
        del view
        self._index = index
        self._kind = kind
        self._dead = np.empty(0, np.int64)
        self._dead_sel = None
        self._stale = False

    def _needs_rebuild(self) -> str | None:
        """The kind to rebuild into at save/open, or None to keep the current index."""
        n = self._count
        kind = self._desired_kind(n)
        if self._index is None or kind != self._kind:
            return kind
        if kind in IVF_KINDS:
            if self.nlist is not None:
                if self._index_nlist() != min(self.nlist, max(n, 1)):
                    return kind
            elif self._trained_n and (n > 4 * self._trained_n or 4 * n < self._trained_n):
                return kind
        if kind == "hnsw":
            if self.hnsw_m is not None and self._index_hnsw_m() != self.hnsw_m:
                return kind
            if len(self._dead) > HNSW_DEAD_REBUILD * max(self._index.ntotal, 1):
                return kind
        return None

    def _remove_from_index(self, rids: np.ndarray) -> None:
        rids = np.asarray(rids, np.int64)
        if not len(rids) or self._index is None:
            return
        if self._kind == "hnsw":
            self._dead = np.union1d(self._dead, rids)
            self._dead_sel = None
        else:
            self._index.remove_ids(rids)

    def _reconcile(self) -> bool:
        """Make the index hold exactly SQLite's row ids. Returns whether anything changed."""
        db = self._db_rids()
        have = self._index_rids()
        if len(np.unique(have)) != len(have):  # should not happen; do not try to be clever
            self._build(self._kind)
            return True
        stale = np.setdiff1d(have, db, assume_unique=True)
        missing = np.setdiff1d(db, have, assume_unique=True)
        if self._kind == "hnsw":
            self._dead = stale
            self._dead_sel = None
        elif len(stale):
            self._index.remove_ids(stale)
        for a in range(0, len(missing), CHUNK):
            r, x = self._vectors_by_rid(missing[a : a + CHUNK])
            if not self._index.is_trained:
                break
            self._index.add_with_ids(x, r)
        self._stale = False
        return bool(len(stale) or len(missing))

    # ---------------------------------------------------------------- cache files
    def _read_marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads((self.path / MARKER_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("format") != FORMAT_VERSION:
            return None
        if marker.get("uuid") != self._uuid or marker.get("dim") != self.dim or marker.get("metric") != self.metric:
            return None
        return marker

    def _load_or_build(self) -> None:
        marker = self._read_marker()
        loaded = False
        if marker is not None and marker.get("kind") in KINDS:
            try:
                index = faiss.read_index(str(self.path / marker["file"]))
                if index.d != self.dim:
                    raise ValueError("dimension mismatch")
                self._index, self._kind = index, marker["kind"]
                self._trained_n = int(marker.get("trained_n", 0))
                self._saved_gen = int(marker.get("generation", -1))
                loaded = True
            except Exception:  # unreadable / truncated / missing file: rebuild from SQLite
                self._index = None
        changed = False
        if not loaded:
            self._saved_gen = -1
            self._build(self._desired_kind(self._count))
            changed = True
        elif not (
            marker.get("generation") == self._gen
            and marker.get("count") == self._count
            and marker.get("dead", 0) == 0
            and self._index.ntotal == self._count
        ):
            changed = self._reconcile()
        kind = self._needs_rebuild()
        if kind is not None:
            self._build(kind)
            changed = True
        if changed or self._saved_gen != self._gen:
            self._write_cache()
        self._cleanup_files()

    def _write_cache(self) -> None:
        name = f"index-{self._gen:012d}-{uuid.uuid4().hex[:8]}.faiss"
        tmp = self.path / (name + ".tmp")
        faiss.write_index(self._index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)
        marker = {
            "format": FORMAT_VERSION,
            "uuid": self._uuid,
            "file": name,
            "kind": self._kind,
            "dim": self.dim,
            "metric": self.metric,
            "generation": self._gen,
            "count": self._count,
            "dead": int(len(self._dead)),
            "trained_n": self._trained_n,
            "nlist": self._index_nlist(),
        }
        mtmp = self.path / (MARKER_NAME + ".tmp")
        with open(mtmp, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path)  # the new index file's name is durable before the marker names it
        os.replace(mtmp, self.path / MARKER_NAME)  # the commit point
        _fsync_dir(self.path)
        self._saved_gen = self._gen
        self._cleanup_files(keep=name)

    def _cleanup_files(self, keep: str | None = None) -> None:
        if keep is None:
            marker = self._read_marker()
            keep = marker["file"] if marker else None
        for p in self.path.iterdir():
            if p.name == keep:
                continue
            if (p.name.startswith("index-") and (p.suffix in (".faiss", ".tmp"))) or p.name == MARKER_NAME + ".tmp":
                try:
                    p.unlink()
                except OSError:
                    pass

    # ---------------------------------------------------------------- validation
    def _check_open(self) -> None:
        if self._closed:
            raise IndexError_(f"store {self.path} is closed")

    def _as_matrix(self, vectors: Any, what: str) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape (n, {self.dim}) for this {self.dim}-dimensional store, got {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return x

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            raise ValueError("ids must be a sequence of strings, not a single string")
        ids = list(ids)
        for i in ids:
            if not isinstance(i, str) or not i:
                raise ValueError(f"ids must be non-empty strings, got {i!r}")
        return ids

    # ---------------------------------------------------------------- protocol
    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> int:
        ids = self._check_ids(ids)
        x = self._as_matrix(vectors, "vectors")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids but {len(x)} vectors")
        if metadata is None:
            metas = ["{}"] * len(ids)
        else:
            metadata = list(metadata)
            if len(metadata) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(metadata)} metadata entries")
            metas = []
            for m in metadata:
                if m is None:
                    m = {}
                if not isinstance(m, dict):
                    raise ValueError(f"metadata entries must be dicts, got {type(m).__name__}")
                try:
                    metas.append(json.dumps(m, ensure_ascii=False, allow_nan=False))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"metadata is not JSON-serialisable: {e}") from None
        if not ids:
            return 0
        last = {i: n for n, i in enumerate(ids)}  # a repeated id in one batch: the last one wins
        if len(last) != len(ids):
            keep = sorted(last.values())
            ids = [ids[n] for n in keep]
            metas = [metas[n] for n in keep]
            x = x[keep]
        blobs = [row.tobytes() for row in x.astype("<f4", copy=False)]
        with self._lock:
            self._check_open()
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                old = [r for (r,) in c.execute(
                    "SELECT rid FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
                )]
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
                self._bump_generation()
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._count += len(ids) - len(old)
            try:  # SQLite is committed; the index is a cache -- if this fails, reconcile later
                self._remove_from_index(np.asarray(old, np.int64))
                if not self._index.is_trained:
                    self._stale = True
                else:
                    self._index.add_with_ids(x, new)
            except Exception:
                self._stale = True
                raise
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        ids = self._check_ids(ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                old = [r for (r,) in c.execute(
                    "SELECT rid FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
                )]
                if old:
                    c.execute("DELETE FROM items WHERE rid IN (SELECT value FROM json_each(?))", (json.dumps(old),))
                    self._bump_generation()
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._count -= len(old)
            try:
                self._remove_from_index(np.asarray(old, np.int64))
            except Exception:
                self._stale = True
                raise
            return len(old)

    def _nprobe(self, selectivity: float = 1.0) -> int:
        nlist = self._index_nlist() or 1
        if self.nprobe:
            nprobe = self.nprobe
        else:  # scan about IVF_SCAN_BUDGET codes per query: 64 of 4096 lists at 1M, 128 of 1024 at 100k
            want = IVF_SCAN_BUDGET * nlist / max(self._count, 1)
            nprobe = int(min(max(16, 2 ** round(math.log2(max(want, 1)))), max(16, nlist // 4)))
        if selectivity < 1.0:  # a selector skips non-matching codes cheaply: probe more lists
            nprobe *= min(FILTER_NPROBE_BOOST, math.ceil(1.0 / max(selectivity, 1e-9)))
        return int(min(nprobe, nlist))

    def _search_params(self, sel=None, selectivity: float = 1.0):
        if self._kind in IVF_KINDS:
            nprobe = self._nprobe(selectivity)
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None else faiss.SearchParametersIVF(nprobe=nprobe)
        if self._kind == "hnsw":
            if sel is None and len(self._dead):
                if self._dead_sel is None:
                    batch = faiss.IDSelectorBatch(self._dead)
                    self._dead_sel = (batch, faiss.IDSelectorNot(batch))
                sel = self._dead_sel[1]
            if sel is not None:
                return faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.ef_search))
            return faiss.SearchParametersHNSW(efSearch=int(self.ef_search))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _exact_subset(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``q`` over the row ids ``cand`` (vectors read from SQLite in chunks)."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_r = np.empty((len(q), 0), np.int64)
        for a in range(0, len(cand), CHUNK):
            r, x = self._vectors_by_rid(cand[a : a + CHUNK])
            if not len(r):
                continue
            s = q @ x.T
            if self.metric == "l2":
                s = 2 * s - (q * q).sum(1, keepdims=True) - (x * x).sum(1)[None, :]
            s = np.concatenate([best_s, s], axis=1)
            rr = np.concatenate([np.broadcast_to(best_r, (len(q), best_r.shape[1])), np.broadcast_to(r, (len(q), len(r)))], axis=1)
            kk = min(k, s.shape[1])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            best_s = np.take_along_axis(s, top, 1)
            best_r = np.take_along_axis(rr, top, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        scores = np.take_along_axis(best_s, order, 1)
        if self.metric == "l2":
            scores = -scores
        return scores, np.take_along_axis(best_r, order, 1)

    def search(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        q = self._as_matrix(vectors, "query vectors")
        k = int(k)
        with self._lock:
            self._check_open()
            if k <= 0 or self._count == 0 or len(q) == 0:
                return [[] for _ in range(len(q))]
            if self._stale:
                self._reconcile()
            refine = REFINE_FACTOR if self._kind == "ivf_sq8" else 1
            if filter:
                D, I, kk = self._search_filtered(q, k, filter, refine)
                if kk == 0:
                    return [[] for _ in range(len(q))]
            else:
                kk = min(k, self._count)
                with _one_thread_if(len(q) < SMALL_BATCH):
                    D, I = self._index.search(q, min(kk * refine, self._count), params=self._search_params())
            return self._hits(q, D, I, kk, exact=refine == 1)

    def _search_filtered(
        self, q: np.ndarray, k: int, filter: dict[str, Any], refine: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        where, params = _filter_sql(filter)
        self._index_metadata_keys(filter)
        cw, cp = _filter_sql(filter, coarse=True)  # index-only estimate (a superset)
        n_match = self._conn.execute(f"SELECT COUNT(*) FROM items WHERE {cw}", cp).fetchone()[0]
        if n_match == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64), 0
        kk = min(k, n_match)
        width = kk * refine
        D = np.full((len(q), width), np.nan, np.float32)
        I = np.full((len(q), width), -1, np.int64)
        todo = np.arange(len(q))
        frac = n_match / self._count
        if frac >= OVERFETCH_MIN_FRACTION:
            # broad filter: over-fetch unfiltered hits, keep the matching ones (SQL decides)
            kf = int(min(self._count, width * math.ceil(2.0 / frac), OVERFETCH_MAX))
            with _one_thread_if(len(q) < SMALL_BATCH):
                Do, Io = self._index.search(q, kf, params=self._search_params())
            got = np.unique(Io[Io >= 0])
            ok = np.fromiter((r for (r,) in self._conn.execute(
                f"SELECT rid FROM items WHERE rid IN (SELECT value FROM json_each(?)) AND {where}",
                [_json_list(got.tolist()), *params],
            )), np.int64)
            mask = np.isin(Io, ok) & (Io >= 0)
            enough = mask.sum(1) >= kk
            for row in np.nonzero(enough)[0]:
                pos = np.nonzero(mask[row])[0][:width]
                D[row, : len(pos)], I[row, : len(pos)] = Do[row, pos], Io[row, pos]
            todo = np.nonzero(~enough)[0]
        if not len(todo):
            return D, I, kk
        cand = np.fromiter(
            (r for (r,) in self._conn.execute(f"SELECT rid FROM items WHERE {where} ORDER BY rid", params)),
            np.int64,
        )
        if not len(cand):
            return D, I, 0 if len(todo) == len(q) else kk
        kk = min(kk, len(cand))
        qt = q[todo]
        if self._kind != "flat" and len(cand) <= EXACT_SUBSET_MAX:
            Ds, Is = self._exact_subset(qt, cand, kk)
            D[todo, :kk], I[todo, :kk] = Ds, Is
            return D, I, kk
        sel = faiss.IDSelectorBatch(cand)
        with _one_thread_if(len(qt) < SMALL_BATCH):
            Ds, Is = self._index.search(qt, min(width, len(cand)), params=self._search_params(sel, frac))
        D[todo, : Ds.shape[1]], I[todo, : Is.shape[1]] = Ds, Is
        short = todo[(Is >= 0).sum(1) < kk]
        if len(short):  # the ANN probe missed matches: exact over the matching subset
            Ds, Is = self._exact_subset(q[short], cand, kk)
            I[short] = -1
            D[short, :kk], I[short, :kk] = Ds, Is
        return D, I, kk

    def _hits(self, q: np.ndarray, D: np.ndarray, I: np.ndarray, k: int, exact: bool = True) -> list[list[Hit]]:
        """Hits with ids and metadata from SQLite. ``exact=False``: the index scores are
        approximate, so re-rank the candidates by their exact score (vectors from SQLite)."""
        rids = np.unique(I[I >= 0])
        rows: dict[int, tuple] = {}
        if len(rids):
            cols = "rid, id, metadata" if exact else "rid, id, metadata, vector"
            for row in self._conn.execute(
                f"SELECT {cols} FROM items WHERE rid IN (SELECT value FROM json_each(?))",
                (_json_list(rids.tolist()),),
            ):
                rows[row[0]] = row[1:]
        sign = -1.0 if self.metric == "l2" else 1.0
        out: list[list[Hit]] = []
        parsed: dict[int, dict] = {}
        for qv, d_row, i_row in zip(q, D, I):
            cand = [(d, r) for d, r in zip(d_row.tolist(), i_row.tolist()) if r >= 0 and r in rows]
            if not exact and cand:
                x = self._decode([rows[r][2] for _, r in cand])
                s = x @ qv if self.metric == "ip" else -((x - qv) ** 2).sum(1)
                order = np.argsort(-s, kind="stable")
                cand = [(sign * float(s[j]), cand[j][1]) for j in order]
            hits = []
            for d, r in cand[:k]:
                if r not in parsed:
                    parsed[r] = json.loads(rows[r][1])
                hits.append(Hit(id=rows[r][0], score=sign * d, metadata=dict(parsed[r])))
            out.append(hits)
        return out

    def _index_metadata_keys(self, filter: dict[str, Any]) -> None:
        """Create (once) an expression index per filtered metadata key, so filters stay fast."""
        for key in filter:
            if key in self._indexed_keys:
                continue
            name = "meta_" + hashlib.sha1(key.encode()).hexdigest()[:16]
            try:
                self._conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON items({_key_expr(key)})")
            except sqlite3.Error:
                pass  # e.g. a read-only file system: the filter still works, by a scan
            self._indexed_keys.add(key)

    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        ids = self._check_ids(ids)
        with self._lock:
            self._check_open()
            found = dict(self._conn.execute(
                "SELECT id, metadata FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            ).fetchall()) if ids else {}
        return [json.loads(found[i]) if i in found else None for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = self._check_ids(ids)
        with self._lock:
            self._check_open()
            found = dict(self._conn.execute(
                "SELECT id, vector FROM items WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            ).fetchall()) if ids else {}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the store, e.g. {missing[0]!r}")
        return self._decode([found[i] for i in ids]).copy()

    def ids(self) -> list[str]:
        with self._lock:
            self._check_open()
            return [i for (i,) in self._conn.execute("SELECT id FROM items ORDER BY rid")]

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return self._count

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: str) -> bool:
        if not isinstance(id, str):
            return False
        with self._lock:
            self._check_open()
            return self._conn.execute("SELECT 1 FROM items WHERE id = ?", (id,)).fetchone() is not None

    def save(self) -> None:
        """Re-choose the index type if the store crossed a threshold, then write the cache."""
        with self._lock:
            self._check_open()
            if self._stale:
                self._reconcile()
            kind = self._needs_rebuild()
            if kind is not None:
                self._build(kind)
            elif self._saved_gen == self._gen:
                return
            self._write_cache()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.save()
            finally:
                self._closed = True
                self._index = None
                self._conn.close()

    def __enter__(self) -> "FaissStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            files = {p.name: p.stat().st_size for p in self.path.iterdir() if p.is_file()}
            marker = self._read_marker()
            return {
                "backend": "faiss",
                "path": str(self.path),
                "count": self._count,
                "dim": self.dim,
                "metric": self.metric,
                "index_type": self._kind,
                "requested_index_type": self.index_type,
                "index_ntotal": int(self._index.ntotal) if self._index is not None else 0,
                "tombstones": int(len(self._dead)),
                "nlist": self._index_nlist(),
                "nprobe": self._nprobe() if self._kind in IVF_KINDS else None,
                "hnsw_m": self._index_hnsw_m(),
                "ef_search": self.ef_search if self._kind == "hnsw" else None,
                "generation": self._gen,
                "cache_generation": self._saved_gen,
                "bytes_on_disk": sum(files.values()),
                "index_bytes": files.get(marker["file"], 0) if marker else 0,
                "db_bytes": sum(v for n, v in files.items() if n.startswith(DB_NAME)),
            }
