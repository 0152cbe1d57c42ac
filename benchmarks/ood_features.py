"""Cached frozen features for the encoder benchmarks (bench_encoder_ood.py).

    python benchmarks/ood_features.py --backbone lite0 [--splits train dev test coco_dev]
    python benchmarks/ood_features.py --backbone lite2 --rich     # the second round's feature kinds

Per (backbone, split): the EfficientNet-Lite pooled / logits / mid-level features of the centre
crop and its mirror (kept per view: the mirror doubles as training augmentation), and the raw
MiniLM embeddings of every caption. Computed once, kept under ``mmrag.paths.cache_dir()/ood``.

``--rich`` (issue 15, second round) keeps more of the same network per image, in one pass, for
three views of the evaluated splits (centre crop and mirror at the checkpoint's size, centre crop
at ``RICH_BIG`` px) and the centre crop of train: the final 1280-channel map pooled as mean, max, GeM (p 3) and a 2x2 grid of
means, the logits, the mid-level block means (as the shipped features), their maxima, and the
mean of the end of stage 4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrag.paths import cache_dir, repo_data_dir  # noqa: E402

VIEWS = ("center", "flip")
SPLITS = ("train", "dev", "test", "coco_dev", "samples")


def split_rows(split: str, data_dir: Path | None = None) -> tuple[list[str], list[list[str]]]:
    """(image paths, captions) of a Flickr8k split or of coco_dev, in file order."""
    if split == "samples":  # the quickstart's photos (scikit-image), for its queries
        from mmrag.corpus.samples import sample_photos_corpus

        c = sample_photos_corpus()
        return [str(it.path) for it in c.items], [list(it.captions) for it in c.items]
    data_dir = Path(data_dir or repo_data_dir())
    if split == "coco_dev":
        root = data_dir / "coco_dev"
        rows = [json.loads(l) for l in open(root / "captions.jsonl")]
    else:
        root = data_dir / "flickr8k"
        rows = [r for r in map(json.loads, open(root / "captions.jsonl")) if r["split"] == split]
    return [str(root / r["image"]) for r in rows], [list(r["captions"]) for r in rows]


def cache_path(backbone: str, split: str) -> Path:
    d = cache_dir() / "ood"
    d.mkdir(exist_ok=True)
    return d / f"{backbone}_{split}_v1.npz"


def load_split(backbone: str, split: str, data_dir: Path | None = None, text=None) -> dict:
    p = cache_path(backbone, split)
    if p.exists():
        z = np.load(p)
        return {k: z[k] for k in z.files}
    from mmrag.encoders.efficientnet_lite import get_variant
    from mmrag.encoders.image_features import EfficientNetFeaturizer

    paths, caps = split_rows(split, data_dir)
    size = get_variant(backbone).size
    t = time.perf_counter()
    f = EfficientNetFeaturizer(size=size, views=VIEWS, variant=backbone).features(paths)
    dt = time.perf_counter() - t
    if f.errors:
        raise RuntimeError(f"{split}: unreadable images {list(f.errors.items())[:3]}")
    caps_p = cache_dir() / "ood" / f"captions_{split}_v1.npy"
    if caps_p.exists():
        C = np.load(caps_p)
    else:
        if text is None:
            from mmrag.encoders.minilm import MiniLMTextEncoder

            text = MiniLMTextEncoder()
        C = text.embed([c for cs in caps for c in cs]).astype(np.float16)
        np.save(caps_p, C)
    out = {"pooled": f.pooled.astype(np.float16), "logits": f.logits.astype(np.float16),
           "mid": f.mid.astype(np.float16), "caps": C, "n_caps": np.array([len(c) for c in caps]),
           "seconds": np.array(dt)}
    np.savez(p, **out)
    print(f"{backbone} {split}: {len(paths)} images in {dt:.0f}s ({len(paths) / dt:.1f} img/s, {len(VIEWS)} views)",
          flush=True)
    return out


RICH_VIEWS = ("center", "flip", "center_big")
RICH_BIG = 300  # px of the "center_big" view (Lite2's own size is 260)


def rich_cache_path(backbone: str, split: str) -> Path:
    return cache_dir() / "ood" / f"{backbone}_{split}_rich_v1.npz"


class _RichNet:
    """The shipped network with its last feature map and more block outputs exposed (ONNX)."""

    def __init__(self, backbone: str):
        import torch

        from mmrag.encoders.efficientnet_lite import get_variant, load_efficientnet_lite, weights_path
        from mmrag.encoders.onnx_cache import cached_onnx, cpu_session, file_stamp

        v = get_variant(backbone)
        # end of stage 4: the block before the first of the shipped mid-level blocks' stage
        stage_ends = list(np.cumsum([b[0] for b in v.blocks]) - 1)
        self.stage4 = int(stage_ends[3])

        class Net(torch.nn.Module):
            def __init__(self, m, mid_blocks, stage4):
                super().__init__()
                self.m, self.mid_blocks, self.stage4 = m, mid_blocks, stage4

            def forward(self, x):
                m = self.m
                x = m.act(m._bn0(m._conv_stem(x)))
                means, maxes = [], []
                s4 = None
                for i, b in enumerate(m._blocks):
                    x = b(x)
                    if i in self.mid_blocks:
                        means.append(x.mean(dim=(2, 3)))
                        maxes.append(x.amax(dim=(2, 3)))
                    if i == self.stage4:
                        s4 = x.mean(dim=(2, 3))
                fmap = m.act(m._bn1(m._conv_head(x)))
                return fmap, m._fc(fmap.mean(dim=(2, 3))), torch.cat(means, 1), torch.cat(maxes, 1), s4

        net = Net(load_efficientnet_lite(backbone), v.mid_blocks, self.stage4).eval()

        def export(tmp: Path) -> None:
            torch.onnx.export(net, torch.zeros(1, 3, v.size, v.size), str(tmp), input_names=["pixels"],
                              output_names=["fmap", "logits", "mid", "mid_max", "stage4"],
                              dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)

        self.session = cpu_session(cached_onnx(f"efficientnet_{backbone}_rich", f"{file_stamp(weights_path(backbone))}:r1",
                                               export))

    def __call__(self, arrays: list[np.ndarray]) -> dict:
        from mmrag.encoders.image_features import MEAN, STD

        x = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2)
        x = np.ascontiguousarray((x / 255.0 - MEAN) / STD, dtype=np.float32)
        fmap, logits, mid, mid_max, s4 = self.session.run(None, {"pixels": x})
        h, w = fmap.shape[2:]
        grid = []  # 2x2 cells, torch adaptive_avg_pool2d bounds (overlapping for odd sizes)
        for i in range(2):
            for j in range(2):
                cell = fmap[:, :, (i * h) // 2:-(-(i + 1) * h // 2), (j * w) // 2:-(-(j + 1) * w // 2)]
                grid.append(cell.mean(axis=(2, 3)))
        return {"pooled": fmap.mean(axis=(2, 3)), "max": fmap.max(axis=(2, 3)),
                "gem": np.cbrt((fmap.astype(np.float64) ** 3).mean(axis=(2, 3))).astype(np.float32),
                "grid": np.concatenate(grid, 1), "logits": logits, "mid": mid, "mid_max": mid_max, "stage4": s4}


def rich_views(split: str, eval_views=RICH_VIEWS) -> tuple[str, ...]:
    """Training images need only the view the bridge is fitted on (the cost of this pass on 2
    cores); the evaluated splits get ``eval_views``, for test-time augmentation."""
    return ("center",) if split == "train" else tuple(eval_views)


def load_rich(backbone: str, split: str, data_dir: Path | None = None, net: _RichNet | None = None,
              eval_views=RICH_VIEWS) -> dict:
    """The rich features of a split ([n, len(views), dim] per kind, the views under "views")
    and its captions."""
    p = rich_cache_path(backbone, split)
    if p.exists():
        z = np.load(p)
        return {k: z[k] for k in z.files}
    from concurrent.futures import ThreadPoolExecutor

    from mmrag.corpus.images import open_image
    from mmrag.encoders.efficientnet_lite import get_variant
    from mmrag.encoders.image_features import _prefetch, view_arrays

    size = get_variant(backbone).size
    views = rich_views(split, eval_views)
    small_views = [v for v in views if v != "center_big"]
    net = net or _RichNet(backbone)
    paths, caps = split_rows(split, data_dir)

    def load(path):
        # decoded as the shipped pipeline does (JPEG draft at the view's size), once per size
        out = view_arrays(open_image(path, draft=(size, size)), size, small_views)
        if "center_big" in views:
            out += view_arrays(open_image(path, draft=(RICH_BIG, RICH_BIG)), RICH_BIG, ("center",))
        return out

    t = time.perf_counter()
    out: dict[str, list] = {}
    batch = 32
    ns = len(small_views)
    with ThreadPoolExecutor(2) as pool:
        pending: list = []
        for i, vs in enumerate(_prefetch(load, paths, pool, window=4 * batch)):
            pending.append(vs)
            if len(pending) == batch or i == len(paths) - 1:
                small = net([v for vs in pending for v in vs[:ns]])
                big = net([vs[ns] for vs in pending]) if len(views) > ns else None
                for k in small:
                    a = small[k].reshape(len(pending), ns, -1)
                    if big is not None:
                        a = np.concatenate([a, big[k][:, None]], 1)
                    out.setdefault(k, []).append(a.astype(np.float16))
                pending = []
                print(f"  {split}: {i + 1}/{len(paths)}", end="\r", file=sys.stderr, flush=True)
    dt = time.perf_counter() - t
    res = {k: np.concatenate(v) for k, v in out.items()}
    base = load_split(backbone, split, data_dir)  # the captions
    res.update(caps=base["caps"], n_caps=base["n_caps"], seconds=np.array(dt), views=np.array(views))
    np.savez(p, **res)
    print(f"{backbone} {split} rich: {len(paths)} images in {dt:.0f}s ({len(paths) / dt:.1f} img/s, "
          f"{len(views)} views)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="lite0", choices=["lite0", "lite2"])
    ap.add_argument("--splits", nargs="+", default=None, choices=SPLITS,
                    help="default: all (with --rich: the small ones first)")
    ap.add_argument("--rich", action="store_true", help="the second round's feature kinds (see above)")
    ap.add_argument("--eval-views", nargs="+", default=list(RICH_VIEWS), choices=RICH_VIEWS,
                    help="with --rich: the views kept for the splits other than train")
    a = ap.parse_args()
    net = _RichNet(a.backbone) if a.rich else None
    splits = a.splits or (["samples", "coco_dev", "dev", "train", "test"] if a.rich else list(SPLITS))
    for s in splits:
        if a.rich:
            load_rich(a.backbone, s, net=net, eval_views=a.eval_views)
        else:
            load_split(a.backbone, s)


if __name__ == "__main__":
    main()
