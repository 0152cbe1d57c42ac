"""What ranking an index without stored image priors costs per text query (issue 15 follow-up).

    python benchmarks/bench_legacy_prior.py [--size 100000] [--queries 200] [--json benchmarks/results/legacy_prior.json]

An index built before the images' hubness prior (or one to which images were added since) has
rows without "prior"; Searcher.fill_image_priors computes the missing ones from the candidates'
stored vectors (one matrix product against the encoder's caption bank) at every query. Measured
side by side in one run on two FAISS collections of the same ``--size`` vectors and metadata:
"new" (every row has its prior, as indexing stores it) and "old" (no row has one), and "mixed"
(every other row has one); old and mixed timed cold (each query's candidates never seen: the
Searcher's cache of computed priors emptied first) and old again warm (the same queries once
more, every candidate's prior cached). The vectors are random unit vectors (the cost does not depend on
what they are; embedding 100k real images does not fit a benchmark run), the metadata is
caption-sized (five Flickr8k captions), the queries are real Flickr8k test captions embedded
once beforehand, so the timings are the search alone: ``images_for_text_vector(q, k=10)``, i.e.
the cosine candidates (prior_pool(10) = 100) re-ranked by cos - prior. Also: the prior of a
pool of candidates alone (``encoder.image_prior`` on n stored vectors, the default bank), and
whether old and new give the same top 10 for every query.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.index.collection import Collection, IndexManifest  # noqa: E402
from mmrag.retrieval import Searcher  # noqa: E402
from mmrag.retrieval.searcher import prior_pool  # noqa: E402


def _ms(ts) -> dict:
    a = np.asarray(ts) * 1000
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def build(root: Path, enc, vecs, metas, prior, which: str) -> None:
    col = Collection.create_or_open(root, IndexManifest(encoder="effnet-minilm", encoder_options={}, dim=enc.dim))
    for a in range(0, len(vecs), 20_000):
        rows = range(a, min(a + 20_000, len(vecs)))
        ms = []
        for j in rows:
            m = dict(metas[j])
            if which == "new" or (which == "mixed" and j % 2 == 0):
                m["prior"] = round(float(prior[j]), 6)  # what the committer stores
            ms.append(m)
        col.images.add([f"img{j}" for j in rows], vecs[a:a + 20_000], ms)
    col.save()
    col.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--pools", default="100,200,1000", help="pool sizes for the prior-alone timing")
    ap.add_argument("--json", default="benchmarks/results/legacy_prior.json")
    a = ap.parse_args()
    pools = [int(x) for x in a.pools.split(",")]
    enc = create_encoder("effnet-minilm")
    if enc.image_prior_gate() is None:
        sys.exit("error: the default encoder has no image prior")
    corpus = read_corpus("flickr8k", a.data_dir)
    caps = [c for it in corpus.items for c in it.captions]
    test_caps = [c for it in corpus.items if it.split == "test" for c in it.captions[:1]][: a.queries]
    Q = enc.embed_texts(test_caps)
    rng = np.random.default_rng(0)
    vecs = l2_normalize(rng.normal(size=(a.size, enc.dim)).astype(np.float32))
    metas = [{"path": f"img{j}.jpg", "captions": caps[(5 * j) % len(caps):(5 * j) % len(caps) + 5]}
             for j in range(a.size)]
    t = time.perf_counter()
    prior = enc.image_prior(vecs)
    prior_all_s = time.perf_counter() - t

    alone = []
    for n in pools:
        x = vecs[:n]
        enc.image_prior(x)
        ts = []
        for _ in range(50):
            t = time.perf_counter()
            enc.image_prior(x)
            ts.append(time.perf_counter() - t)
        alone.append({"candidates": n, "bank": int(len(enc.prior_model.bank)), **_ms(ts)})

    rows, tops = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for which in ("new", "old", "mixed"):
            build(Path(tmp) / which, enc, vecs, metas, prior, which)
        searchers = {w: Searcher(Path(tmp) / w, encoder=enc) for w in ("new", "old", "mixed")}
        for s in searchers.values():  # warm up (SQLite pages, FAISS)
            for q in Q[:10]:
                s.images_for_text_vector(q, k=10)
        ts = {w: [] for w in searchers}
        fetch = []
        for q in Q:  # interleaved, so a load change on the machine hits every variant alike
            t = time.perf_counter()
            searchers["new"].collection.images.search(q[None], k=prior_pool(10))
            fetch.append(time.perf_counter() - t)
            for w, s in searchers.items():
                s.__dict__.pop("_prior_cache", None)  # cold: these candidates' priors never computed
                t = time.perf_counter()
                hits = s.images_for_text_vector(q, k=10)
                ts[w].append(time.perf_counter() - t)
                tops.setdefault(w, []).append([h.id for h in hits])
        old = searchers["old"]
        for q in Q:  # fill the cache, then the same queries again (a repeated candidate)
            old.images_for_text_vector(q, k=10)
        ts["old, cached"] = []
        for q in Q:
            t = time.perf_counter()
            old.images_for_text_vector(q, k=10)
            ts["old, cached"].append(time.perf_counter() - t)
        for s in searchers.values():
            s.close()
    base = float(np.median(ts["new"])) * 1000
    rows.append({"variant": "cosine candidates only (store.search, k=100)", **_ms(fetch)})
    for w in ("new", "old", "mixed", "old, cached"):
        r = _ms(ts[w])
        rows.append({"variant": f"{w}: images_for_text_vector(k=10)", **r,
                     "extra_vs_new_ms": round(r["median_ms"] - base, 3)})
    same = {w: sum(x == y for x, y in zip(tops[w], tops["new"])) for w in ("old", "mixed")}

    print(f"{a.size} rows, {len(Q)} queries, prior pool {prior_pool(10)}, bank {len(enc.prior_model.bank)}")
    print(f"{'variant':52s} {'median ms':>10s} {'p95 ms':>8s} {'extra ms':>9s}")
    for r in rows:
        print(f"{r['variant']:52s} {r['median_ms']:10.2f} {r['p95_ms']:8.2f} {r.get('extra_vs_new_ms', float('nan')):9.2f}")
    print(f"\n{'encoder.image_prior on n vectors':52s} {'median ms':>10s} {'p95 ms':>8s}")
    for r in alone:
        print(f"{'n = ' + str(r['candidates']):52s} {r['median_ms']:10.2f} {r['p95_ms']:8.2f}")
    print(f"\nsame top 10 as new: old {same['old']}/{len(Q)}, mixed {same['mixed']}/{len(Q)}; "
          f"all {a.size} priors at once (a rebuild's prior step): {prior_all_s:.1f} s")
    write_results(a.json, {"size": a.size, "queries": len(Q), "pool": prior_pool(10),
                           "bank": int(len(enc.prior_model.bank)), "search": rows, "prior_alone": alone,
                           "same_top10_as_new": same, "all_priors_s": round(prior_all_s, 2)})


if __name__ == "__main__":
    main()
