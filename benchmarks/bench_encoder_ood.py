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

``--levers`` (issue 15, second round) runs instead the levers not tried in the first round, side
by side with the ``flickr8k-train-v2`` recipe as the baseline row, on the richer cached Lite2
features of ``ood_features.py --rich`` (see :class:`Levers`). Its group (f) (``--only baseline
"f spare"``) holds the t2i hubness corrections meant to spare the one-word concept queries
(``Levers.spare``). Adoption rule for (f), stated before any test figure was read: a variant
becomes the default only if Flickr8k dev t2i R@1 and COCO dev t2i R@1 each gain >= +0.5 over
the v2 baseline row, COCO concept P@5 falls by <= 1.0 and no quickstart rank gets worse.
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

from benchmarks.ood_features import load_rich, load_split  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.encoders.bridge import Bridge, BridgeConfig  # noqa: E402
from mmrag.encoders.contrastive import ContrastiveConfig, train_contrastive  # noqa: E402
from mmrag.encoders.effnet_minilm import (V2_LAMBDA, V2_ZEROSHOT_WEIGHT, FeatureRecipe,  # noqa: E402
                                          design_matrix, fill_standardisation, imagenet_class_names,
                                          zeroshot_class_text)
from mmrag.eval.metrics import recall_at_k  # noqa: E402
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


def query_sets():
    """(quickstart target rows, quickstart query vectors, COCO dev concepts, concept vectors)."""
    from benchmarks.ood_features import split_rows

    names = [Path(p).stem for p in split_rows("samples")[0]]
    qs_target = np.array([names.index(v) for v in QUICKSTART.values()])
    qs_text = text_encoder().embed(list(QUICKSTART))
    # Concept queries on COCO dev: every ImageNet class name (first synonym, lower case)
    # that at least 3 of its photos' captions use as a word; relevant = those photos.
    caps = split_rows("coco_dev")[1]
    joined = [" " + " ".join(c).lower() + " " for c in caps]
    concepts = {}
    for n in {x.lower() for x in imagenet_class_names()}:
        rel = [i for i, j in enumerate(joined) if f" {n} " in j or f" {n}s " in j]
        if len(rel) >= 3:
            concepts[n] = rel
    concept_text = text_encoder().embed(list(concepts)) if concepts else None
    return qs_target, qs_text, concepts, concept_text


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
        self.qs_target, self.qs_text, self.concepts, self.concept_text = query_sets()
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


# --- issue 15, second round -------------------------------------------------------------------

# Head-map kinds are non-negative (ReLU6): power-normalised like the shipped pooled part.
_SQRT_KINDS = ("pooled", "max", "gem", "grid")
V2_PARTS = (("pooled", 1.0), ("mix", 1.0), ("mid", 1.0))


class MissingViews(LookupError):
    pass


class Levers:
    """The second round's levers on cached frozen Lite2 features (``ood_features.py --rich``).

    Every variant is a bridge fitted on Flickr8k train (centre crop; the only view cached for
    train) and evaluated like ``Bench.evaluate``; its design vector is a list of (kind, weight)
    parts, each standardised on train and scaled by weight/sqrt(dim) like ``design_matrix``.
    """

    def __init__(self, backbone: str = "lite2", evals=EVAL):
        self.evals = tuple(evals)
        self.data = {s: load_rich(backbone, s) for s in ("train", "samples") + self.evals}
        self.mix_table, self.zs_table = class_tables()
        self.Y = {s: captions(self.data[s]) for s in ("train",) + self.evals}
        self.qs_target, self.qs_text, self.concepts, self.concept_text = query_sets()
        self._raw: dict = {}
        self._stats: dict = {}

    def raw(self, split: str, kind: str, views=("center",)) -> np.ndarray:
        """One kind of feature, [n, dim], averaged over views (each view transformed first)."""
        d = self.data[split]
        have = [str(v) for v in d["views"]]
        vs = tuple(v for v in views if v in have)
        if split == "train":
            vs = ("center",)
        elif vs != tuple(views):
            raise MissingViews(f"{split} has the views {have} cached, not {list(views)} "
                               "(ood_features.py --rich --eval-views)")
        key = (split, kind, vs)
        if key not in self._raw:
            idx = [have.index(v) for v in vs]
            src = "logits" if kind in ("mix", "probs") else kind
            a = d[src][:, idx].astype(np.float32)
            if kind in _SQRT_KINDS:
                a = np.sqrt(np.maximum(a, 0))
            elif kind in ("mix", "probs"):
                a = softmax(a)
                if kind == "mix":
                    a = a @ self.mix_table
            self._raw[key] = a.mean(1)
        return self._raw[key]

    def design(self, split: str, parts_, views=("center",)) -> np.ndarray:
        out = []
        for kind, w in parts_:
            if kind not in self._stats:
                t = self.raw("train", kind)
                self._stats[kind] = (t.mean(0), t.std(0) + 1e-6)
            m, sd = self._stats[kind]
            a = (self.raw(split, kind, views) - m) / sd
            out.append(a * (w / np.sqrt(a.shape[1])))
        return np.concatenate(out, 1).astype(np.float32)

    def probs(self, split: str, views=("center",)) -> np.ndarray:
        return self.raw(split, "probs", views)

    def targets(self, kind: str = "mean"):
        """(rows X index, Y rows) of the fit: 'mean' (the shipped: unit mean of the unit caption
        vectors), 'mean_raw' (not re-normalised), 'rows' (each caption its own row)."""
        Ym, C, owner = self.Y["train"]
        if kind == "mean":
            return np.arange(len(Ym)), Ym
        if kind == "mean_raw":
            m = np.zeros_like(Ym)
            np.add.at(m, owner, C)
            return np.arange(len(Ym)), m / np.bincount(owner)[:, None]
        if kind == "rows":
            return owner, C
        raise ValueError(kind)

    def caption_batches(self, b: Bridge):
        """Torch tensors for training in ``b``'s shared space: every train caption (``Tw``), each
        image's target (unit mean of its captions there, ``Yw``), and ``order``/``starts``/``counts``
        to sample one caption of an image: ``order[starts[i] + randint(counts[i])]``."""
        import torch

        Ym, C, owner = self.Y["train"]
        Tw = torch.from_numpy(b.center_text(C).astype(np.float32))
        Yw = np.zeros((len(Ym), Tw.shape[1]), np.float32)
        np.add.at(Yw, owner, Tw.numpy())
        Yw = torch.from_numpy(l2_normalize(Yw).astype(np.float32))
        order = torch.from_numpy(np.argsort(owner, kind="stable"))
        counts = torch.from_numpy(np.bincount(owner))
        starts = torch.cumsum(counts, 0) - counts
        return Tw, Yw, order, starts, counts

    def ridge(self, X: np.ndarray, lam: float, target: str = "mean") -> Bridge:
        rows, Y = self.targets("mean" if target == "white" else target)
        b = Bridge.fit(X[rows], Y, BridgeConfig(lam=lam))
        b.whiten_text_space(self.Y["train"][1], 0.5)
        if target == "white":
            # targets in the shared (centred, half-whitened) space, each caption unit there
            # before the mean: the cosine's space, not MiniLM's
            Ym, C, owner = self.Y["train"]
            Tw = b.center_text(C)
            Yw = np.zeros((len(Ym), Tw.shape[1]))
            np.add.at(Yw, owner, Tw)
            bw = Bridge.fit(X, l2_normalize(Yw), BridgeConfig(lam=lam, whitened_output=True))
            b = Bridge(bw.W, bw.x_mean, b.y_mean, bw.config, extras=b.extras)
        return b

    def evaluate(self, vectors, b: Bridge, hub: tuple | None = None) -> dict:
        """``vectors(split)`` -> unit image vectors in b's shared space; ``hub`` = (kind, α, β|k):
        a per-image hubness prior against a bank of training captions subtracted in t2i."""
        out = {}
        pick = np.sort(np.random.default_rng(0).choice(len(self.Y["train"][0]), 1000, replace=False))
        b.extras["hub_bank"] = vectors("train")[pick]
        bank = None
        if hub:
            C = self.Y["train"][1]
            bank = b.center_text(C[np.sort(np.random.default_rng(1).choice(len(C), 5000, replace=False))])
        for s in self.evals:
            try:
                G = vectors(s)
            except MissingViews as e:  # a split extracted without these views: no figure
                print(f"  ({e})", flush=True)
                continue
            T = b.center_text(self.Y[s][1])
            if isinstance(hub, dict):
                r = retrieval_scores(G, T, self.Y[s][2], b.caption_prior(T))
                Sq = self.spare(T @ G.T, T, G, b, bank, vectors, s, hub)
                own = Sq[np.arange(len(Sq)), self.Y[s][2]]
                r["t2i"] = recall_at_k((Sq >= own[:, None]).sum(1) - 1)
            else:
                r = retrieval_scores(G, T, self.Y[s][2], b.caption_prior(T), image_prior=self.image_prior(G, bank, hub))
            out[s] = {"t2i": r["t2i"], "i2t": r["i2t"]}
        G = vectors("samples")
        Q = b.center_text(self.qs_text)
        S = Q @ G.T
        if isinstance(hub, dict):
            S = self.spare(S, Q, G, b, bank, vectors, "samples", hub)
        elif hub:
            S = S - self.image_prior(G, bank, hub)[None]
        own = S[np.arange(len(S)), self.qs_target]
        out["quickstart_ranks"] = ((S >= own[:, None]).sum(1)).tolist()
        G = vectors("coco_dev")
        Q = b.center_text(self.concept_text)
        S = Q @ G.T
        if isinstance(hub, dict):
            S = self.spare(S, Q, G, b, bank, vectors, "coco_dev", hub)
        elif hub:
            S = S - self.image_prior(G, bank, hub)[None]
        p5 = [np.isin(np.argsort(-s)[:5], rel).mean() for s, rel in zip(S, self.concepts.values())]
        out["coco_concept_p5"] = round(100 * float(np.mean(p5)), 1)
        return out

    @staticmethod
    def image_prior(G, bank, hub):
        if not hub:
            return None
        kind, alpha, param = hub
        Z = G @ bank.T
        if kind == "isoftmax":  # inverted softmax (as the captions' prior, roles swapped)
            z = param * Z
            m = z.max(1, keepdims=True)
            return alpha * (m[:, 0] + np.log(np.exp(z - m).sum(1))) / param
        if kind == "csls":  # mean cosine to the k nearest bank captions
            return alpha * np.sort(Z, 1)[:, -int(param):].mean(1)
        raise ValueError(kind)

    def spare(self, S, Q, G, b: Bridge, bank, vectors, split: str, hub: dict) -> np.ndarray:
        """t2i scores [queries, images] under a hubness correction meant to spare the queries it
        hurts (issue 15, "Hubness correction that spares concept queries"). ``hub``:

        * ``dis``: QB-Norm's Dynamic Inverted Softmax (Bogolin et al., CVPR 2022): ``S − α·prior``
          only for a query whose raw top-1 image is in the activation set (the gallery images that
          are top-1 for some querybank caption; the bank of 5,000 training captions); raw cosine
          otherwise. The activation set depends on the gallery (here: the split's images);
        * ``gate``: the same switch with a gallery-free activation set: the top-1 image's prior
          above the ``q`` quantile of the 1,000 training bank images' priors;
        * ``adaptive``: ``S − α_q·prior`` with ``α_q = α·clip((h_q − lo)/(hi − lo), 0, 1)``, ``h_q``
          the query's own hubness against the image bank (``Bridge.caption_prior``), lo/hi the
          ``lo``/``hi`` quantiles of h over the training captions;
        * ``bridge``: the prior computed on the bridge vector alone (zero-shot channel left out).
        """
        kind, alpha, beta = hub["kind"], hub["alpha"], hub.get("beta", 20.0)
        base = G
        if hub.get("prior_on") == "bridge":
            base = vectors.bridge_only(split)
        prior = self.image_prior(base, bank, ("isoftmax", 1.0, beta))
        if kind in ("plain", "bridge"):
            return S - alpha * prior[None]
        if kind == "adaptive":
            # h over 5,000 training captions (another draw than the prior's bank), per bridge
            C = self.Y["train"][1]
            rows = np.sort(np.random.default_rng(2).choice(len(C), 5000, replace=False))
            ht = b.caption_prior(b.center_text(C[rows]))
            lo, hi = np.quantile(ht, hub["lo"]), np.quantile(ht, hub["hi"])
            a_q = alpha * np.clip((b.caption_prior(Q) - lo) / (hi - lo), 0.0, 1.0)
            return S - a_q[:, None] * prior[None]
        top1 = S.argmax(1)
        if kind == "dis":
            active = np.zeros(G.shape[0], bool)
            active[np.unique((bank @ base.T).argmax(1))] = True
        elif kind == "gate":
            tb = self.image_prior(b.extras["hub_bank"], bank, ("isoftmax", 1.0, beta))
            active = prior > np.quantile(tb, hub["q"])
        else:
            raise ValueError(kind)
        on = active[top1]
        return np.where(on[:, None], S - alpha * prior[None], S)

    def linear(self, parts_, lam, zs=V2_ZEROSHOT_WEIGHT, target="mean", views=("center",)):
        """A ridge bridge on these parts; returns (bridge, vectors(split))."""
        b = self.ridge(self.design("train", parts_), lam, target)

        def vectors(s):
            G = b.transform(self.design(s, parts_, views))
            return l2_normalize(G + zs * b.center_text(self.probs(s, views) @ self.zs_table)) if zs else G
        vectors.bridge_only = lambda s: b.transform(self.design(s, parts_, views))
        return b, vectors

    def rff(self, parts_, lam, n_features=4096, rff_weight=1.0, zs=V2_ZEROSHOT_WEIGHT, seed=0):
        """Ridge on [design, random Fourier features of the design] (a Gaussian kernel's map,
        bandwidth: the median distance between training design vectors)."""
        Xtr = self.design("train", parts_)
        rng = np.random.default_rng(seed)
        sub = Xtr[rng.choice(len(Xtr), 500, replace=False)]
        d2 = ((sub[:, None] - sub[None]) ** 2).sum(-1)
        sigma = float(np.sqrt(np.median(d2[d2 > 0])))
        Om = rng.normal(0, 1 / sigma, (Xtr.shape[1], n_features)).astype(np.float32)
        ph = rng.uniform(0, 2 * np.pi, n_features).astype(np.float32)

        def feats(X):
            Z = np.cos(X @ Om + ph) * np.sqrt(2.0 / n_features)
            return np.concatenate([X, rff_weight * Z], 1)
        b = self.ridge(feats(Xtr), lam)

        def vectors(s):
            G = b.transform(feats(self.design(s, parts_)))
            return l2_normalize(G + zs * b.center_text(self.probs(s) @ self.zs_table)) if zs else G
        return b, vectors

    def mlp(self, parts_, lam, hidden=2048, dropout=0.3, nce=1.0, mse=1.0, epochs=30, lr=1e-3, wd=1e-2,
            tau=0.05, zs=V2_ZEROSHOT_WEIGHT, seed=0, log=None):
        """The ridge map plus a 1-hidden-layer GELU MLP residual (last layer zero-initialised, so
        epoch 0 is the ridge bridge), trained on cached features with ``mse`` x squared error to
        the unit target in the shared space + ``nce`` x symmetric InfoNCE (one random caption per
        image per step); the epoch with the best Flickr8k dev t2i R@1 is kept (early stopping)."""
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(seed)
        b = self.ridge(self.design("train", parts_), lam)
        M = b.extras["text_whitening"]
        W0 = torch.from_numpy((b.W @ M).astype(np.float32))
        xm = torch.from_numpy(b.x_mean)
        Tw, Yw, order, starts, counts = self.caption_batches(b)
        X = torch.from_numpy(self.design("train", parts_)) - xm
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                  torch.nn.Linear(hidden, W0.shape[1]))
        torch.nn.init.zeros_(net[3].weight)
        torch.nn.init.zeros_(net[3].bias)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)

        def fwd(Xc):
            return torch.nn.functional.normalize(Xc @ W0 + net(Xc), dim=1)

        def vecs_of(s):
            net.eval()
            with torch.no_grad():
                G = fwd(torch.from_numpy(self.design(s, parts_)) - xm).numpy()
            net.train()
            return l2_normalize(G + zs * b.center_text(self.probs(s) @ self.zs_table)) if zs else G

        def dev_r1():
            T = b.center_text(self.Y["dev"][1])
            return retrieval_scores(vecs_of("dev"), T, self.Y["dev"][2])["t2i"]["R@1"]
        best = (dev_r1(), 0, {k: v.clone() for k, v in net.state_dict().items()})
        bs = 256
        for ep in range(1, epochs + 1):
            perm = torch.randperm(len(X), generator=g)
            for i in range(0, len(X) - bs + 1, bs):
                idx = perm[i:i + bs]
                out = fwd(X[idx])
                loss = mse * ((out - Yw[idx]) ** 2).sum(1).mean()
                if nce:
                    cap = order[starts[idx] + (torch.rand(len(idx), generator=g) * counts[idx]).long()]
                    lg = out @ Tw[cap].T / tau
                    lab = torch.arange(len(idx))
                    loss = loss + nce * 0.5 * (torch.nn.functional.cross_entropy(lg, lab)
                                               + torch.nn.functional.cross_entropy(lg.T, lab))
                opt.zero_grad()
                loss.backward()
                opt.step()
            r1 = dev_r1()
            if log:
                log(f"  mlp epoch {ep}: dev t2i R@1 {r1:.2f}")
            if r1 > best[0]:
                best = (r1, ep, {k: v.clone() for k, v in net.state_dict().items()})
        net.load_state_dict(best[2])
        bw = Bridge(b.W, b.x_mean, b.y_mean, replace(b.config, whitened_output=True), extras=dict(b.extras))
        return bw, vecs_of, best[1]


def spare_variants() -> list[dict]:
    """Group (f): see ``Levers.spare``; α/β/quantiles are chosen on the dev sets."""
    out = [{"kind": "plain", "alpha": 0.5}]  # lever (e)'s row, through the same code path
    for a, beta in ((1.0, 20.0), (0.75, 20.0), (0.5, 20.0), (1.0, 10.0), (1.0, 30.0)):
        out.append({"kind": "dis", "alpha": a, "beta": beta})
    for a, q in ((0.5, 0.5), (0.5, 0.75), (0.5, 0.9), (0.75, 0.75),
                 (0.5, 0.25), (0.5, 0.4), (0.5, 0.6), (0.4, 0.5), (0.6, 0.5), (0.75, 0.5)):
        out.append({"kind": "gate", "alpha": a, "q": q})
    for a in (0.5, 0.75, 1.0):
        for lo, hi in ((0.1, 0.5), (0.25, 0.75), (0.5, 0.9)):
            out.append({"kind": "adaptive", "alpha": a, "lo": lo, "hi": hi})
    out.append({"kind": "bridge", "alpha": 0.5, "prior_on": "bridge"})
    return out


def spare_name(h: dict) -> str:
    k = h["kind"]
    extra = {"dis": f"β {h.get('beta', 20.0):g}", "gate": f"prior > train q{h.get('q', 0):g}",
             "adaptive": f"α_q by query hubness q{h.get('lo', 0):g}-q{h.get('hi', 0):g}",
             "plain": "β 20", "bridge": "prior on the bridge part, β 20"}[k]
    return f"{k} α {h['alpha']:g}, {extra}"


def lever_variants(quick: bool = False):
    """(group, name, builder(levers) -> (bridge, vectors) or (bridge, vectors, extra), hub)."""
    L = V2_LAMBDA
    v2 = list(V2_PARTS)
    out = [("baseline", "v2: pooled+mix+mid, λ 1e4, zs 0.3", lambda z: z.linear(v2, L), None)]
    # (a) richer pooled features of the same network
    for name, ps, lams in [
        ("+max", v2 + [("max", 1.0)], (L,)),
        ("gem instead of mean", [("gem", 1.0)] + v2[1:], (L,)),
        ("+gem", v2 + [("gem", 1.0)], (L,)),
        ("+grid 2x2", v2 + [("grid", 1.0)], (L, 3 * L, 1e5)),
        ("+grid 2x2 (w 0.5)", v2 + [("grid", 0.5)], (3 * L,)),
        ("+mid max", v2 + [("mid_max", 1.0)], (L,)),
        ("+stage-4 mean", v2 + [("stage4", 0.5)], (L,)),
        ("+ImageNet probs", v2 + [("probs", 1.0)], (L,)),
        ("+ImageNet logits", v2 + [("logits", 1.0)], (L,)),
        ("+max+gem+mid max", v2 + [("max", 1.0), ("gem", 1.0), ("mid_max", 1.0)], (3 * L,)),
    ]:
        for lam in lams:
            out.append(("a features", f"{name}, λ {lam:g}", lambda z, ps=ps, lam=lam: z.linear(ps, lam), None))
    # (b) a small non-linear map
    for nf, w, lam in [(4096, 1.0, L), (4096, 2.0, 3 * L)]:
        out.append(("b non-linear", f"ridge on +RFF {nf} (w {w:g}), λ {lam:g}",
                    lambda z, nf=nf, w=w, lam=lam: z.rff(v2, lam, nf, w), None))
    for name, kw in [("MLP 2048 MSE", dict(nce=0.0)), ("MLP 2048 MSE+InfoNCE", dict(nce=1.0))]:
        out.append(("b non-linear", name + ", early-stopped on dev",
                    lambda z, kw=kw: z.mlp(v2, L, epochs=6 if quick else 20, **kw), None))
    # (c) test-time augmentation (fitted on the centre crop, views averaged at test time)
    for views in (("center", "flip"), ("center", "center_big"), ("center", "flip", "center_big")):
        out.append(("c TTA", "views " + "+".join(views),
                    lambda z, views=views: z.linear(v2, L, views=views), None))
    # (d) caption-side targets
    for t in ("mean_raw", "rows", "white"):
        out.append(("d targets", f"targets {t}", lambda z, t=t: z.linear(v2, L, target=t), None))
    # (e) hubness correction on t2i
    for hub in (("isoftmax", 0.25, 20.0), ("isoftmax", 0.5, 20.0), ("isoftmax", 0.75, 20.0), ("isoftmax", 1.0, 20.0),
                ("csls", 0.5, 10)):
        out.append(("e t2i hubness", f"{hub[0]} α {hub[1]:g} {'β' if hub[0] == 'isoftmax' else 'k'} {hub[2]:g}",
                    lambda z: z.linear(v2, L), hub))
    # (f) hubness corrections meant to spare the concept queries (issue 15, third round)
    for hub in spare_variants():
        out.append(("f spare", spare_name(hub), lambda z: z.linear(v2, L), hub))
    # the two levers that won on both dev sets, together
    out.append(("c+e", "views center+flip+center_big, isoftmax α 0.5 β 20",
                lambda z: z.linear(v2, L, views=("center", "flip", "center_big")), ("isoftmax", 0.5, 20.0)))
    return out


def run_levers(a) -> None:
    z = Levers("lite2", [s for s in EVAL if s != "test" or not a.no_test])
    rows = []
    print(f"{'group':<14}{'variant':<44}| {'F8k dev t2i':>16} | {'COCO dev t2i':>16} {'i2t':>16} | "
          f"{'F8k test t2i':>16} {'i2t':>16} | quickstart | P@5 | s", flush=True)
    for group, name, build, hub in lever_variants(a.quick):
        if a.only and not any(o in f"{group} {name}" for o in a.only):
            continue
        t = time.perf_counter()
        res = build(z)
        b, vectors = res[0], res[1]
        r = z.evaluate(vectors, b, hub)
        dt = time.perf_counter() - t
        extra = {"best_epoch": res[2]} if len(res) > 2 else {}
        t2i = lambda s, d="t2i": fmt(r[s][d]) if s in r else "-"  # noqa: E731
        print(f"{group:<14}{name:<44}| {t2i('dev'):>16} | {t2i('coco_dev'):>16} "
              f"{t2i('coco_dev', 'i2t'):>16} | {t2i('test'):>16} {t2i('test', 'i2t'):>16} | "
              f"{','.join(map(str, r['quickstart_ranks']))} | {r['coco_concept_p5']} | {dt:.0f}"
              + (f" (epoch {extra['best_epoch']})" if extra else ""), flush=True)
        rows.append({"group": group, "variant": name, **r, **extra, "seconds": round(dt, 1)})
    write_results(a.json, {"rows": rows})


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
    ap.add_argument("--levers", action="store_true", help="the second round's levers (Levers), not the above")
    ap.add_argument("--only", nargs="*", help="with --levers: variants whose group or name contains one of these")
    ap.add_argument("--quick", action="store_true", help="with --levers: fewer MLP epochs (a smoke run)")
    ap.add_argument("--no-test", action="store_true", help="with --levers: the dev sets only (for choosing)")
    a = ap.parse_args()
    if a.levers:
        return run_levers(a)
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
