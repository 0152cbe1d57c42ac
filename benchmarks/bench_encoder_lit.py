"""LiT-style fine-tuning of EfficientNet-Lite2's last blocks vs the shipped ridge bridge (issue 15).

    python benchmarks/bench_encoder_lit.py [--runs SPEC ...] [--json benchmarks/results/encoder_ood_lit.json]

The one alignment lever of issue 15 not measured in the first two rounds: let the end of the
backbone move. The text tower (MiniLM) stays frozen, as in LiT. The frozen network runs once up
to the input of block 19 (``lit_maps.py``: cached 9 x 9 maps of the 260 px centre crop); block
19 (end of stage 6), block 20 (stage 7) and the head conv (+ their batch-norm affines; running
statistics frozen) are trained, followed by the shipped design vector (sqrt-pooled + class mix +
mid-level, standardised with the train statistics), the ridge map of the ``flickr8k-train-v2``
recipe (optionally trained too) and the zero-shot channel (w 0.3). At step 0 the model *is* the
ridge baseline (the "step 0" row checks it), so whatever training changes is the lever's effect.

Loss: symmetric InfoNCE (τ 0.05, one random caption per image per step) + ``mse`` x squared
error to the image's unit target in the shared space. Augmentation on the cached maps: a
horizontal flip (p 0.5) and a random spatial crop (7 or 8 of 9 cells, p 0.5). Early stopping on
Flickr8k dev t2i R@1 (COCO dev logged per epoch, not used); Flickr8k test is evaluated once, for
the kept epoch. One thread, fixed seeds.

Run specs ``name:blocks:lr_backbone:lr_proj:mse:epochs`` with blocks "20" (block 20 + head) or
"19" (blocks 19, 20 + head); lr_proj 0 keeps the ridge map fixed. The baseline row is
``bench_encoder_ood.py --levers``'s (the same code: it reproduces that table's first row).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from benchmarks.bench_encoder_ood import EVAL, V2_PARTS, Levers, fmt  # noqa: E402
from benchmarks.lit_maps import MAP_BLOCK, load_maps  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.encoders.bridge import Bridge  # noqa: E402
from mmrag.encoders.effnet_minilm import V2_LAMBDA, V2_ZEROSHOT_WEIGHT  # noqa: E402
from mmrag.eval.retrieval import retrieval_scores  # noqa: E402

# block 20 + head, ridge map fixed, two learning rates (the one choice made here, on dev)
DEFAULT_RUNS = ["b20-lr3e-5:20:3e-5:0:1:4", "b20-lr1e-4:20:1e-4:0:1:4"]


def build_model(z: Levers, b: Bridge, blocks: str):
    """The trainable end of the network + the fixed design/ridge/zero-shot pipeline (torch)."""
    import torch

    from mmrag.encoders.efficientnet_lite import load_efficientnet_lite

    net = load_efficientnet_lite("lite2").eval()
    z.design("train", V2_PARTS)  # fills the train standardisation statistics of each part
    st = {k: tuple(torch.from_numpy(np.asarray(a, np.float32)) for a in z._stats[k]) for k, _ in V2_PARTS}
    mix_table = torch.from_numpy(np.asarray(z.mix_table, np.float32))
    zs_table = torch.from_numpy(np.asarray(z.zs_table, np.float32))
    M = torch.from_numpy(b.extras["text_whitening"])
    y_mean = torch.from_numpy(b.y_mean)

    class Lit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # blocks "20": block 19 stays frozen and its output is the input (LitBench.inputs)
            self.b19 = net._blocks[MAP_BLOCK] if blocks == "19" else None
            self.b20 = net._blocks[MAP_BLOCK + 1]
            self.head, self.bn, self.fc, self.act = net._conv_head, net._bn1, net._fc, net.act
            self.proj = torch.nn.Parameter(torch.from_numpy((b.W @ b.extras["text_whitening"]).astype(np.float32)))
            self.register_buffer("x_mean", torch.from_numpy(b.x_mean))

        def forward(self, fmap, m14):
            x19 = fmap if self.b19 is None else self.b19(fmap)
            x20 = self.b20(x19)
            pooled = self.act(self.bn(self.head(x20))).mean(dim=(2, 3))
            logits = self.fc(pooled)
            # sqrt as shipped, with the gradient of sqrt(x + 1e-3): exact values at step 0,
            # bounded gradients for channels near 0
            p0 = pooled.clamp_min(0)
            smooth = torch.sqrt(p0 + 1e-3)
            sq = torch.sqrt(p0) + (smooth - smooth.detach())
            probs = torch.softmax(logits, dim=1)
            raw = {"pooled": sq, "mix": probs @ mix_table,
                   "mid": torch.cat([m14, x19.mean(dim=(2, 3)), x20.mean(dim=(2, 3))], 1)}
            parts = [(raw[k] - st[k][0]) / st[k][1] * (w / raw[k].shape[1] ** 0.5) for k, w in V2_PARTS]
            g = torch.nn.functional.normalize((torch.cat(parts, 1) - self.x_mean) @ self.proj, dim=1)
            zs = torch.nn.functional.normalize((probs @ zs_table - y_mean) @ M, dim=1)
            return torch.nn.functional.normalize(g + V2_ZEROSHOT_WEIGHT * zs, dim=1)

    model = Lit().eval()  # batch-norm running statistics stay frozen (eval mode) while training
    for p in model.parameters():
        p.requires_grad_(False)
    train_mods = [model.b20, model.head, model.bn] + ([model.b19] if model.b19 is not None else [])
    for m in train_mods:
        for p in m.parameters():
            p.requires_grad_(True)
    return model, [p for m in train_mods for p in m.parameters()]


class LitBench:
    def __init__(self, z: Levers, b: Bridge):
        import torch

        torch.set_num_threads(1)
        self.z, self.b = z, b
        self.maps = {s: load_maps(s) for s in ("train", "samples") + z.evals}
        self._x19: dict | None = None
        self.train_limit: int | None = None  # a smoke run's first N training images

    def inputs(self, blocks: str) -> dict:
        """Per split {"map", "mid14"}: the cached block-19 input, or (blocks "20") block 19's
        output, computed once with the frozen block (the training then costs block 20 + head)."""
        if blocks == "19":
            return self.maps
        if self._x19 is None:
            import torch

            from mmrag.encoders.efficientnet_lite import load_efficientnet_lite

            b19 = load_efficientnet_lite("lite2").eval()._blocks[MAP_BLOCK]
            self._x19 = {}
            with torch.no_grad():
                for s, d in self.maps.items():
                    x = [b19(torch.from_numpy(d["map"][i:i + 250].astype(np.float32))).numpy().astype(np.float16)
                         for i in range(0, len(d["map"]), 250)]
                    self._x19[s] = {"map": np.concatenate(x), "mid14": d["mid14"]}
        return self._x19

    def vectors_of(self, model):
        import torch

        data = self.inputs("20" if model.b19 is None else "19")

        def vectors(s, bs=250):
            d = data[s]
            out = []
            with torch.no_grad():
                for i in range(0, len(d["map"]), bs):
                    out.append(model(torch.from_numpy(d["map"][i:i + bs].astype(np.float32)),
                                     torch.from_numpy(d["mid14"][i:i + bs].astype(np.float32))).numpy())
            return l2_normalize(np.concatenate(out))
        return vectors

    def dev_r1(self, vectors, split):
        T = self.b.center_text(self.z.Y[split][1])
        return retrieval_scores(vectors(split), T, self.z.Y[split][2])["t2i"]["R@1"]

    def train(self, blocks="20", lr_b=1e-4, lr_p=0.0, mse=1.0, epochs=4, tau=0.05, bs=128, patience=2,
              seed=0, log=print):
        import torch

        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model, bparams = build_model(self.z, self.b, blocks)
        groups = [{"params": bparams, "lr": lr_b}]
        if lr_p:
            model.proj.requires_grad_(True)
            groups.append({"params": [model.proj], "lr": lr_p})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        Tw, Yw, order, starts, counts = self.z.caption_batches(self.b)
        maps, m14 = self.inputs(blocks)["train"]["map"], self.inputs(blocks)["train"]["mid14"]
        n, side = min(len(maps), self.train_limit or len(maps)), maps.shape[-1]
        steps = n // bs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps * epochs) / (steps * epochs))))
        vectors = self.vectors_of(model)
        best = (self.dev_r1(vectors, "dev"), 0, {k: v.clone() for k, v in model.state_dict().items()})
        log(f"  epoch 0: dev t2i R@1 {best[0]:.2f}, COCO dev {self.dev_r1(vectors, 'coco_dev'):.2f}")
        history = [{"epoch": 0, "dev_r1": best[0]}]
        t0 = time.perf_counter()
        for ep in range(1, epochs + 1):
            perm = torch.randperm(n, generator=g).numpy()
            tot = 0.0
            for s in range(steps):
                idx = np.sort(perm[s * bs:(s + 1) * bs])
                x = torch.from_numpy(maps[idx].astype(np.float32))
                flip = torch.rand(len(idx), generator=g) < 0.5
                x[flip] = x[flip].flip(-1)
                if float(torch.rand(1, generator=g)) < 0.5:  # one crop size per batch, offsets per image
                    c = int(torch.randint(side - 2, side, (1,), generator=g))
                    off = torch.randint(0, side - c + 1, (len(idx), 2), generator=g)
                    x = torch.stack([x[i, :, a:a + c, o:o + c] for i, (a, o) in enumerate(off.tolist())])
                out = model(x, torch.from_numpy(m14[idx].astype(np.float32)))
                it = torch.from_numpy(idx)
                cap = order[starts[it] + (torch.rand(len(idx), generator=g) * counts[it]).long()]
                lg = out @ Tw[cap].T / tau
                lab = torch.arange(len(idx))
                loss = 0.5 * (torch.nn.functional.cross_entropy(lg, lab) + torch.nn.functional.cross_entropy(lg.T, lab))
                if mse:
                    loss = loss + mse * ((out - Yw[it]) ** 2).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                tot += float(loss.detach())
            r1, rc = self.dev_r1(vectors, "dev"), self.dev_r1(vectors, "coco_dev")
            log(f"  epoch {ep}: loss {tot / steps:.4f}, dev t2i R@1 {r1:.2f}, COCO dev {rc:.2f} "
                f"({time.perf_counter() - t0:.0f}s)")
            history.append({"epoch": ep, "loss": round(tot / steps, 4), "dev_r1": r1, "coco_dev_r1": rc})
            if r1 > best[0]:
                best = (r1, ep, {k: v.clone() for k, v in model.state_dict().items()})
            elif ep - best[1] >= patience:
                break
        model.load_state_dict(best[2])
        return model, best[1], history, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, help="name:blocks:lr_backbone:lr_proj:mse:epochs")
    ap.add_argument("--json", default="benchmarks/results/encoder_ood_lit.json")
    ap.add_argument("--no-test", action="store_true", help="the dev sets only (a smoke run)")
    ap.add_argument("--train-limit", type=int, default=None, help="train on the first N images only (a smoke run)")
    a = ap.parse_args()
    specs = []
    for spec in a.runs:
        try:
            name, blocks, lr_b, lr_p, mse, ep = spec.split(":")
            specs.append((name, blocks, float(lr_b), float(lr_p), float(mse), int(ep)))
        except ValueError:
            ap.error(f"bad run spec {spec!r}: name:blocks:lr_backbone:lr_proj:mse:epochs")
        if blocks not in ("19", "20"):
            ap.error(f"bad run spec {spec!r}: blocks is 19 or 20")
    z = Levers("lite2", [s for s in EVAL if s != "test" or not a.no_test])
    b, base_vectors = z.linear(list(V2_PARTS), V2_LAMBDA)
    lit = LitBench(z, b)
    lit.train_limit = a.train_limit
    rows = []
    print(f"{'variant':<40}| {'F8k dev t2i':>16} | {'COCO dev t2i':>16} {'i2t':>5} | "
          f"{'F8k test t2i':>16} {'i2t':>5} | quickstart | P@5 | s", flush=True)

    def show(name, bridge, vectors, extra, dt):
        r = z.evaluate(vectors, bridge)
        test = (fmt(r['test']['t2i']), f"{r['test']['i2t']['R@1']:.1f}") if "test" in r else ("-", "-")
        print(f"{name:<40}| {fmt(r['dev']['t2i']):>16} | {fmt(r['coco_dev']['t2i']):>16} "
              f"{r['coco_dev']['i2t']['R@1']:>5.1f} | {test[0]:>16} {test[1]:>5} | "
              f"{','.join(map(str, r['quickstart_ranks']))} | {r['coco_concept_p5']} | {dt:.0f}", flush=True)
        rows.append({"variant": name, **r, **extra, "seconds": round(dt, 1)})

    def copy(bridge):  # evaluate() sets the bridge's hub bank from the vectors it is given
        return Bridge(bridge.W, bridge.x_mean, bridge.y_mean, bridge.config, extras=dict(bridge.extras))

    show("v2 ridge (baseline)", copy(b), base_vectors, {}, 0.0)
    model, _ = build_model(z, b, "20")
    show("step 0 (ridge through the fine-tune path)", copy(b), lit.vectors_of(model), {"epoch": 0}, 0.0)
    for name, blocks, lr_b, lr_p, mse, ep in specs:
        print(f"# {name}: blocks {blocks}+ (+head), lr {lr_b:g}, proj lr {lr_p:g}, mse {mse:g}, ≤ {ep} epochs",
              file=sys.stderr, flush=True)
        model, best_ep, hist, dt = lit.train(blocks, lr_b, lr_p, mse, ep, log=lambda m: print(m, file=sys.stderr,
                                                                                           flush=True))
        show(f"{name} (epoch {best_ep})", copy(b), lit.vectors_of(model),
             {"blocks": blocks, "lr_backbone": lr_b, "lr_proj": lr_p, "mse": mse, "max_epochs": ep,
              "best_epoch": best_ep, "history": hist}, dt)
    write_results(a.json, {"rows": rows, "map_block": MAP_BLOCK,
                           "adopt_rule": "replaces ridge only if both dev t2i R@1 gain >= +1.0"})


if __name__ == "__main__":
    main()
