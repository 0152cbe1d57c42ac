"""Continuous refinement (mRAG-gim Algorithm 2) on Flickr8k: datastore grown from train, dev decides.

    python benchmarks/bench_caption_refine.py [--train-limit N] [--max-iterations 3]
                                              [--arms fixed refit] [--map-lams 1 10]
                                              [--generator consensus] [--dev-limit N]
                                              [--json benchmarks/results/caption_refine.json]

Arms, each from the same starting datastore (Flickr8k train captions):
* ``fixed``: synthetic captions added, no query map (the encoder's bridge only);
* ``refit`` (per ``--map-lams`` value): a least-squares query map fitted on the datastore's train
  pairs before the first dev measurement and refitted after every iteration.
Every iteration is logged (threshold = current dev CIDEr-D, kept count, dev CIDEr-D). Then the
test split (never used for a choice) is scored for the starting datastore and for each arm's
final datastore, all metrics (x100). Image vectors and the datastore are cached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from bench_caption import KEYS, split_vectors  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.tasks.captioning import (  # noqa: E402
    CaptionDatastore,
    MRagCaptioner,
    evaluate_captioner,
    refine_datastore,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--dev-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--max-iterations", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=["fixed", "refit"])
    ap.add_argument("--map-lams", type=float, nargs="+", default=[1.0])
    ap.add_argument("--generator", default="consensus")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "caption_refine.json"))
    a = ap.parse_args()

    enc = create_encoder("effnet-minilm")
    train = read_corpus("flickr8k", a.data_dir, split="train", limit=a.train_limit)
    dev = read_corpus("flickr8k", a.data_dir, split="dev", limit=a.dev_limit)
    test = read_corpus("flickr8k", a.data_dir, split="test", limit=a.test_limit)
    full_train = read_corpus("flickr8k", a.data_dir, split="train")
    base = CaptionDatastore.from_corpus(full_train, enc, split="train", progress=True)
    tag = "" if a.train_limit is None else str(a.train_limit)
    train_v = split_vectors(enc, train, f"train{tag}")
    dev_v = split_vectors(enc, read_corpus("flickr8k", a.data_dir, split="dev"), "dev")[: len(dev)]
    test_v = split_vectors(enc, read_corpus("flickr8k", a.data_dir, split="test"), "test")[: len(test)]

    def score_test(ds, name):
        cap = MRagCaptioner(enc, ds, a.generator)
        r = evaluate_captioner(cap, test, vectors=test_v, metrics=["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
        row = {"method": name, "n_images": r["n_images"], **{k: r.get(k) for k in KEYS},
               "datastore": len(ds), "synthetic": ds.n_synthetic}
        print(f"test | {name:44s} | " + " | ".join(f"{row[k]:5.1f}" for k in KEYS)
              + f" | {len(ds)} ({ds.n_synthetic} synthetic)", flush=True)
        return row

    arms = []
    for arm in a.arms:
        for lam in (a.map_lams if arm == "refit" else [None]):
            name = "fixed map" if arm == "fixed" else f"query map refit (lambda={lam:g})"
            ds = base.copy()
            cap = MRagCaptioner(enc, ds, a.generator)
            t = time.perf_counter()
            rep = refine_datastore(cap, train, dev, max_iterations=a.max_iterations, refit_map=arm == "refit",
                                   map_lam=lam or 1.0, train_vectors=train_v, dev_vectors=dev_v,
                                   log=lambda m: print(m, flush=True))
            arms.append({"arm": name, "report": rep.as_dict(), "seconds": round(time.perf_counter() - t, 1),
                         "_ds": ds})

    test_rows = [score_test(base, f"{a.generator}, Flickr8k train datastore (start)")]
    for arm in arms:
        test_rows.append(score_test(arm.pop("_ds"), f"after refinement, {arm['arm']}"))
    out = {"dataset": "flickr8k", "generator": a.generator, "encoder": enc.fingerprint(),
           "train_images": len(train), "dev_images": len(dev), "test_images": len(test), "arms": arms,
           "test": test_rows}
    write_results(a.json, out)


if __name__ == "__main__":
    main()
