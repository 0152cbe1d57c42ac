"""Search benchmark for the embedded FAISS + SQLite vector store.

    python benchmarks/bench_search.py [--sizes 10000 100000 1000000] [--dim 384] [--queries 1000]
                                      [--json benchmarks/results/search.json] [--embeddings FILE.npy]
                                      [--index-type auto] [--quick]

Per size it builds a store and reports: index type, SQLite ingestion time (``store.add`` in
batches, which also fills the in-memory flat index), FAISS index build time (``store.save()``:
choosing the index, training, adding, writing the cache atomically), reopen time, p50/p95
single-query latency end to end (``store.search``: FAISS + SQLite metadata/re-rank) and of the
FAISS index alone, batch throughput, recall@10 against exact search, a filtered query's latency,
bytes per vector (index file, whole store on disk) and the process RSS.

Vectors: ``--embeddings FILE.npy`` (real embeddings, rows resampled with small Gaussian noise and
re-normalised to reach each size; queries are other perturbed rows), otherwise a synthetic
clustered distribution: a mixture of 3000 anisotropic Gaussians on the unit sphere with a
decaying spectrum (low effective dimension, like real embeddings; uniform random vectors are
unrealistically hard for any ANN index).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, write_results  # noqa: E402

from mmrag.index import open_store  # noqa: E402

K = 10


def clustered(n: int, dim: int, seed: int, n_clusters: int = 3000, sigma: float = 1.0, decay: float = 0.6,
              chunk: int = 100_000) -> np.ndarray:
    """Mixture of anisotropic Gaussians on the unit sphere; the geometry is fixed, ``seed`` only
    chooses the sample, so base vectors and queries come from the same distribution."""
    rng = np.random.default_rng(seed)
    geo = np.random.default_rng(12345)
    q, _ = np.linalg.qr(geo.standard_normal((dim, dim)))
    s = (1.0 + np.arange(dim)) ** (-decay / 2)
    s /= np.sqrt((s**2).sum())
    proj = (s[:, None] * q.T).astype(np.float32)
    centers = geo.standard_normal((n_clusters, dim)).astype(np.float32) @ proj
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    w = geo.dirichlet(np.full(n_clusters, 2.0))
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        lab = rng.choice(n_clusters, size=b - a, p=w)
        x = centers[lab] + sigma * (rng.standard_normal((b - a, dim)).astype(np.float32) @ proj)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:b] = x
    return out


def resampled(emb: np.ndarray, n: int, seed: int, noise: float = 0.3, chunk: int = 100_000) -> np.ndarray:
    """``n`` rows drawn from real embeddings ``emb`` plus Gaussian noise of norm ~``noise``."""
    rng = np.random.default_rng(seed)
    dim = emb.shape[1]
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x = emb[rng.integers(0, len(emb), b - a)] + rng.standard_normal((b - a, dim)).astype(np.float32) * (
            noise / np.sqrt(dim)
        )
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:b] = x
    return out


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    best_s = np.full((len(xq), 0), -np.inf, np.float32)
    best_i = np.empty((len(xq), 0), np.int64)
    for a in range(0, len(xb), chunk):
        s = xq @ xb[a : a + chunk].T
        s = np.concatenate([best_s, s], 1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + min(chunk, len(xb) - a)), (len(xq), s.shape[1] - best_i.shape[1]))], 1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, 1)
    return np.take_along_axis(best_i, order, 1)


def rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(ts: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(ts) * 1e3, p))


def bench_size(n: int, args, emb: np.ndarray | None, workdir: Path) -> dict:
    import faiss

    t = time.perf_counter()
    if emb is not None:
        xb = resampled(emb, n, seed=1)
        xq = resampled(emb, args.queries, seed=2)
    else:
        xb = clustered(n, args.dim, seed=1)
        xq = clustered(args.queries, args.dim, seed=2)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    gt = exact_topk(xb, xq, K)
    t_gt = time.perf_counter() - t

    path = workdir / f"store-{n}"
    shutil.rmtree(path, ignore_errors=True)
    opts = {"index_type": args.index_type}
    if args.nprobe:
        opts["nprobe"] = args.nprobe
    store = open_store("faiss", path, xb.shape[1], **opts)
    t = time.perf_counter()
    bs = 10_000
    for a in range(0, n, bs):
        b = min(n, a + bs)
        store.add([f"img{i:08d}" for i in range(a, b)], xb[a:b], [{"i": i, "shard": i % 16} for i in range(a, b)])
    t_ingest = time.perf_counter() - t
    t = time.perf_counter()
    store.save()  # re-chooses the index type and builds it (train + add) and writes the cache
    t_build = time.perf_counter() - t
    store.close()
    t = time.perf_counter()
    store = open_store("faiss", path, xb.shape[1], **opts)
    t_open = time.perf_counter() - t
    info = store.info()

    # warm-up, then single-query latency end to end and of the FAISS index alone
    store.search(xq[:20], k=K)
    lat, got = [], []
    for i in range(len(xq)):
        t = time.perf_counter()
        hits = store.search(xq[i : i + 1], k=K)[0]
        lat.append(time.perf_counter() - t)
        got.append([int(h.id[3:]) for h in hits])
    recall = float(np.mean([len(set(g) & set(w)) / K for g, w in zip(got, gt.tolist())]))
    index, params = store._ann.index, store._ann.search_params(store.count())  # benchmark-only peek at internals
    kf = K * (2 if info["index_type"] == "ivf_sq8" else 1)  # faiss_ann.REFINE_FACTOR
    ilat = []
    nthreads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as store.search does for single queries
    for i in range(len(xq)):
        t = time.perf_counter()
        index.search(xq[i : i + 1], kf, params=params)
        ilat.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(nthreads)
    t = time.perf_counter()
    store.search(xq, k=K)
    t_batch = time.perf_counter() - t
    flat_lat = []
    store.search(xq[:1], k=K, filter={"shard": 3})  # first use creates the metadata index
    for i in range(min(100, len(xq))):
        t = time.perf_counter()
        store.search(xq[i : i + 1], k=K, filter={"shard": 3})
        flat_lat.append(time.perf_counter() - t)
    info = store.info()
    rss = rss_mb()
    store.close()
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    del xb
    return {
        "n": n,
        "dim": int(xq.shape[1]),
        "queries": len(xq),
        "index_type": info["index_type"],
        "nlist": info["nlist"],
        "nprobe": info["nprobe"],
        "data_s": round(t_gen, 2),
        "exact_groundtruth_s": round(t_gt, 2),
        "sqlite_ingest_s": round(t_ingest, 2),
        "ingest_rows_per_s": round(n / t_ingest),
        "index_build_s": round(t_build, 2),
        "reopen_s": round(t_open, 2),
        "p50_ms": round(pct(lat, 50), 3),
        "p95_ms": round(pct(lat, 95), 3),
        "index_p50_ms": round(pct(ilat, 50), 3),
        "index_p95_ms": round(pct(ilat, 95), 3),
        "batch_qps": round(len(xq) / t_batch, 1),
        "filtered_p50_ms": round(pct(flat_lat, 50), 3),
        "recall_at_10": round(recall, 4),
        "index_bytes_per_vector": round(info["index_bytes"] / n, 1),
        "disk_bytes_per_vector": round(info["bytes_on_disk"] / n, 1),
        "rss_mb": round(rss, 1),
    }


COLUMNS = [
    ("n", "n", "{:>9,}"),
    ("index", "index_type", "{:>7}"),
    ("ingest s", "sqlite_ingest_s", "{:>8.1f}"),
    ("build s", "index_build_s", "{:>7.1f}"),
    ("open s", "reopen_s", "{:>6.2f}"),
    ("p50 ms", "p50_ms", "{:>6.2f}"),
    ("p95 ms", "p95_ms", "{:>6.2f}"),
    ("idx p50", "index_p50_ms", "{:>7.2f}"),
    ("idx p95", "index_p95_ms", "{:>7.2f}"),
    ("filt p50", "filtered_p50_ms", "{:>8.2f}"),
    ("QPS", "batch_qps", "{:>7.0f}"),
    ("R@10", "recall_at_10", "{:>6.3f}"),
    ("idx B/v", "index_bytes_per_vector", "{:>7.0f}"),
    ("disk B/v", "disk_bytes_per_vector", "{:>8.0f}"),
    ("RSS MB", "rss_mb", "{:>7.0f}"),
]


def table(rows: list[dict]) -> str:
    head = " | ".join(f"{h:>{len(f.format(rows[0][k])) if rows else len(h)}}" for h, k, f in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" | ".join(
            f"{f.format(r[k]) if r[k] is not None else '-':>{max(len(h), len(f.format(r[k])) if r[k] is not None else 1)}}"
            for h, k, f in COLUMNS
        ))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "search.json")
    ap.add_argument("--embeddings", type=Path, help="a .npy of real embeddings (n, dim) to resample from")
    ap.add_argument("--index-type", default="auto", help="auto | flat | ivf | ivf_sq8 | hnsw")
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="where stores are built (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built stores")
    ap.add_argument("--quick", action="store_true", help="smoke test: 10k vectors only")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = [10_000]
    emb = None
    if args.embeddings:
        emb = np.load(args.embeddings).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        args.dim = emb.shape[1]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import faiss

    rows = []
    t0 = time.perf_counter()
    try:
        for n in args.sizes:
            r = bench_size(n, args, emb, workdir)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    result = {
        "benchmark": "search",
        "data": f"embeddings:{args.embeddings.name}" if args.embeddings else "synthetic clustered (3000 anisotropic Gaussians on the sphere)",
        "k": K,
        "machine": machine(faiss_omp_threads=faiss.omp_get_max_threads()),
        "total_s": round(time.perf_counter() - t0, 1),
        "results": rows,
    }
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
