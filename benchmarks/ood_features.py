"""Cached frozen features for the encoder benchmarks (bench_encoder_ood.py).

    python benchmarks/ood_features.py --backbone lite0 [--splits train dev test coco_dev]

Per (backbone, split): the EfficientNet-Lite pooled / logits / mid-level features of the centre
crop and its mirror (kept per view: the mirror doubles as training augmentation), and the raw
MiniLM embeddings of every caption. Computed once, kept under ``mmrag.paths.cache_dir()/ood``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="lite0", choices=["lite0", "lite2"])
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    a = ap.parse_args()
    for s in a.splits:
        load_split(a.backbone, s)


if __name__ == "__main__":
    main()
