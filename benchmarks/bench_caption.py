"""Captioning benchmark (mRAG-gim) on Flickr8k: datastore = train captions, choices made on dev.

    python benchmarks/bench_caption.py [--data-dir ../shared/data/flickr8k] [--ks 10 30 60]
                                       [--similarities cider bleu embedding] [--limit N]
                                       [--json benchmarks/results/caption.json] [--refine-subset N]

1. Dev grid: nearest caption (k=1) and consensus over k for each similarity (BLEU-4, CIDEr-D on
   dev only); the best (by dev CIDEr-D) is the chosen configuration.
2. Test (never used for a choice): nearest caption, embedding-consensus over 30 (the
   prototype's configuration) and the chosen configuration, all metrics (×100).
3. Time per image for the chosen configuration: one image at a time end to end (embed + retrieve
   + consensus) and the retrieve + consensus part alone.
4. Optional (``--refine-subset N``): one refinement iteration (Algorithm 2) with N train images.

Image vectors of each split are cached under the mmrag cache (keyed by the encoder), as is the
datastore, so a rerun skips the encoders.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.retrieval import corpus_image_vectors  # noqa: E402
from mmrag.tasks.captioning import (  # noqa: E402
    CaptionDatastore,
    MRagCaptioner,
    evaluate_captioner,
    refine_datastore,
)

KEYS = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]


def split_vectors(enc, corpus, split: str) -> np.ndarray:
    return corpus_image_vectors(enc, corpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 30, 60])
    ap.add_argument("--similarities", nargs="+", default=["cider", "bleu", "embedding"])
    ap.add_argument("--limit", type=int, default=None, help="first N dev/test images (quick runs)")
    ap.add_argument("--timing-images", type=int, default=100)
    ap.add_argument("--refine-subset", type=int, default=0, help="train images for one refinement iteration")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "caption.json"))
    a = ap.parse_args()

    enc = create_encoder("effnet-minilm")
    train = read_corpus("flickr8k", a.data_dir, split="train")
    dev = read_corpus("flickr8k", a.data_dir, split="dev", limit=a.limit)
    test = read_corpus("flickr8k", a.data_dir, split="test", limit=a.limit)
    t = time.perf_counter()
    ds = CaptionDatastore.from_corpus(train, enc, split="train", progress=True)
    print(f"datastore: {len(ds)} captions of {ds.info.get('n_images')} train images "
          f"({time.perf_counter() - t:.1f} s, cached)", file=sys.stderr)
    dev_v, test_v = split_vectors(enc, dev, "dev"), split_vectors(enc, test, "test")

    def run(corpus, vecs, k, gen_opts, metrics, method):
        cap = MRagCaptioner(enc, ds, "consensus", k=k, generator_options=dict(gen_opts))
        r = evaluate_captioner(cap, corpus, vectors=vecs, metrics=metrics, method=method)
        r.pop("predictions")
        return r

    configs = [("nearest caption (k=1)", 1, {"similarity": "embedding"})]
    for sim in a.similarities:
        for k in a.ks:
            configs.append((f"consensus-{sim} k={k}", k, {"similarity": sim}))
    dev_rows = []
    print(f"\nDev ({len(dev)} images): method | BLEU-4 | CIDEr-D | s/img (retrieve+consensus)")
    for name, k, opts in configs:
        r = run(dev, dev_v, k, opts, ["BLEU", "CIDEr"], name)
        row = {"method": name, "k": k, **opts, "BLEU-4": r["BLEU-4"], "CIDEr-D": r["CIDEr-D"],
               "s_per_image": r["seconds_per_image_retrieve_generate"]}
        dev_rows.append(row)
        print(f"{name:32s} | {row['BLEU-4']:5.1f} | {row['CIDEr-D']:5.1f} | {row['s_per_image']:.4f}", flush=True)
    best = max(dev_rows[1:], key=lambda r: r["CIDEr-D"])
    print(f"chosen on dev: {best['method']}")

    test_cfgs = [("nearest caption (k=1)", 1, {"similarity": "embedding"}),
                 ("consensus-embedding k=30 (prototype config)", 30, {"similarity": "embedding"}),
                 (f"{best['method']} (chosen on dev)", best["k"], {"similarity": best["similarity"]})]
    test_rows = []
    print(f"\nTest ({len(test)} images): " + " | ".join(["method", *KEYS]))
    for name, k, opts in test_cfgs:
        r = run(test, test_v, k, opts, ["BLEU", "METEOR", "ROUGE_L", "CIDEr"], name)
        row = {"method": name, "n_images": r["n_images"], **{key: r.get(key) for key in KEYS},
               "skipped": r["skipped"]}
        test_rows.append(row)
        print(f"{name:46s} | " + " | ".join(f"{row[key]:5.1f}" if row[key] is not None else "  -  " for key in KEYS),
              flush=True)

    # timing, chosen configuration
    cap = MRagCaptioner(enc, ds, "consensus", k=best["k"], generator_options={"similarity": best["similarity"]})
    paths = [it.path for it in test.items[: a.timing_images]]
    cap.caption(paths[0])  # warm-up (loads the image network)
    t = time.perf_counter()
    for p in paths:
        cap.caption(p)
    single = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    cap.caption_vectors(test_v[: a.timing_images], [it.id for it in test.items[: a.timing_images]])
    rg = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    cap.caption_batch(paths)
    batched = (time.perf_counter() - t) / len(paths)
    timing = {"config": best["method"], "images": len(paths), "s_per_image_single_end_to_end": single,
              "s_per_image_batched_end_to_end": batched, "s_per_image_retrieve_consensus": rg}
    print(f"\ntime per image ({best['method']}, {len(paths)} test images): one at a time end to end "
          f"{single:.3f} s; batched {batched:.3f} s; retrieve+consensus alone {rg:.4f} s")

    refine = None
    if a.refine_subset:
        sub = read_corpus("flickr8k", a.data_dir, split="train", limit=a.refine_subset)
        tv = split_vectors(enc, sub, f"train{a.refine_subset}")
        ds2 = ds.copy()
        cap2 = MRagCaptioner(enc, ds2, "consensus", k=best["k"], generator_options={"similarity": best["similarity"]})
        rep = refine_datastore(cap2, sub, dev, max_iterations=1, dev_vectors=dev_v, train_vectors=tv,
                               log=lambda m: print(m, flush=True))
        refine = rep.as_dict()
        refine["train_images"] = len(sub)
        if rep.added_total:
            r = run_with(enc, ds2, test, test_v, best)
            refine["test"] = {key: r.get(key) for key in KEYS}
            print("after refinement, test: " + " ".join(f"{key} {r[key]:.1f}" for key in KEYS if key in r))

    out = {"dataset": "flickr8k", "datastore": {"split": "train", "captions": len(ds)},
           "encoder": enc.fingerprint(), "dev": dev_rows, "chosen": best, "test": test_rows,
           "timing": timing, "refinement": refine}
    write_results(a.json, out)


def run_with(enc, ds, corpus, vecs, best):
    cap = MRagCaptioner(enc, ds, "consensus", k=best["k"], generator_options={"similarity": best["similarity"]})
    r = evaluate_captioner(cap, corpus, vectors=vecs, metrics=["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
    r.pop("predictions")
    return r


if __name__ == "__main__":
    main()
