"""Text embedding cost: all-MiniLM-L6-v2 on sentence-transformers/torch vs ONNX Runtime.

    python benchmarks/bench_text_embed.py [--queries 300] [--batches 1 8 32] [--json benchmarks/results/text_embed.json]

Both backends run with one intra-op thread (what ``mmrag serve`` uses, ``model_threads=1``) on
real Flickr8k test captions, cut into batches of each size, one ``embed`` call per batch (what
the server's text micro-batcher does). Rounds alternate torch, onnx, torch, onnx and the best
round of each is kept, since the machine may be noisy; the load average is recorded with the
result. Also reports the largest difference between the two backends' vectors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders.minilm import MiniLMTextEncoder  # noqa: E402


def ms_per_query(enc: MiniLMTextEncoder, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc.embed(texts[i : i + batch], batch_size=batch)
    return 1000 * (time.perf_counter() - t) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. 'machine busy')")
    ap.add_argument("--json", default="benchmarks/results/text_embed.json")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    corpus = read_corpus("flickr8k", a.data_dir, split="test")
    texts = [c for it in corpus.items for c in it.captions][: a.queries]
    load = {}
    t = time.perf_counter()
    encs = {"torch": MiniLMTextEncoder(backend="torch")}
    load["torch"] = time.perf_counter() - t
    MiniLMTextEncoder(backend="onnx", threads=1)  # export the graph if not cached yet (not timed)
    t = time.perf_counter()
    encs["onnx"] = MiniLMTextEncoder(backend="onnx", threads=1)
    load["onnx"] = time.perf_counter() - t
    for enc in encs.values():  # warm up
        enc.embed(texts[:16], batch_size=8)
    diff = float(np.abs(encs["onnx"].embed(texts) - encs["torch"].embed(texts)).max())

    best: dict[str, dict[int, float]] = {k: {} for k in encs}
    for _ in range(a.repeats):
        for b in a.batches:
            for name, enc in encs.items():
                v = ms_per_query(enc, texts, b)
                best[name][b] = min(best[name].get(b, float("inf")), v)

    load_avg = os.getloadavg()
    res = {
        "load_average_1_5_15": [round(x, 2) for x in load_avg],
        "note": a.note,
        "threads": 1,
        "queries": len(texts),
        "repeats": a.repeats,
        "ms_per_query": {name: {str(b): round(v, 3) for b, v in d.items()} for name, d in best.items()},
        "speedup": {str(b): round(best["torch"][b] / best["onnx"][b], 2) for b in a.batches},
        "load_s": {k: round(v, 2) for k, v in load.items()},
        "max_abs_diff": diff,
    }
    print(f"{len(texts)} queries, 1 thread, best of {a.repeats}; load average {load_avg[0]:.2f}"
          + (f" ({a.note})" if a.note else ""))
    print(f"{'batch':>6}{'torch ms/q':>12}{'onnx ms/q':>12}{'speedup':>9}")
    for b in a.batches:
        print(f"{b:>6}{best['torch'][b]:>12.2f}{best['onnx'][b]:>12.2f}{res['speedup'][str(b)]:>8.2f}x")
    print(f"load: torch {res['load_s']['torch']} s, onnx {res['load_s']['onnx']} s; max abs diff {diff:.2g}")
    write_results(a.json, res)


if __name__ == "__main__":
    main()
