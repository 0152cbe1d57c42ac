"""The effnet-minilm image side, in domain (Flickr8k) and out of domain (COCO dev), per variant.

    python benchmarks/bench_encoder_ood.py [--backbones lite0 lite2] [--json benchmarks/results/encoder_ood.json]

Everything is fitted on Flickr8k train only. Variants are *chosen* on Flickr8k dev + COCO dev
(``../shared/data/coco_dev``, 300 photos, never fitted on) and reported on Flickr8k test beside
them. Frozen features come from ``benchmarks/ood_features.py`` (computed once, cached), so
each variant costs seconds:

* ``ridge``: the shipped recipe (centre + mirror, sqrt-pooled + class mix + mid-level, λ 3000,
  half whitening), the closed-form least-squares bridge;
* ``+zs w``: a zero-shot channel fused late: the ImageNet class probabilities times the
  prompt-ensembled class-name embeddings, brought into the shared space like a caption, added
  to the bridge vector with weight w;
* ``nce``: the ridge map refined with InfoNCE (mmrag.encoders.contrastive), and ``nce +zs``;
* the same on EfficientNet-Lite2 features.

Prints t2i and i2t (with the hubness prior) R@1/5/10 for each split; writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from benchmarks.ood_features import load_split  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.encoders.bridge import Bridge, BridgeConfig  # noqa: E402
from mmrag.encoders.contrastive import ContrastiveConfig, train_contrastive  # noqa: E402
from mmrag.encoders.effnet_minilm import (FeatureRecipe, design_matrix, fill_standardisation,  # noqa: E402
                                          imagenet_class_names, zeroshot_class_text)
from mmrag.eval.retrieval import retrieval_scores  # noqa: E402
from mmrag.paths import cache_dir  # noqa: E402

EVAL = ("dev", "coco_dev", "test")
# mmrag quickstart's text queries and the sample photo each one is about
QUICKSTART = {"a cat": "chelsea", "a cup of coffee": "coffee", "a rocket launch": "rocket",
              "coins on a table": "coins", "an astronaut": "astronaut"}
_TEXT = None


def text_encoder():
    global _TEXT
    if _TEXT is None:
        from mmrag.encoders.minilm import MiniLMTextEncoder

        _TEXT = MiniLMTextEncoder()
    return _TEXT


def class_tables() -> tuple[np.ndarray, np.ndarray]:
    """(class-mix table as shipped: 'a photo of a {}.', prompt-ensembled zero-shot table)."""
    p = cache_dir() / "ood" / "class_text_v1.npz"
    if p.exists():
        z = np.load(p)
        return z["mix"], z["zs"]
    mix = text_encoder().embed([FeatureRecipe().class_template.format(n) for n in imagenet_class_names()])
    zs = zeroshot_class_text(text_encoder())
    np.savez(p, mix=mix, zs=zs)
    return mix, zs


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def parts(d, r: FeatureRecipe, mix_table, per_view=False):
    """Raw design parts, view-averaged ([n, dim]) or per view ([n, v, dim])."""
    pooled = np.maximum(d["pooled"].astype(np.float32), 0) ** r.pooled_power
    probs = softmax(d["logits"].astype(np.float32) / r.temperature)
    mix = probs @ mix_table
    mid = d["mid"].astype(np.float32)
    if per_view:
        return pooled, mix, mid, probs
    return pooled.mean(1), mix.mean(1), mid.mean(1), probs.mean(1)


def captions(d):
    owner = np.repeat(np.arange(len(d["n_caps"])), d["n_caps"])
    caps = d["caps"].astype(np.float32)
    m = np.zeros((len(d["n_caps"]), caps.shape[1]))
    np.add.at(m, owner, caps)
    return l2_normalize(m), caps, owner


def fmt(r):
    return "/".join(f"{r[k]:.1f}" for k in ("R@1", "R@5", "R@10"))


class Bench:
    def __init__(self, backbone: str, views=("center", "flip")):
        from benchmarks.ood_features import VIEWS

        self.backbone = backbone
        self.views = list(views)
        keep = [VIEWS.index(v) for v in views]
        self.data = {}
        for s in ("train", "samples") + EVAL:
            d = dict(load_split(backbone, s))
            for k in ("pooled", "logits", "mid"):
                d[k] = d[k][:, keep]
            self.data[s] = d
        self.mix_table, self.zs_table = class_tables()
        self.recipe = FeatureRecipe(views=self.views, mid_weight=1.0)
        tr = self.data["train"]
        pooled, mix, mid, _ = parts(tr, self.recipe, self.mix_table)
        fill_standardisation(self.recipe, pooled, mix, mid)
        self.X = {s: design_matrix(*parts(self.data[s], self.recipe, self.mix_table)[:2], self.recipe,
                                   parts(self.data[s], self.recipe, self.mix_table)[2]) for s in ("train", "samples") + EVAL}
        self.probs = {s: parts(self.data[s], self.recipe, self.mix_table)[3] for s in ("train", "samples") + EVAL}
        from benchmarks.ood_features import split_rows

        names = [Path(p).stem for p in split_rows("samples")[0]]
        self.qs_target = np.array([names.index(v) for v in QUICKSTART.values()])
        self.qs_text = text_encoder().embed(list(QUICKSTART))
        # Concept queries on COCO dev: every ImageNet class name (first synonym, lower case)
        # that at least 3 of its photos' captions use as a word; relevant = those photos.
        import re

        caps = split_rows("coco_dev")[1]
        words = [set(re.findall(r"[a-z]+(?: [a-z]+)?", " ".join(c).lower())) | set(" ".join(c).lower().split())
                 for c in caps]
        joined = [" " + " ".join(c).lower() + " " for c in caps]
        self.concepts = {}
        for n in {x.lower() for x in imagenet_class_names()}:
            rel = [i for i, j in enumerate(joined) if f" {n} " in j or f" {n}s " in j]
            if len(rel) >= 3:
                self.concepts[n] = rel
        self.concept_text = text_encoder().embed(list(self.concepts)) if self.concepts else None
        self.Y = {s: captions(self.data[s]) for s in ("train",) + EVAL}

    def ridge(self, lam=3000.0, whiten=0.5) -> Bridge:
        b = Bridge.fit(self.X["train"], self.Y["train"][0], BridgeConfig(lam=lam))
        if whiten:
            b.whiten_text_space(self.Y["train"][1], whiten)
        self.set_bank(b)
        return b

    def set_bank(self, b: Bridge, zs_weight: float = 0.0) -> None:
        """The hubness bank as fit_effnet_bridge makes it: 1,000 mapped training images."""
        X = self.X["train"]
        pick = np.sort(np.random.default_rng(0).choice(len(X), 1000, replace=False))
        b.extras["hub_bank"] = self.image_vectors(b, "train", zs_weight, pick)

    def image_vectors(self, b: Bridge, split: str, zs_weight: float, rows=slice(None)) -> np.ndarray:
        G = b.transform(self.X[split][rows])
        if zs_weight:
            G = l2_normalize(G + zs_weight * b.center_text(self.probs[split][rows] @ self.zs_table))
        return G

    def nce(self, base: Bridge, cfg: ContrastiveConfig) -> Bridge:
        """InfoNCE refinement of base's map in the whitened space (see contrastive.py)."""
        pv = parts(self.data["train"], self.recipe, self.mix_table, per_view=True)
        nv = pv[0].shape[1]
        Xv = np.stack([design_matrix(pv[0][:, v], pv[1][:, v], self.recipe, pv[2][:, v]) for v in range(nv)], 1)
        Xv = Xv - base.x_mean
        M = base.extras["text_whitening"]
        T = base.center_text(self.Y["train"][1])
        W = train_contrastive(Xv, T, self.Y["train"][2], base.W @ M, cfg)
        b = Bridge(W, base.x_mean, base.y_mean, replace(base.config, method="infonce", whitened_output=True),
                   extras={k: v for k, v in base.extras.items() if k != "hub_bank"})
        self.set_bank(b)
        return b

    def evaluate(self, b: Bridge, zs_weight: float = 0.0) -> dict:
        out = {}
        self.set_bank(b, zs_weight)
        for s in EVAL:
            G = self.image_vectors(b, s, zs_weight)
            T = b.center_text(self.Y[s][1])
            r = retrieval_scores(G, T, self.Y[s][2], b.caption_prior(T))
            out[s] = {"t2i": r["t2i"], "i2t": r["i2t"]}
        S = b.center_text(self.qs_text) @ self.image_vectors(b, "samples", zs_weight).T
        own = S[np.arange(len(S)), self.qs_target]
        out["quickstart_ranks"] = ((S >= own[:, None]).sum(1)).tolist()  # 1 = found first
        if self.concept_text is not None:
            S = b.center_text(self.concept_text) @ self.image_vectors(b, "coco_dev", zs_weight).T
            p5 = [np.isin(np.argsort(-s)[:5], rel).mean() for s, rel in zip(S, self.concepts.values())]
            out["coco_concept_p5"] = round(100 * float(np.mean(p5)), 1)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["lite0"])
    ap.add_argument("--zs", nargs="+", type=float, default=[0.0, 0.3, 0.5, 0.7, 1.0])
    ap.add_argument("--nce", nargs="*", default=["10:0.05:0", "20:0.05:0", "10:0.03:0", "20:0.05:0.1"],
                    help="InfoNCE settings epochs:temperature:anchor[:lr[:weight_decay]]")
    ap.add_argument("--ridge", nargs="+", default=["3000:0.5"], help="ridge settings lambda:whitening; "
                    "the first is the start of the InfoNCE runs")
    ap.add_argument("--views", nargs="+", default=["center", "flip"], help="views averaged (of center, flip)")
    ap.add_argument("--json", default="benchmarks/results/encoder_ood.json")
    a = ap.parse_args()
    rows = []
    head = (f"{'backbone':<9}{'variant':<26}" + "".join(f"| {s + ' t2i':>16} {s + ' i2t':>16} " for s in EVAL)
            + "| quickstart ranks | COCO concept P@5")
    print(head)

    def show(bb, name, res, extra=None):
        line = f"{bb:<9}{name:<26}" + "".join(f"| {fmt(res[s]['t2i']):>16} {fmt(res[s]['i2t']):>16} " for s in EVAL)
        line += "| " + ",".join(map(str, res["quickstart_ranks"])) + f" | {res.get('coco_concept_p5', '-')}"
        print(line, flush=True)
        rows.append({"backbone": bb, "variant": name, **res, **(extra or {})})

    for bb in a.backbones:
        bench = Bench(bb, a.views)
        bb = bb + ("" if a.views == ["center", "flip"] else "/" + "+".join(v[0] for v in a.views))
        base = None
        for spec in a.ridge:
            lam, wh = map(float, spec.split(":"))
            b = bench.ridge(lam, wh)
            base = base or b
            for w in a.zs:
                show(bb, f"ridge {lam:g}:{wh:g} +zs {w:g}", bench.evaluate(b, w), {"zs_weight": w, "lam": lam, "whiten": wh})
        for spec in a.nce:
            ep, tau, anchor, *rest = spec.split(":")
            cfg = ContrastiveConfig(epochs=int(ep), temperature=float(tau), anchor=float(anchor))
            if rest:
                cfg.lr = float(rest[0])
            if len(rest) > 1:
                cfg.weight_decay = float(rest[1])
            t = time.perf_counter()
            b = bench.nce(base, cfg)
            dt = time.perf_counter() - t
            for w in a.zs:
                show(bb, f"nce {spec} +zs {w:g}", bench.evaluate(b, w),
                     {"zs_weight": w, "nce": cfg.as_dict(), "train_s": round(dt, 1)})
    write_results(a.json, {"rows": rows})


if __name__ == "__main__":
    main()
