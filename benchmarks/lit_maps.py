"""Cached EfficientNet-Lite2 spatial maps at the input of its last blocks (issue 15, LiT-style
fine-tuning, ``bench_encoder_lit.py``).

    python benchmarks/lit_maps.py [--splits samples coco_dev dev train test]

Per split, one pass of the frozen network up to the input of block ``MAP_BLOCK`` (the last block
of stage 6; the blocks after it and the head conv are what the fine-tuning moves): the 208-channel
map of the 260 px centre crop (9 x 9, float16) and the pooled output of block 14 (the first of
the shipped mid-level blocks, which the fine-tuned blocks do not change). Decoded and cropped as
the shipped pipeline does. Kept under ``mmrag.paths.cache_dir()/ood``; rebuilt when absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ood_features import split_rows  # noqa: E402
from mmrag.paths import cache_dir  # noqa: E402

BACKBONE = "lite2"
MAP_BLOCK = 19  # blocks 19 (end of stage 6) and 20 (stage 7) + the head conv can be fine-tuned
FIXED_MID_BLOCK = 14  # end of stage 5: the first mid-level block, before the cached map
SPLITS = ("samples", "coco_dev", "dev", "train", "test")


def map_cache_path(split: str) -> Path:
    d = cache_dir() / "ood"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{BACKBONE}_{split}_map{MAP_BLOCK}_v1.npz"


class _TruncNet:
    """The shipped Lite2 forward pass cut before block MAP_BLOCK, through ONNX Runtime."""

    def __init__(self, threads: int = 1):
        import torch

        from mmrag.encoders.efficientnet_lite import get_variant, load_efficientnet_lite, weights_path
        from mmrag.encoders.onnx_cache import cached_onnx, cpu_session, file_stamp

        v = get_variant(BACKBONE)

        class Net(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                m = self.m
                x = m.act(m._bn0(m._conv_stem(x)))
                m14 = None
                for i, b in enumerate(m._blocks[:MAP_BLOCK]):
                    x = b(x)
                    if i == FIXED_MID_BLOCK:
                        m14 = x.mean(dim=(2, 3))
                return x, m14

        net = Net(load_efficientnet_lite(BACKBONE)).eval()

        def export(tmp: Path) -> None:
            torch.onnx.export(net, torch.zeros(1, 3, v.size, v.size), str(tmp), input_names=["pixels"],
                              output_names=["map", "mid14"], dynamic_axes={"pixels": {0: "n"}},
                              opset_version=17, dynamo=False)

        key = f"{file_stamp(weights_path(BACKBONE))}:cut{MAP_BLOCK}:m{FIXED_MID_BLOCK}:v1"
        self.session = cpu_session(cached_onnx(f"efficientnet_{BACKBONE}_cut{MAP_BLOCK}", key, export), threads)

    def __call__(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from mmrag.encoders.image_features import MEAN, STD

        x = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2)
        x = np.ascontiguousarray((x / 255.0 - MEAN) / STD, dtype=np.float32)
        fmap, m14 = self.session.run(None, {"pixels": x})
        return fmap, m14


def load_maps(split: str, net: _TruncNet | None = None, data_dir: Path | None = None) -> dict:
    """{"map": [n, 208, 9, 9] float16, "mid14": [n, 120] float16} of a split's centre crops."""
    p = map_cache_path(split)
    if p.exists():
        z = np.load(p)
        return {k: z[k] for k in z.files}
    from concurrent.futures import ThreadPoolExecutor

    from mmrag.corpus.images import open_image
    from mmrag.encoders.efficientnet_lite import get_variant
    from mmrag.encoders.image_features import _prefetch, view_arrays

    size = get_variant(BACKBONE).size
    net = net or _TruncNet()
    paths, _ = split_rows(split, data_dir)

    def load(path):
        return view_arrays(open_image(path, draft=(size, size)), size, ("center",))[0]

    t = time.perf_counter()
    maps, mids, pending = [], [], []
    with ThreadPoolExecutor(1) as pool:
        for i, arr in enumerate(_prefetch(load, paths, pool, window=64)):
            pending.append(arr)
            if len(pending) == 32 or i == len(paths) - 1:
                fm, m14 = net(pending)
                maps.append(fm.astype(np.float16))
                mids.append(m14.astype(np.float16))
                pending = []
                print(f"  {split}: {i + 1}/{len(paths)}", end="\r", file=sys.stderr, flush=True)
    dt = time.perf_counter() - t
    out = {"map": np.concatenate(maps), "mid14": np.concatenate(mids), "seconds": np.array(dt)}
    tmp = p.with_name(p.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(p)
    print(f"{BACKBONE} {split} maps: {len(paths)} images in {dt:.0f}s ({len(paths) / dt:.1f} img/s)",
          file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    a = ap.parse_args()
    net = _TruncNet(a.threads)
    for s in a.splits:
        load_maps(s, net)


if __name__ == "__main__":
    main()
