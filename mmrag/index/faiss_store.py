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

:class:`FaissStore` composes the parts, one module each: :mod:`mmrag.index.sqlite_meta` (the
SQLite table and its transactions), :mod:`mmrag.index.faiss_ann` (index type choice, training,
search parameters), :mod:`mmrag.index.faiss_cache` (the crash-safe cache files),
:mod:`mmrag.index.filters` (filter validation and translation to SQL) and
:mod:`mmrag.index.validation` (argument checks shared with the other backends).

Crash safety. ``add``/``delete`` are one SQLite transaction each and are durable when they
return; the in-memory FAISS index is updated after the commit. ``save()`` writes the index to a
*new* file (fsync), then atomically replaces ``index.json`` (temp file + fsync + ``os.replace``
+ directory fsync) -- that rename is the single commit point -- and only then deletes the old
index file. A ``kill -9`` at any moment therefore leaves either the old or the new marker, each
pointing at a complete file. On open the cache is loaded and, when it is missing, unreadable or
stale (its generation is not the database's, e.g. killed after a commit but before a save), it
is reconciled with SQLite by set difference of row ids: rows the index lacks are added, rows
SQLite no longer has are removed. Re-adding an id gives it a fresh row id (AUTOINCREMENT), so
replacements reconcile the same way. Nothing in the index is ever trusted over SQLite. A store
kept open while another process writes (a server over an index that ``mmrag index`` is adding
to) reconciles the same way at its next search or count: SQLite's ``PRAGMA data_version`` says
when another connection committed.

Index types (``index_type``: ``auto`` (default: flat below ``flat_threshold`` = 50,000 vectors,
ivf_sq8 above), ``flat``, ``ivf``, ``ivf_sq8``, ``hnsw``): see :mod:`mmrag.index.faiss_ann`.

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

import json
import math
import os  # noqa: F401  (tests patch faiss_store.os.replace to simulate a kill mid-save)
import threading
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.base import VECTOR_STORES, Hit
from mmrag.index.faiss_ann import (  # noqa: F401  (re-exported: the store's tunables)
    AUTO_ANN,
    AUTO_FLAT_MAX,
    DEFAULT_EF_SEARCH,
    DEFAULT_HNSW_M,
    FILTER_NPROBE_BOOST,
    HNSW_DEAD_REBUILD,
    HNSW_EF_CONSTRUCTION,
    INDEX_TYPES,
    IVF_KINDS,
    IVF_SCAN_BUDGET,
    KINDS,
    METRICS,
    MIN_IVF_TRAIN,
    REFINE_FACTOR,
    SMALL_BATCH,
    TRAIN_NITER,
    TRAIN_POINTS_PER_LIST,
    AnnIndex,
    exact_subset,
)
from mmrag.index.faiss_cache import MARKER_NAME, cleanup_files, load_index, read_marker, write_cache
from mmrag.index.filters import filter_sql
from mmrag.index.sqlite_meta import CHUNK, DB_NAME, FORMAT_VERSION, SqliteMeta, StoreMismatchError  # noqa: F401
from mmrag.index.validation import as_matrix, check_ids, metadata_json

__all__ = ["FaissStore", "StoreMismatchError", "DB_NAME", "MARKER_NAME", "FORMAT_VERSION", "INDEX_TYPES"]

EXACT_SUBSET_MAX = 2_000  # filtered ANN search: score up to this many candidates exactly
OVERFETCH_MIN_FRACTION = 1 / 64  # filters matching at least this share: over-fetch, then filter
OVERFETCH_MAX = 2048


def _ann_option(name: str) -> property:
    """A store attribute kept on its :class:`AnnIndex` (so changing it on the store applies)."""
    return property(lambda self: getattr(self._ann, name), lambda self, v: setattr(self._ann, name, v))


@VECTOR_STORES.register("faiss")
class FaissStore:
    """FAISS + SQLite vector store in a directory. See the module docstring for the design."""

    index_type = _ann_option("index_type")
    nlist = _ann_option("nlist")
    nprobe = _ann_option("nprobe")  # None: automatic, see AnnIndex.nprobe_for()
    hnsw_m = _ann_option("hnsw_m")
    ef_search = _ann_option("ef_search")
    flat_threshold = _ann_option("flat_threshold")

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
        self.metric = metric
        self._ann = AnnIndex(self.dim, metric, index_type, nlist, nprobe, hnsw_m, ef_search, flat_threshold)
        self._lock = threading.RLock()
        self._closed = False
        self._stale = False  # in-memory index may disagree with SQLite (an error after commit)
        self._saved_gen = -1

        self.path.mkdir(parents=True, exist_ok=True)
        self._db = SqliteMeta(self.path, self.dim, self.metric)
        self.supports_keyword = self._db.has_fts  # FTS5 in store.db (see SqliteMeta)
        try:
            self._load_or_build()
        except BaseException:
            self._db.close()
            raise

    @property
    def _conn(self):
        """The SQLite connection (tests close it to abandon a store without saving)."""
        return self._db.conn

    # ---------------------------------------------------------------- index vs. SQLite
    def _build(self, kind: str) -> None:
        """(Re)build the index of ``kind`` from the in-memory flat index or from SQLite."""
        self._ann.build(kind, self._db, in_sync=not self._stale)
        self._stale = False

    def _reconcile(self) -> bool:
        """Make the index hold exactly SQLite's row ids. Returns whether anything changed."""
        ann = self._ann
        db = self._db.rids()
        have = ann.rids()
        if len(np.unique(have)) != len(have):  # should not happen; do not try to be clever
            self._build(ann.kind)
            return True
        stale = np.setdiff1d(have, db, assume_unique=True)
        missing = np.setdiff1d(db, have, assume_unique=True)
        if ann.kind == "hnsw":
            ann.set_tombstones(stale)
        elif len(stale):
            ann.index.remove_ids(stale)
        for a in range(0, len(missing), CHUNK):
            r, x = self._db.vectors_by_rid(missing[a : a + CHUNK])
            if not ann.index.is_trained:
                break
            ann.index.add_with_ids(x, r)
        self._stale = False
        return bool(len(stale) or len(missing))

    def _follow_other_writers(self) -> None:
        """Another process committed rows since this store last looked (e.g. ``mmrag index``
        adding photos to the index a server is serving): bring the in-memory index in line with
        SQLite, as on open. One ``PRAGMA`` read when nothing changed."""
        if self._db.refresh():
            self._reconcile()

    # ---------------------------------------------------------------- cache files
    def _read_marker(self) -> dict[str, Any] | None:
        return read_marker(self.path, self._db.uuid, self.dim, self.metric)

    def _load_or_build(self) -> None:
        ann, db = self._ann, self._db
        marker = self._read_marker()
        loaded = False
        if marker is not None and marker.get("kind") in KINDS:
            try:
                index = load_index(self.path, marker, self.dim)
                ann.index, ann.kind = index, marker["kind"]
                ann.trained_n = int(marker.get("trained_n", 0))
                self._saved_gen = int(marker.get("generation", -1))
                loaded = True
            except Exception:  # unreadable / truncated / missing file: rebuild from SQLite
                ann.index = None
        changed = False
        if not loaded:
            self._saved_gen = -1
            self._build(ann.desired_kind(db.count))
            changed = True
        elif not (
            marker.get("generation") == db.generation
            and marker.get("count") == db.count
            and marker.get("dead", 0) == 0
            and ann.index.ntotal == db.count
        ):
            changed = self._reconcile()
        kind = ann.needs_rebuild(db.count)
        if kind is not None:
            self._build(kind)
            changed = True
        if changed or self._saved_gen != db.generation:
            self._write_cache()
        self._cleanup_files()

    def _write_cache(self) -> None:
        ann, db = self._ann, self._db
        name = write_cache(
            self.path, ann.index, store_uuid=db.uuid, kind=ann.kind, dim=self.dim, metric=self.metric,
            generation=db.generation, count=db.count, dead=int(len(ann.dead)), trained_n=ann.trained_n,
            nlist=ann.index_nlist(),
        )
        self._saved_gen = db.generation
        self._cleanup_files(keep=name)

    def _cleanup_files(self, keep: str | None = None) -> None:
        if keep is None:
            marker = self._read_marker()
            keep = marker["file"] if marker else None
        cleanup_files(self.path, keep)

    # ---------------------------------------------------------------- validation
    def _check_open(self) -> None:
        if self._closed:
            raise IndexError_(f"store {self.path} is closed")

    # ---------------------------------------------------------------- protocol
    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> int:
        ids = check_ids(ids)
        x = as_matrix(vectors, self.dim, "vectors")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids but {len(x)} vectors")
        metas = metadata_json(metadata, len(ids))
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
            old, new = self._db.replace(ids, blobs, metas)
            ann = self._ann
            try:  # SQLite is committed; the index is a cache -- if this fails, reconcile later
                ann.remove(np.asarray(old, np.int64))
                if not ann.index.is_trained:
                    self._stale = True
                else:
                    ann.index.add_with_ids(x, new)
            except Exception:
                self._stale = True
                raise
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        ids = check_ids(ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            old = self._db.delete(ids)
            try:
                self._ann.remove(np.asarray(old, np.int64))
            except Exception:
                self._stale = True
                raise
            return len(old)

    def search(
        self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        q = as_matrix(vectors, self.dim, "query vectors")
        k = int(k)
        with self._lock:
            self._check_open()
            self._follow_other_writers()
            count = self._db.count
            if k <= 0 or count == 0 or len(q) == 0:
                return [[] for _ in range(len(q))]
            if self._stale:
                self._reconcile()
            refine = REFINE_FACTOR if self._ann.kind == "ivf_sq8" else 1
            if filter:
                D, I, kk = self._search_filtered(q, k, filter, refine)
                if kk == 0:
                    return [[] for _ in range(len(q))]
            else:
                kk = min(k, count)
                D, I = self._ann.search(q, min(kk * refine, count), count)
            return self._hits(q, D, I, kk, exact=refine == 1)

    def _search_filtered(
        self, q: np.ndarray, k: int, filter: dict[str, Any], refine: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        ann, db = self._ann, self._db
        count = db.count
        where, params = filter_sql(filter)
        db.index_metadata_keys(filter)
        cw, cp = filter_sql(filter, coarse=True)  # index-only estimate (a superset)
        n_match = db.count_where(cw, cp)
        if n_match == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64), 0
        kk = min(k, n_match)
        width = kk * refine
        D = np.full((len(q), width), np.nan, np.float32)
        I = np.full((len(q), width), -1, np.int64)
        todo = np.arange(len(q))
        frac = n_match / count
        if frac >= OVERFETCH_MIN_FRACTION:
            # broad filter: over-fetch unfiltered hits, keep the matching ones (SQL decides)
            kf = int(min(count, width * math.ceil(2.0 / frac), OVERFETCH_MAX))
            Do, Io = ann.search(q, kf, count)
            got = np.unique(Io[Io >= 0])
            ok = db.rids_among_where(got, where, params)
            mask = np.isin(Io, ok) & (Io >= 0)
            enough = mask.sum(1) >= kk
            for row in np.nonzero(enough)[0]:
                pos = np.nonzero(mask[row])[0][:width]
                D[row, : len(pos)], I[row, : len(pos)] = Do[row, pos], Io[row, pos]
            todo = np.nonzero(~enough)[0]
        if not len(todo):
            return D, I, kk
        cand = db.rids_where(where, params)
        if not len(cand):
            return D, I, 0 if len(todo) == len(q) else kk
        kk = min(kk, len(cand))
        qt = q[todo]
        if ann.kind != "flat" and len(cand) <= EXACT_SUBSET_MAX:
            Ds, Is = exact_subset(qt, cand, kk, self.metric, db.vectors_by_rid)
            D[todo, :kk], I[todo, :kk] = Ds, Is
            return D, I, kk
        sel = faiss.IDSelectorBatch(cand)
        Ds, Is = ann.search(qt, min(width, len(cand)), count, sel, frac)
        D[todo, : Ds.shape[1]], I[todo, : Is.shape[1]] = Ds, Is
        short = todo[(Is >= 0).sum(1) < kk]
        if len(short):  # the ANN probe missed matches: exact over the matching subset
            Ds, Is = exact_subset(q[short], cand, kk, self.metric, db.vectors_by_rid)
            I[short] = -1
            D[short, :kk], I[short, :kk] = Ds, Is
        return D, I, kk

    def _hits(self, q: np.ndarray, D: np.ndarray, I: np.ndarray, k: int, exact: bool = True) -> list[list[Hit]]:
        """Hits with ids and metadata from SQLite. ``exact=False``: the index scores are
        approximate, so re-rank the candidates by their exact score (vectors from SQLite)."""
        rids = np.unique(I[I >= 0])
        rows = self._db.rows_by_rid(rids, with_vectors=not exact)
        sign = -1.0 if self.metric == "l2" else 1.0
        out: list[list[Hit]] = []
        parsed: dict[int, dict] = {}
        for qv, d_row, i_row in zip(q, D, I):
            cand = [(d, r) for d, r in zip(d_row.tolist(), i_row.tolist()) if r >= 0 and r in rows]
            if not exact and cand:
                x = self._db.decode([rows[r][2] for _, r in cand])
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

    def keyword_search(self, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        if not self.supports_keyword:
            raise IndexError_(f"store {self.path}: this SQLite has no FTS5, so no keyword search")
        where, params = filter_sql(filter) if filter else ("1", [])
        with self._lock:
            self._check_open()
            found = self._db.keyword_rids(str(query), int(k), where, params)
            rows = self._db.rows_by_rid(np.asarray([r for r, _ in found], np.int64))
        return [Hit(id=rows[r][0], score=s, metadata=json.loads(rows[r][1])) for r, s in found if r in rows]

    def has_keyword_text(self) -> bool:
        with self._lock:
            self._check_open()
            return self._db.has_keyword_text()

    def get(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        ids = check_ids(ids)
        with self._lock:
            self._check_open()
            found = self._db.metadata_by_id(ids)
        return [json.loads(found[i]) if i in found else None for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = check_ids(ids)
        with self._lock:
            self._check_open()
            found = self._db.vectors_by_id(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the store, e.g. {missing[0]!r}")
        return self._db.decode([found[i] for i in ids]).copy()

    def ids(self) -> list[str]:
        with self._lock:
            self._check_open()
            return self._db.ids()

    def count(self) -> int:
        with self._lock:
            self._check_open()
            self._follow_other_writers()
            return self._db.count

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: str) -> bool:
        if not isinstance(id, str):
            return False
        with self._lock:
            self._check_open()
            return self._db.contains(id)

    def save(self) -> None:
        """Re-choose the index type if the store crossed a threshold, then write the cache."""
        with self._lock:
            self._check_open()
            if self._stale:
                self._reconcile()
            kind = self._ann.needs_rebuild(self._db.count)
            if kind is not None:
                self._build(kind)
            elif self._saved_gen == self._db.generation:
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
                self._ann.index = None
                self._db.close()

    def __enter__(self) -> "FaissStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            ann, db = self._ann, self._db
            files = {p.name: p.stat().st_size for p in self.path.iterdir() if p.is_file()}
            marker = self._read_marker()
            return {
                "backend": "faiss",
                "path": str(self.path),
                "count": db.count,
                "dim": self.dim,
                "metric": self.metric,
                "index_type": ann.kind,
                "requested_index_type": self.index_type,
                "index_ntotal": int(ann.index.ntotal) if ann.index is not None else 0,
                "tombstones": int(len(ann.dead)),
                "nlist": ann.index_nlist(),
                "nprobe": ann.nprobe_for(db.count) if ann.kind in IVF_KINDS else None,
                "hnsw_m": ann.index_hnsw_m(),
                "ef_search": self.ef_search if ann.kind == "hnsw" else None,
                "generation": db.generation,
                "cache_generation": self._saved_gen,
                "bytes_on_disk": sum(files.values()),
                "index_bytes": files.get(marker["file"], 0) if marker else 0,
                "db_bytes": sum(v for n, v in files.items() if n.startswith(DB_NAME)),
            }
