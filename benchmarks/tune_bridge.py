"""Choose the effnet-minilm bridge recipe on Flickr8k dev (fit on train, never on test).

Grid: views x ridge lambda x mid-level features on/off x caption-space whitening (0 / 0.5);
the class mix and sqrt pooling are always on (each helped in earlier dev runs, docs/benchmarks.md).

    python benchmarks/tune_bridge.py --data-dir ../shared/data/flickr8k [--json benchmarks/results/tune_bridge.json] [--test]

Computes the raw image features (all views) of the train and dev images once (cached under
the mmrag cache directory), then fits a ridge bridge for each setting in the grid and prints
dev Recall@K both ways. ``--test`` also reports the chosen setting on test, for the record.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.encoders.bridge import Bridge, BridgeConfig  # noqa: E402
from mmrag.encoders.effnet_minilm import FeatureRecipe, RawImageFeatures, design_matrix, fill_standardisation  # noqa: E402
from mmrag.encoders.minilm import MiniLMTextEncoder  # noqa: E402
from mmrag.eval.retrieval import retrieval_scores  # noqa: E402
from mmrag.paths import cache_dir  # noqa: E402

VIEWS = ["center", "flip", "full"]


def features(split: str, data_dir: str, text: MiniLMTextEncoder, recipe_all: FeatureRecipe, limit=None):
    cache = cache_dir() / f"tune_flickr8k_{split}_v2{'_' + str(limit) if limit else ''}.npz"
    if cache.exists():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    c = read_corpus("flickr8k", data_dir, split=split, limit=limit)
    raw = RawImageFeatures(recipe_all, text)
    f = raw.featurizer.features([it.path for it in c.items], progress=None)
    caps = text.embed([c_ for it in c.items for c_ in it.captions], progress=True)
    out = {"pooled": f.pooled.astype(np.float16), "logits": f.logits.astype(np.float16),
           "mid": f.mid.astype(np.float16),
           "caps": caps.astype(np.float16), "n_caps": np.array([len(it.captions) for it in c.items]),
           "class_text": raw.class_text}
    np.savez(cache, **out)
    return out


def design(d, r: FeatureRecipe, class_text):
    idx = [VIEWS.index(v) for v in r.views]
    pooled = (np.maximum(d["pooled"][:, idx].astype(np.float32), 0) ** r.pooled_power).mean(1)
    z = d["logits"][:, idx].astype(np.float32) / r.temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    mix = (z / z.sum(-1, keepdims=True)).mean(1) @ class_text
    return pooled, mix, d["mid"][:, idx].astype(np.float32).mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--json", default="benchmarks/results/tune_bridge.json")
    ap.add_argument("--test", action="store_true", help="also report the chosen setting on test")
    ap.add_argument("--limit", type=int, default=None, help="images per split (smoke runs)")
    a = ap.parse_args()
    text = MiniLMTextEncoder()
    all_views = FeatureRecipe(views=VIEWS)
    splits = ["train", "dev"] + (["test"] if a.test else [])
    data = {s: features(s, a.data_dir, text, all_views, a.limit) for s in splits}
    class_text = data["train"]["class_text"]
    Y = {}
    for s, d in data.items():
        owner = np.repeat(np.arange(len(d["n_caps"])), d["n_caps"])
        caps = d["caps"].astype(np.float32)
        m = np.zeros((len(d["n_caps"]), caps.shape[1]))
        np.add.at(m, owner, caps)
        Y[s] = (l2_normalize(m), caps, owner)

    grid = []
    for views, lam, mw, wh in itertools.product(
        [["center"], ["center", "flip"], ["center", "flip", "full"]], [1000, 3000, 10000], [0, 1], [0, 0.5]
    ):
        grid.append((FeatureRecipe(views=views, mid_weight=mw), lam, wh))
    rows = []
    print(f"{'views':<20}{'lam':>7}{'mid':>5}{'whit':>5} | {'t2i R@1/5/10':>18} | {'i2t R@1/5/10':>18} | {'i2t+hub R@1':>11}")
    best = None
    for r, lam, wh in grid:
        pooled, mix, mid = design(data["train"], r, class_text)
        rr = replace(r)
        fill_standardisation(rr, pooled, mix, mid)
        X = design_matrix(pooled, mix, rr, mid)
        b = Bridge.fit(X, Y["train"][0], BridgeConfig(lam=lam))
        if wh:
            b.whiten_text_space(Y["train"][1], wh)
        bank = b.transform(X[np.sort(np.random.default_rng(0).choice(len(X), min(1000, len(X)), replace=False))])
        b.extras["hub_bank"] = bank
        dp, dm, dd = design(data["dev"], r, class_text)
        G = b.transform(design_matrix(dp, dm, rr, dd))
        T = b.center_text(Y["dev"][1])
        res = retrieval_scores(G, T, Y["dev"][2])
        hub = retrieval_scores(G, T, Y["dev"][2], b.caption_prior(T))
        row = {"views": r.views, "lam": lam, "mid_weight": r.mid_weight, "whiten": wh,
               "dev_t2i": res["t2i"], "dev_i2t": res["i2t"], "dev_i2t_hub": hub["i2t"]}
        rows.append(row)
        f = lambda d: "/".join(f"{d[k]:.1f}" for k in ("R@1", "R@5", "R@10"))  # noqa: E731
        print(f"{'+'.join(r.views):<20}{lam:>7}{r.mid_weight:>5}{wh:>5} | {f(res['t2i']):>18} | {f(res['i2t']):>18} | {hub['i2t']['R@1']:>11.1f}", flush=True)
        score = res["t2i"]["R@1"] + res["t2i"]["R@5"] / 5
        if best is None or score > best[0]:
            best = (score, row, r, lam)
    print("chosen on dev:", {k: best[1][k] for k in ("views", "lam", "mid_weight", "whiten")})
    out = {"grid": rows, "chosen": best[1]}
    write_results(a.json, out)


if __name__ == "__main__":
    main()
