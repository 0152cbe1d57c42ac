"""The ``local`` language-model generator (SmolLM2-135M-Instruct, offline) in mRAG-gim captioning.

    python benchmarks/bench_caption_local.py [--dev-images 40] [--test-images 200]
                                             [--json benchmarks/results/caption_local.json]

1. Dev (first ``--dev-images`` Flickr8k dev images): prompt style (smallcap / instruct) x
   caption selection (similarity / consensus) x captions in the prompt (3 / 5), order "first";
   then the order "last" for the best. The choice rule: best dev CIDEr-D.
2. Test (first ``--test-images`` test images, never used for a choice): nearest caption,
   consensus (the default generator) and the chosen ``local`` configuration on the same images,
   all metrics (x100), with seconds per image for the generation step.

Same encoder and datastore as ``bench_caption.py`` (Flickr8k train captions; image vectors and
datastore cached). Generation is greedy, so reruns give the same captions.
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
from mmrag.generators import create_generator  # noqa: E402
from mmrag.tasks.captioning import CaptionDatastore, MRagCaptioner, evaluate_captioner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--dev-images", type=int, default=40)
    ap.add_argument("--test-images", type=int, default=200)
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "caption_local.json"))
    a = ap.parse_args()

    enc = create_encoder("effnet-minilm")
    train = read_corpus("flickr8k", a.data_dir, split="train")
    dev = read_corpus("flickr8k", a.data_dir, split="dev")
    test = read_corpus("flickr8k", a.data_dir, split="test")
    ds = CaptionDatastore.from_corpus(train, enc, split="train", progress=True)
    dev_v, test_v = split_vectors(enc, dev, "dev"), split_vectors(enc, test, "test")
    dev_s = read_corpus("flickr8k", a.data_dir, split="dev", limit=a.dev_images)
    test_s = read_corpus("flickr8k", a.data_dir, split="test", limit=a.test_images)
    dev_v, test_v = dev_v[: len(dev_s)], test_v[: len(test_s)]
    local = create_generator("local")

    def run(corpus, vecs, generator, metrics, **opts):
        cap = MRagCaptioner(enc, ds, generator, **opts)
        t = time.perf_counter()
        r = evaluate_captioner(cap, corpus, vectors=vecs, metrics=metrics)
        r["wall_s"] = time.perf_counter() - t
        preds = r.pop("predictions")
        r["examples"] = [{"id": i, "caption": c} for i, c in list(preds.items())[:5]]
        return r

    grid = [dict(prompt_style=s, select=sel, prompt_captions=n, order="first")
            for s in ("smallcap", "instruct") for sel in ("similarity", "consensus") for n in (3, 5)]
    dev_rows = []
    print(f"Dev ({len(dev_s)} images), local generator: style | select | n | order | BLEU-4 | CIDEr-D | s/img")

    def dev_run(cfg):
        r = run(dev_s, dev_v, local, ["BLEU", "CIDEr"], **cfg)
        row = {**cfg, "BLEU-4": r["BLEU-4"], "CIDEr-D": r["CIDEr-D"],
               "s_per_image": r["seconds_per_image_retrieve_generate"], "examples": r["examples"]}
        dev_rows.append(row)
        print(f"{cfg['prompt_style']:9s} | {cfg['select']:10s} | {cfg['prompt_captions']} | {cfg['order']:5s} | "
              f"{row['BLEU-4']:5.1f} | {row['CIDEr-D']:5.1f} | {row['s_per_image']:.2f}", flush=True)

    for cfg in grid:
        dev_run(cfg)
    best = max(dev_rows, key=lambda r: r["CIDEr-D"])
    dev_run({**{k: best[k] for k in ("prompt_style", "select", "prompt_captions")}, "order": "last"})
    best = max(dev_rows, key=lambda r: r["CIDEr-D"])
    chosen = {k: best[k] for k in ("prompt_style", "select", "prompt_captions", "order")}
    print(f"chosen on dev: {chosen}")

    metrics = ["BLEU", "METEOR", "ROUGE_L", "CIDEr"]
    test_rows = []
    print(f"\nTest (first {len(test_s)} images): " + " | ".join(["method", *KEYS, "s/img"]))
    for name, gen, opts in [("nearest caption (k=1)", "consensus", {"k": 1}),
                            ("consensus-CIDEr-D k=100 (default)", "consensus", {}),
                            ("local (SmolLM2-135M), chosen on dev", local, chosen)]:
        r = run(test_s, test_v, gen, metrics, **opts)
        row = {"method": name, "n_images": r["n_images"], **{k: r.get(k) for k in KEYS},
               "s_per_image": r["seconds_per_image_retrieve_generate"], "examples": r["examples"]}
        test_rows.append(row)
        print(f"{name:38s} | " + " | ".join(f"{row[k]:5.1f}" if row[k] is not None else "  -  " for k in KEYS)
              + f" | {row['s_per_image']:.3f}", flush=True)

    out = {"dataset": "flickr8k", "encoder": enc.fingerprint(), "datastore": {"split": "train", "captions": len(ds)},
           "generator": {"name": "local", "model": str(getattr(local, "model_path", "")), "runtime": getattr(local, "runtime", "")},
           "dev_images": len(dev_s), "dev": dev_rows, "chosen": chosen, "test_images": len(test_s), "test": test_rows}
    write_results(a.json, out)


if __name__ == "__main__":
    main()
