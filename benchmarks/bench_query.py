"""End-to-end text query latency (encode the text + search the index) on a 100k-image index.

    python benchmarks/bench_query.py [--size 100000] [--queries 300] [--json benchmarks/results/query.json]

The index holds real effnet-minilm image embeddings of Flickr8k (all 8,091 images), resampled
with small Gaussian noise up to --size vectors, in the default FAISS store (index type "auto").
Queries are real Flickr8k test captions, one at a time, as a user would send them.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", default="benchmarks/results/query.json")
    a = ap.parse_args()
    enc = create_encoder("effnet-minilm")
    corpus = read_corpus("flickr8k", a.data_dir)
    import hashlib

    key = hashlib.sha256(enc.bridge.W.tobytes() + repr(enc.recipe.views).encode()).hexdigest()[:12]
    cache = cache_dir() / f"flickr8k_all_effnet_minilm_{key}.npy"  # keyed by the bridge: never stale
    if cache.exists():
        base = np.load(cache)
    else:
        base = enc.embed_images([it.path for it in corpus.items], progress=True)
        np.save(cache, base)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(base), a.size)
    vecs = l2_normalize(base[rows] + rng.normal(scale=0.02, size=(a.size, base.shape[1])).astype(np.float32))
    queries = [c for it in corpus.items if it.split == "test" for c in it.captions][: a.queries]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store("faiss", Path(tmp) / "s", enc.dim)
        t = time.perf_counter()
        for i in range(0, a.size, 20_000):
            store.add([f"img{j}" for j in range(i, min(i + 20_000, a.size))], vecs[i : i + 20_000],
                      [{"n": j} for j in range(i, min(i + 20_000, a.size))])
        store.save()
        build = time.perf_counter() - t
        for q in queries[:10]:  # warm up
            store.search(enc.embed_texts([q]), k=10)
        enc_t, search_t, total_t = [], [], []
        for q in queries:
            t0 = time.perf_counter()
            v = enc.embed_texts([q])
            t1 = time.perf_counter()
            store.search(v, k=10)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0); search_t.append(t2 - t1); total_t.append(t2 - t0)
        info = store.info() if hasattr(store, "info") else {}
        store.close()
    ms = lambda x, p: round(1000 * float(np.percentile(x, p)), 2)  # noqa: E731
    res = {
        "index_size": a.size, "index_type": info.get("index_type"), "build_s": round(build, 1),
        "queries": len(queries),
        "encode_ms": {"p50": ms(enc_t, 50), "p95": ms(enc_t, 95)},
        "search_ms": {"p50": ms(search_t, 50), "p95": ms(search_t, 95)},
        "total_ms": {"p50": ms(total_t, 50), "p95": ms(total_t, 95), "p99": ms(total_t, 99)},
    }
    print(f"{'stage':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for k in ("encode", "search", "total"):
        print(f"{k:<10}{res[k + '_ms']['p50']:>10}{res[k + '_ms']['p95']:>10}")
    print(f"index: {a.size} vectors, {res['index_type']}, built in {res['build_s']} s")
    write_results(a.json, res)


if __name__ == "__main__":
    main()
