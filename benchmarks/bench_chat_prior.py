"""ChatIR with and without the images' hubness prior, side by side (issue 15).

    python benchmarks/bench_chat_prior.py [--splits dev test] [--rounds 5] [--from-json DIR]
        [--json benchmarks/results/chat_image_prior.json]

Each cell is one run of the CLI verb as a user types it (in a subprocess, so exactly what the verb
does), on the full Flickr8k corpus (8,091 images):

    mmrag eval chat --split S --search-space all --questioner split --rounds 5 [--no-image-prior]
    mmrag eval chat ... --questioner bank --rescore-weight 0.25 ...     # bank's dev choice

"old" is ``--no-image-prior`` (plain cosine, as the chat ranked before), "new" the default (the
gated ``cos - prior`` of search). Reported per split: cumulative Hits@10 at round 0 and 5, the
gain, split minus bank at round 5 (the issue's goals: gain >= +14, split >= 3 points ahead).

The rule, stated before any test figure was read: the prior is on for the chat by default only if
dev Hits@10 at round 5 does not fall for either questioner (new - old >= -0.3).

Also (``--agreement``, default on): how often round 0 of the chat ranks the top 10 as ``mmrag
search`` does for the same description (dev descriptions, full corpus, the corpus' cached vectors):
search re-ranks its ``prior_pool(10)`` best by cosine; ``mmrag eval chat`` all images (old: by
cosine); a ``ChatSession`` (k 10) its ``max(prior_pool(k), pool)`` best by cosine.

``--fetch-cost N`` (default 100000; 0: off): what a session's candidate fetch costs per round,
``store.search`` for 200 (the pool, what it fetches) vs 2,000 (``prior_pool(pool)``) on a FAISS
store of N random unit vectors with caption-sized metadata.

``--from-json DIR``: each run's CLI JSON is ``DIR/chat_<split>_<questioner>_<image-prior|
no-image-prior>.json``; a run whose file is there is read instead of run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder_tasks import BANK_RESCORE, run_cli  # noqa: E402
from common import write_results  # noqa: E402

QUESTIONERS = ("split", "bank")
ARMS = (("old", "no-image-prior"), ("new", "image-prior"))
RULE_MIN_DELTA = -0.3  # dev Hits@10 at round 5, new - old, for each questioner


def cell_args(split: str, questioner: str, flag: str, rounds: int) -> list[str]:
    return (["eval", "chat", "--split", split, "--search-space", "all", "--questioner", questioner,
             "--rounds", str(rounds)] + (["--rescore-weight", BANK_RESCORE] if questioner == "bank" else [])
            + [f"--{flag}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", nargs="+", default=["dev", "test"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--from-json", type=Path, default=None)
    ap.add_argument("--agreement", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--fetch-cost", type=int, default=100000)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/chat_image_prior.json"))
    a = ap.parse_args()
    folder = a.from_json or Path(tempfile.mkdtemp(prefix="chat_prior_"))
    folder.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    rows, commands = [], []
    for split in a.splits:
        got = {}
        for q in QUESTIONERS:
            for arm, flag in ARMS:
                args = cell_args(split, q, flag, a.rounds)
                commands.append("mmrag " + " ".join(args))
                f = folder / f"chat_{split}_{q}_{flag}.json"
                res = json.loads(f.read_text(encoding="utf-8")) if f.exists() else run_cli(args, f, log)
                if res.get("image_prior") != (arm == "new"):
                    raise SystemExit(f"error: {f} was not run with --{flag}")
                h = res["hits@10"]
                got[q, arm] = h
                rows.append({"split": split, "questioner": q, "arm": arm, "image_prior": arm == "new",
                             "hits@10": h, "hits@1": res["hits@1"], "mean_rank": res["mean_rank"],
                             "r0": h[0], "r5": h[min(5, len(h) - 1)], "gain": round(h[min(5, len(h) - 1)] - h[0], 2),
                             "n_queries": res["n_queries"], "corpus_size": res["corpus_size"],
                             "seconds": res["seconds"]})
        for r in rows:
            if r["split"] == split:
                other = got["bank" if r["questioner"] == "split" else "split", r["arm"]]
                r["split_minus_bank_r5"] = round((r["r5"] - other[min(5, len(other) - 1)])
                                                 * (1 if r["questioner"] == "split" else -1), 2)
    print(f"{'split':<5} {'questioner':<10} {'arm':<4} {'r0':>6} {'r5':>6} {'gain':>6} {'split-bank r5':>14} {'Hits@1 r5':>10}")
    for r in rows:
        print(f"{r['split']:<5} {r['questioner']:<10} {r['arm']:<4} {r['r0']:6.1f} {r['r5']:6.1f} {r['gain']:+6.1f} "
              f"{r['split_minus_bank_r5']:14.1f} {r['hits@1'][min(5, len(r['hits@1']) - 1)]:10.1f}")
    decision = None
    if "dev" in a.splits:
        by = {(r["questioner"], r["arm"]): r["r5"] for r in rows if r["split"] == "dev"}
        deltas = {q: round(by[q, "new"] - by[q, "old"], 2) for q in QUESTIONERS}
        decision = {"rule": f"dev Hits@10 r5 new - old >= {RULE_MIN_DELTA} for split and bank",
                    "dev_delta_r5": deltas, "prior_on_by_default": all(d >= RULE_MIN_DELTA for d in deltas.values())}
        print(f"dev r5 new - old: {deltas}; prior on by default: {decision['prior_on_by_default']}")
    agreement = round0_agreement() if a.agreement else None
    if agreement:
        print("round 0 top 10 identical to search's (dev descriptions): "
              + ", ".join(f"{k} {v:.1f} %" for k, v in agreement.items() if k.endswith("_pct")))
    fetch = fetch_cost(a.fetch_cost) if a.fetch_cost > 0 else None
    if fetch:
        print(f"candidate fetch per round, {a.fetch_cost:,} vectors: "
              + ", ".join(f"k {k}: {v} ms" for k, v in fetch["ms_by_k"].items()))
    write_results(a.json, {"rows": rows, "decision": decision, "round0_agreement_with_search": agreement,
                           "session_fetch_cost": fetch,
                           "cli_commands": commands, "rounds": a.rounds})


def fetch_cost(n: int, ks=(200, 2000), dim: int = 384, queries: int = 20) -> dict:
    import shutil
    import time

    import numpy as np

    from mmrag.index import open_store

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    folder = Path(tempfile.mkdtemp(prefix="chat_fetch_"))
    try:
        store = open_store("faiss", folder / "s", dim)
        for a in range(0, n, 10000):
            b = min(n, a + 10000)
            store.add([f"img{i:08d}" for i in range(a, b)], x[a:b],
                      [{"captions": ["a dog runs on the grass near a fence"], "prior": 0.3}] * (b - a))
        store.save()
        q = x[:queries] + 0.1 * rng.standard_normal((queries, dim)).astype(np.float32)
        out = {}
        for k in ks:
            store.search(q[:1], k=k)
            t = time.perf_counter()
            for i in range(queries):
                store.search(q[i:i + 1], k=k)
            out[str(k)] = round((time.perf_counter() - t) / queries * 1000, 1)
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"vectors": n, "queries": queries, "ms_by_k": out}


def round0_agreement(split: str = "dev", k: int = 10) -> dict:
    import numpy as np

    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders import create_encoder
    from mmrag.encoders.image_prior import rerank_rows
    from mmrag.paths import repo_data_dir
    from mmrag.retrieval import corpus_image_vectors
    from mmrag.retrieval.searcher import prior_pool
    from mmrag.tasks.chat.ranking import RankingConfig

    enc = create_encoder("effnet-minilm")
    full = read_corpus("flickr8k", repo_data_dir() / "flickr8k")
    V = corpus_image_vectors(enc, full, progress=False)
    prior, gate = enc.image_prior(V), enc.image_prior_gate()
    texts = [it.captions[0] for it in full.items if it.split == split and len(it.captions) >= 2]
    S = enc.embed_texts(texts) @ V.T

    def top_of(n_cand: int | None, with_prior: bool = True) -> np.ndarray:
        out = np.zeros((len(S), k), np.int64)
        for i, row in enumerate(S):
            cand = np.argsort(-row, kind="stable")[: n_cand or len(row)]
            sc = rerank_rows(row[cand][None], prior[cand], gate)[0] if with_prior else row[cand]
            out[i] = cand[np.argsort(-sc, kind="stable")[:k]]
        return out

    search = top_of(prior_pool(k))
    same = lambda x: round(100.0 * float((x == search).all(1).mean()), 1)  # noqa: E731
    return {"queries": len(texts), "gated_pct": round(100.0 * float((prior[S.argmax(1)] > gate).mean()), 1),
            "old_chat_cosine_pct": same(top_of(None, False)), "new_eval_chat_all_images_pct": same(top_of(None)),
            "new_session_pct": same(top_of(max(prior_pool(k), RankingConfig().pool))),
            "session_candidates": max(prior_pool(k), RankingConfig().pool)}


if __name__ == "__main__":
    main()
