"""Image embedding throughput: mmrag's pipeline vs a plain PyTorch loop, same model, same images.

    python benchmarks/bench_embed.py [--n 512] [--data-dir ../shared/data/flickr8k] [--json benchmarks/results/embed.json]
        [--bridges flickr8k-train-v2 flickr8k-train]

Both sides compute EfficientNet-Lite0 features (pooled + logits) of the centre crop of each
image. The plain loop decodes, resizes and runs eager PyTorch one batch after another; the
pipeline decodes in a thread pool ahead of inference and runs the network in ONNX Runtime.
Also reports how far the pipeline's features are from the plain loop's, and the full
effnet-minilm embedding (features + bridge) throughput, for each bridge in ``--bridges``
(side by side in one run, so the comparison sees the same machine load). Runs are interleaved (plain, pipeline,
plain, pipeline) and the best of each is kept, since the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.encoders.efficientnet_lite import load_efficientnet_lite0  # noqa: E402
from mmrag.encoders.image_features import MEAN, STD, EfficientNetFeaturizer, view_arrays  # noqa: E402


def plain_torch_loop(model, paths, batch_size=32, size=224):
    pooled, logits = [], []
    for i in range(0, len(paths), batch_size):
        arrs = []
        for p in paths[i : i + batch_size]:
            img = Image.open(p).convert("RGB")
            arrs.append(view_arrays(img, size, ["center"])[0])
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255).sub(MEAN).div(STD)
        with torch.no_grad():
            p_, l_, _ = model(x)
        pooled.append(p_.numpy())
        logits.append(l_.numpy())
    return np.concatenate(pooled), np.concatenate(logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/embed.json")
    ap.add_argument("--bridges", nargs="+", default=None,
                    help="effnet-minilm bridges to time (default: the default bridge only)")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(Path(a.data_dir) / "captions.jsonl")]
    paths = [str(Path(a.data_dir) / r["image"]) for r in rows if r["split"] == "test"][: a.n]
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_efficientnet_lite0()
    pipe = EfficientNetFeaturizer(views=("center",))
    from mmrag.encoders import create_encoder

    from mmrag.encoders.effnet_minilm import DEFAULT_BRIDGE

    bridges = a.bridges or [DEFAULT_BRIDGE]
    encs = {b: create_encoder("effnet-minilm", bridge=b) for b in bridges}
    for enc in encs.values():
        enc.embed_images(paths[:8])  # warm up: load the network, build the class-name table
    plain_torch_loop(model, paths[:32])
    pipe.features(paths[:32])
    t_plain, t_pipe, t_enc = [], [], {b: [] for b in bridges}
    for _ in range(a.repeats):
        t = time.perf_counter(); ref_p, ref_l = plain_torch_loop(model, paths); t_plain.append(time.perf_counter() - t)
        t = time.perf_counter(); f = pipe.features(paths); t_pipe.append(time.perf_counter() - t)
        for b, enc in encs.items():
            t = time.perf_counter(); enc.embed_images(paths); t_enc[b].append(time.perf_counter() - t)
    plain_ips, pipe_ips = (len(paths) / min(x) for x in (t_plain, t_pipe))
    enc_ipss = {b: len(paths) / min(x) for b, x in t_enc.items()}
    enc_ips = enc_ipss[bridges[0]]
    res = {
        "n_images": len(paths),
        "plain_torch_img_per_s": round(plain_ips, 1),
        "pipeline_img_per_s": round(pipe_ips, 1),
        "speedup": round(pipe_ips / plain_ips, 2),
        "effnet_minilm_embed_img_per_s": round(enc_ips, 1),
        "effnet_minilm_embed_img_per_s_by_bridge": {b: round(v, 1) for b, v in enc_ipss.items()},
        "max_abs_diff_pooled": float(np.abs(f.pooled[:, 0] - ref_p).max()),
        "max_abs_diff_logits": float(np.abs(f.logits[:, 0] - ref_l).max()),
        "top1_agreement": float((f.logits[:, 0].argmax(1) == ref_l.argmax(1)).mean()),
    }
    print(f"{'method':<34}{'img/s':>10}")
    print(f"{'plain PyTorch loop':<34}{plain_ips:>10.1f}")
    print(f"{'mmrag pipeline (features)':<34}{pipe_ips:>10.1f}   x{res['speedup']:.2f}")
    for b, v in enc_ipss.items():
        print(f"{'effnet-minilm embed_images':<28}{b[:20]:<20}{v:>8.1f}")
    print(f"max |diff| pooled {res['max_abs_diff_pooled']:.2e}, logits {res['max_abs_diff_logits']:.2e}, "
          f"top-1 agreement {res['top1_agreement']:.3f}")
    write_results(a.json, res)


if __name__ == "__main__":
    main()
