"""FAISS store vs Milvus Lite on the same vectors: build time, query latency, recall@10.

    nice -n 10 python benchmarks/bench_stores.py [--size 1000000] [--queries 300]
        [--milvus-index IVF_FLAT] [--also-flat] [--json benchmarks/results/stores.json]

Vectors: real effnet-minilm image embeddings of Flickr8k (all 8,091 images, cached as in
bench_query.py), resampled with small Gaussian noise up to --size (unit vectors, 384-d), each
with a small metadata dict. Queries: real Flickr8k test captions (text embeddings), one at a
time, k=10. Ground truth: exact inner product over all vectors (numpy). Both stores go through
the VectorStore API (``open_store``): build = ``add`` in 20k batches + ``save()``.

FAISS store: index type "auto" (IVF-SQ8 with exact re-rank at this size). Milvus Lite
(milvus-lite 2.5, the embedded Milvus engine) supports FLAT, IVF_FLAT and AUTOINDEX; IVF_FLAT
uses nlist 4096 / nprobe 64, the FAISS store's automatic values at 1M.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.index import open_store  # noqa: E402
from mmrag.paths import cache_dir  # noqa: E402

BATCH = 20_000


def flickr_embeddings(enc, corpus) -> np.ndarray:
    key = hashlib.sha256(enc.bridge.W.tobytes() + repr(enc.recipe.views).encode()).hexdigest()[:12]
    cache = cache_dir() / f"flickr8k_all_effnet_minilm_{key}.npy"  # the same cache as bench_query.py
    if cache.exists():
        return np.load(cache)
    base = enc.embed_images([it.path for it in corpus.items], progress=True)
    np.save(cache, base)
    return base


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q), k), np.int64)
    for a in range(0, len(q), 50):
        s = q[a : a + 50] @ x.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        out[a : a + 50] = np.take_along_axis(top, order, 1)
    return out


def milvus_flat_on_same_data(store, q: np.ndarray, truth: np.ndarray, ids: list[str]) -> dict:
    """Re-index the loaded Milvus collection as FLAT (exact) and time the same queries: the
    exact-search cost without a second 1M-row ingest (benchmark-only use of the client)."""
    c, name = store._client, store.collection
    t = time.perf_counter()
    c.release_collection(name)
    c.drop_index(name, "vector")
    ip = c.prepare_index_params()
    ip.add_index("vector", index_type="FLAT", metric_type="IP")
    c.create_index(name, ip)
    c.load_collection(name)
    reindex = time.perf_counter() - t
    store.index_type = "FLAT"
    for v in q[:5]:
        store.search(v[None], k=10)
    lat, hits = [], []
    for v in q[:100]:
        t0 = time.perf_counter()
        hits.append(store.search(v[None], k=10)[0])
        lat.append(time.perf_counter() - t0)
    recall = float(np.mean([len({h.id for h in r} & {ids[j] for j in w}) / 10 for r, w in zip(hits, truth)]))
    return {"reindex_s": round(reindex, 1), "queries": len(lat),
            "query_ms": {"p50": round(1000 * float(np.percentile(lat, 50)), 2),
                         "p95": round(1000 * float(np.percentile(lat, 95)), 2)},
            "recall_at_10": round(recall, 4)}


def run_store(name: str, backend: str, options: dict, x: np.ndarray, q: np.ndarray, truth: np.ndarray,
              root: Path, also_flat: bool = False) -> dict:
    ids = [f"img{j}" for j in range(len(x))]
    print(f"[{name}] building {len(x)} vectors ...", flush=True)
    t = time.perf_counter()
    store = open_store(backend, root / name, x.shape[1], **options)
    for a in range(0, len(x), BATCH):
        b = min(a + BATCH, len(x))
        store.add(ids[a:b], x[a:b], [{"n": j, "part": j % 10} for j in range(a, b)])
    store.save()
    build = time.perf_counter() - t
    print(f"[{name}] built in {build:.1f} s", flush=True)
    for v in q[:10]:  # warm up
        store.search(v[None], k=10)
    lat, hits = [], []
    for v in q:
        t0 = time.perf_counter()
        hits.append(store.search(v[None], k=10)[0])
        lat.append(time.perf_counter() - t0)
    flat = []
    for v in q[:50]:
        t0 = time.perf_counter()
        store.search(v[None], k=10, filter={"part": 3})
        flat.append(time.perf_counter() - t0)
    recall = float(np.mean([len({h.id for h in r} & {ids[j] for j in w}) / 10 for r, w in zip(hits, truth)]))
    info = store.info() if hasattr(store, "info") else {}
    extra = {}
    if backend == "milvus" and also_flat:
        extra["flat_same_data"] = milvus_flat_on_same_data(store, q, truth, ids)
    store.close()
    t = time.perf_counter()
    again = open_store(backend, root / name, x.shape[1], **options)
    again.search(q[0][None], k=10)
    reopen = time.perf_counter() - t
    again.close()
    ms = lambda v, p: round(1000 * float(np.percentile(v, p)), 2)  # noqa: E731
    disk = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
    return {
        "store": name, "backend": backend, "options": options, "index_type": info.get("index_type"),
        "build_s": round(build, 1), "reopen_s": round(reopen, 2),
        "query_ms": {"p50": ms(lat, 50), "p95": ms(lat, 95)},
        "filtered_query_ms": {"p50": ms(flat, 50), "p95": ms(flat, 95)},
        "recall_at_10": round(recall, 4), "disk_mb": round(disk / 2**20, 1), **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--milvus-index", default="IVF_FLAT", help="comma-separated Milvus index types to run")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--also-flat", action="store_true",
                    help="after the Milvus run, re-index the same collection as FLAT and time exact search")
    ap.add_argument("--workdir", default=None, help="where the stores are built (default: a temp dir)")
    ap.add_argument("--json", default="benchmarks/results/stores.json")
    a = ap.parse_args()
    enc = create_encoder("effnet-minilm")
    corpus = read_corpus("flickr8k", a.data_dir)
    base = flickr_embeddings(enc, corpus)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(base), a.size)
    x = l2_normalize(base[rows] + rng.normal(scale=0.02, size=(a.size, base.shape[1])).astype(np.float32))
    texts = [c for it in corpus.items if it.split == "test" for c in it.captions][: a.queries]
    q = enc.embed_texts(texts)
    t = time.perf_counter()
    truth = exact_topk(x, q, 10)
    print(f"ground truth for {len(q)} queries in {time.perf_counter() - t:.1f} s", flush=True)
    runs = [] if a.skip_faiss else [("faiss", "faiss", {})]
    nlist = 4096 if a.size >= 500_000 else 1024
    for it in [s.strip().upper() for s in a.milvus_index.split(",") if s.strip()]:
        opts = {"index_type": it}
        if it.startswith("IVF"):
            opts.update(nlist=nlist, nprobe=64 if nlist == 4096 else 128)
        runs.append((f"milvus-lite-{it.lower()}", "milvus", opts))
    results = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        for name, backend, opts in runs:
            results.append(run_store(name, backend, opts, x, q, truth, Path(tmp), also_flat=a.also_flat))
            print(json.dumps(results[-1]), flush=True)
    import pymilvus

    try:
        from importlib.metadata import version

        lite = version("milvus-lite")
    except Exception:
        lite = "?"
    import faiss

    res = {
        "versions": {"faiss": faiss.__version__, "pymilvus": pymilvus.__version__, "milvus-lite": lite},
        "size": a.size, "dim": int(x.shape[1]), "queries": len(q), "k": 10, "results": results,
    }
    print(f"\n{'store':<24}{'index':<10}{'build s':>9}{'p50 ms':>9}{'p95 ms':>9}{'filt p50':>10}{'R@10':>8}{'disk MB':>9}")
    for r in results:
        print(f"{r['store']:<24}{str(r['index_type']):<10}{r['build_s']:>9}{r['query_ms']['p50']:>9}"
              f"{r['query_ms']['p95']:>9}{r['filtered_query_ms']['p50']:>10}{r['recall_at_10']:>8}{r['disk_mb']:>9}")
    write_results(a.json, res)
    for r in results:
        if "flat_same_data" in r:
            f = r["flat_same_data"]
            print(f"{r['store']} re-indexed FLAT ({f['reindex_s']} s): p50 {f['query_ms']['p50']} ms, "
                  f"p95 {f['query_ms']['p95']} ms, R@10 {f['recall_at_10']} ({f['queries']} queries)")


if __name__ == "__main__":
    main()
