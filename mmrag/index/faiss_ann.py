"""The FAISS side of the FAISS store: which index type, how it is built and trained, how searched.

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

:class:`AnnIndex` holds the in-memory index and its state (kind, training size, tombstones);
the vectors it is built from come from the store's SQLite rows (:class:`~mmrag.index.sqlite_meta.SqliteMeta`),
which stay the source of truth. :func:`exact_subset` scores a candidate subset exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import faiss
import numpy as np

from mmrag.index.sqlite_meta import CHUNK, SqliteMeta

__all__ = [
    "AUTO_ANN", "AUTO_FLAT_MAX", "DEFAULT_EF_SEARCH", "DEFAULT_HNSW_M", "FILTER_NPROBE_BOOST", "HNSW_DEAD_REBUILD",
    "HNSW_EF_CONSTRUCTION", "INDEX_TYPES", "IVF_KINDS", "IVF_SCAN_BUDGET", "KINDS", "METRICS", "MIN_IVF_TRAIN",
    "REFINE_FACTOR", "SMALL_BATCH", "TRAIN_NITER", "TRAIN_POINTS_PER_LIST", "AnnIndex", "auto_nlist",
    "exact_subset", "one_thread_if",
]

AUTO_FLAT_MAX = 50_000  # auto: exact search below this many vectors
MIN_IVF_TRAIN = 1_000  # fewer vectors than this: an "ivf" store stays flat
IVF_SCAN_BUDGET = 16_384  # automatic nprobe: probe ~this many codes per query (>= 16, <= nlist/4 lists)
DEFAULT_HNSW_M = 32
DEFAULT_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 40
HNSW_DEAD_REBUILD = 0.2  # rebuild an HNSW graph at save once this fraction is tombstoned
FILTER_NPROBE_BOOST = 8  # filtered IVF search: nprobe * min(8, 1/selectivity)
TRAIN_POINTS_PER_LIST = 32
TRAIN_NITER = 12  # k-means iterations (faiss default 25; 12 halves 1M-scale training, same recall)
REFINE_FACTOR = 2  # ivf_sq8: fetch k*2 candidates and re-rank them exactly from SQLite
AUTO_ANN = "ivf_sq8"  # what auto picks above flat_threshold (measured: benchmarks/bench_search.py)
INDEX_TYPES = ("auto", "flat", "ivf", "ivf_sq8", "hnsw")
IVF_KINDS = ("ivf", "ivf_sq8")
KINDS = ("flat", "ivf", "ivf_sq8", "hnsw")
METRICS = ("ip", "l2")

SMALL_BATCH = 8  # searches of fewer queries run on one OpenMP thread


@contextmanager
def one_thread_if(small: bool):
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


def auto_nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(max(n, 1)))))
    return int(max(1, min(nlist, 65536, n // TRAIN_POINTS_PER_LIST)))


def exact_subset(q: np.ndarray, cand: np.ndarray, k: int, metric: str,
                 fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``q`` over the row ids ``cand``; ``fetch(rids) -> (rids found, vectors)``
    reads the vectors (in chunks). Returns (scores, row ids), best first."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.empty((len(q), 0), np.int64)
    for a in range(0, len(cand), CHUNK):
        r, x = fetch(cand[a : a + CHUNK])
        if not len(r):
            continue
        s = q @ x.T
        if metric == "l2":
            s = 2 * s - (q * q).sum(1, keepdims=True) - (x * x).sum(1)[None, :]
        s = np.concatenate([best_s, s], axis=1)
        rr = np.concatenate([np.broadcast_to(best_r, (len(q), best_r.shape[1])), np.broadcast_to(r, (len(q), len(r)))], axis=1)
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.take_along_axis(s, top, 1)
        best_r = np.take_along_axis(rr, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    scores = np.take_along_axis(best_s, order, 1)
    if metric == "l2":
        scores = -scores
    return scores, np.take_along_axis(best_r, order, 1)


class AnnIndex:
    """The in-memory FAISS index of a store, keyed by SQLite row ids, with the build parameters
    asked for (``index_type``, ``nlist``, ``hnsw_m``; ``nprobe``/``ef_search`` are search-time).

    State: ``index`` (None before the first build or load), ``kind`` (what ``index`` is, one of
    :data:`KINDS`), ``trained_n`` (store size at IVF training), ``dead`` (HNSW tombstones: row ids
    still in the graph)."""

    def __init__(self, dim: int, metric: str, index_type: str = "auto", nlist: int | None = None,
                 nprobe: int | None = None, hnsw_m: int | None = None, ef_search: int | None = None,
                 flat_threshold: int = AUTO_FLAT_MAX):
        self.dim = int(dim)
        self.metric = metric
        self.index_type = index_type
        self.nlist = nlist
        self.nprobe = nprobe  # None: automatic, see nprobe_for()
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search or DEFAULT_EF_SEARCH
        self.flat_threshold = int(flat_threshold)
        self.index: faiss.Index | None = None
        self.kind = "flat"
        self.trained_n = 0
        self.dead = np.empty(0, np.int64)
        self._dead_sel: tuple | None = None

    # ---------------------------------------------------------------- choice
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def desired_kind(self, n: int) -> str:
        t = self.index_type
        if t == "auto":
            if self.kind == AUTO_ANN and n >= self.flat_threshold // 2:
                return AUTO_ANN
            return AUTO_ANN if n >= self.flat_threshold else "flat"
        if t in IVF_KINDS:
            return t if n >= MIN_IVF_TRAIN else "flat"
        return t

    def needs_rebuild(self, n: int) -> str | None:
        """The kind to rebuild into at save/open for a store of ``n`` rows, or None to keep it."""
        kind = self.desired_kind(n)
        if self.index is None or kind != self.kind:
            return kind
        if kind in IVF_KINDS:
            if self.nlist is not None:
                if self.index_nlist() != min(self.nlist, max(n, 1)):
                    return kind
            elif self.trained_n and (n > 4 * self.trained_n or 4 * n < self.trained_n):
                return kind
        if kind == "hnsw":
            if self.hnsw_m is not None and self.index_hnsw_m() != self.hnsw_m:
                return kind
            if len(self.dead) > HNSW_DEAD_REBUILD * max(self.index.ntotal, 1):
                return kind
        return None

    # ---------------------------------------------------------------- what the index holds
    def index_nlist(self) -> int | None:
        if self.kind not in IVF_KINDS or self.index is None:
            return None
        return faiss.extract_index_ivf(self.index).nlist

    def index_hnsw_m(self) -> int | None:
        if self.kind != "hnsw" or self.index is None:
            return None
        h = faiss.downcast_index(faiss.downcast_index(self.index).index)
        return int(h.hnsw.nb_neighbors(1))

    def rids(self) -> np.ndarray:
        """Every row id the index holds (tombstoned ones included), sorted."""
        idx = self.index
        if idx is None or idx.ntotal == 0:
            return np.empty(0, np.int64)
        if self.kind in IVF_KINDS:
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

    def flat_view(self, count: int, in_sync: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """(row ids, vectors) viewed in place from a flat index in sync with a store of ``count``
        rows, or None."""
        if self.kind != "flat" or self.index is None or not in_sync or self.index.ntotal != count:
            return None
        idmap = faiss.downcast_index(self.index)
        flat = faiss.downcast_index(idmap.index)
        n = flat.ntotal
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        x = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        return faiss.vector_to_array(idmap.id_map).astype(np.int64), x

    # ---------------------------------------------------------------- building
    def _new_flat(self) -> faiss.Index:
        base = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        return faiss.IndexIDMap(base)

    def _new_hnsw(self) -> faiss.Index:
        h = faiss.IndexHNSWFlat(self.dim, self.hnsw_m or DEFAULT_HNSW_M, self.faiss_metric())
        h.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap(h)

    def build(self, kind: str, db: SqliteMeta, in_sync: bool) -> None:
        """(Re)build the index of ``kind`` over every row of ``db``: from the in-memory flat
        index when it is in sync (``in_sync``: nothing committed since that it lacks), else from
        SQLite. IVF kinds are trained on a fixed-seed sample of up to 32 vectors per list."""
        n = db.count
        view = self.flat_view(n, in_sync)

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            if view is not None:
                r, x = view
                for a in range(0, len(r), CHUNK):
                    yield r[a : a + CHUNK], x[a : a + CHUNK]
            else:
                yield from db.iter_rows()

        if kind in IVF_KINDS:
            nlist = int(self.nlist or auto_nlist(n))
            nlist = max(1, min(nlist, n))
            quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self.faiss_metric())
            else:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, self.faiss_metric()
                )
            n_train = min(n, nlist * TRAIN_POINTS_PER_LIST)
            rng = np.random.default_rng(0)
            if view is not None:
                pos = np.sort(rng.choice(n, size=n_train, replace=False))
                sample = np.ascontiguousarray(view[1][pos])
            else:
                all_r = db.rids()
                _, sample = db.vectors_by_rid(np.sort(rng.choice(all_r, size=n_train, replace=False)))
            index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST + 1
            index.cp.niter = TRAIN_NITER
            index.cp.min_points_per_centroid = 16  # we sample >= 32 per list when we can
            index.train(sample)
            del sample
            self.trained_n = n
        elif kind == "hnsw":
            index = self._new_hnsw()
        else:
            index = self._new_flat()
        for r, x in chunks():
            index.add_with_ids(np.ascontiguousarray(x), r)
        del view
        self.index = index
        self.kind = kind
        self.set_tombstones(np.empty(0, np.int64))

    # ---------------------------------------------------------------- changes
    def set_tombstones(self, rids: np.ndarray) -> None:
        self.dead = rids
        self._dead_sel = None

    def remove(self, rids: np.ndarray) -> None:
        """Take row ids out of search: ``remove_ids``, or tombstones for HNSW."""
        rids = np.asarray(rids, np.int64)
        if not len(rids) or self.index is None:
            return
        if self.kind == "hnsw":
            self.set_tombstones(np.union1d(self.dead, rids))
        else:
            self.index.remove_ids(rids)

    # ---------------------------------------------------------------- search
    def nprobe_for(self, count: int, selectivity: float = 1.0) -> int:
        """IVF lists to probe in a store of ``count`` rows (for a filter matching ``selectivity``)."""
        nlist = self.index_nlist() or 1
        if self.nprobe:
            nprobe = self.nprobe
        else:  # scan about IVF_SCAN_BUDGET codes per query: 64 of 4096 lists at 1M, 128 of 1024 at 100k
            want = IVF_SCAN_BUDGET * nlist / max(count, 1)
            nprobe = int(min(max(16, 2 ** round(math.log2(max(want, 1)))), max(16, nlist // 4)))
        if selectivity < 1.0:  # a selector skips non-matching codes cheaply: probe more lists
            nprobe *= min(FILTER_NPROBE_BOOST, math.ceil(1.0 / max(selectivity, 1e-9)))
        return int(min(nprobe, nlist))

    def search_params(self, count: int, sel=None, selectivity: float = 1.0):
        """faiss search parameters: nprobe / efSearch, the selector ``sel``, HNSW tombstones."""
        if self.kind in IVF_KINDS:
            nprobe = self.nprobe_for(count, selectivity)
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None else faiss.SearchParametersIVF(nprobe=nprobe)
        if self.kind == "hnsw":
            if sel is None and len(self.dead):
                if self._dead_sel is None:
                    batch = faiss.IDSelectorBatch(self.dead)
                    self._dead_sel = (batch, faiss.IDSelectorNot(batch))
                sel = self._dead_sel[1]
            if sel is not None:
                return faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.ef_search))
            return faiss.SearchParametersHNSW(efSearch=int(self.ef_search))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(self, q: np.ndarray, k: int, count: int, sel=None, selectivity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) of the index's top ``k`` (on one thread for small batches)."""
        with one_thread_if(len(q) < SMALL_BATCH):
            return self.index.search(q, k, params=self.search_params(count, sel, selectivity))
