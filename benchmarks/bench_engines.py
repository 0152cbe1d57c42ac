"""Embedding throughput: sequential vs Ray (2 workers) on the same images, and a scaling model.

    nice -n 10 python benchmarks/bench_engines.py [--images 400] [--workers 2]
        [--json benchmarks/results/engines.json]

Both engines run ``mmrag.embedding.run_embedding`` (the same reader -> mapper -> writer code,
so the same work: hash the file, embed the image, embed its 5 captions, write the shard) on the
first --images Flickr8k test images. ``sequential``: one process, the encoder already loaded
(its load time is reported apart). ``ray``: a local Ray runtime with --workers CPUs and one
actor per worker, each loading its own encoder; measured cold (ray.init + actors + encoders +
work) and its fixed cost measured with a 2-image run, so steady-state = work / (cold - fixed).
Then the shards are indexed (single writer, FAISS store) to time the part that does not scale
out. The scaling model for N machines is printed from these measured rates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.embedding import EmbeddingJob, index_from_embeddings, run_embedding  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--target", type=int, default=1_000_000, help="corpus size for the scaling model")
    ap.add_argument("--json", default="benchmarks/results/engines.json")
    a = ap.parse_args()
    items = read_corpus("flickr8k", a.data_dir, split="test").items[: a.images]
    n = len(items)
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    res: dict = {"images": n, "captions": sum(len(it.captions) for it in items), "workers": a.workers}
    try:
        t = time.perf_counter()
        enc = create_encoder("effnet-minilm")
        enc.embed_images([items[0].path])  # loads the image network too
        res["encoder_load_s"] = round(time.perf_counter() - t, 2)

        job = EmbeddingJob(distributor="sequential", shard_size=a.shard_size, progress=False)
        t = time.perf_counter()
        run_embedding(items, tmp / "seq", encoder=enc, job=job)
        seq_s = time.perf_counter() - t
        res["sequential"] = {"seconds": round(seq_s, 2), "images_per_s": round(n / seq_s, 2)}
        print(f"sequential: {n} images in {seq_s:.1f} s = {n / seq_s:.2f} img/s", flush=True)

        rjob = EmbeddingJob(distributor="ray", num_workers=a.workers, shard_size=a.shard_size, progress=False)
        t = time.perf_counter()
        run_embedding(items[:2], tmp / "ray_fixed", encoder_name="effnet-minilm", job=rjob)
        fixed = time.perf_counter() - t
        t = time.perf_counter()
        run_embedding(items, tmp / "ray", encoder_name="effnet-minilm", job=rjob)
        cold = time.perf_counter() - t
        steady = max(cold - fixed, 1e-9)
        res["ray"] = {"seconds_cold": round(cold, 2), "fixed_cost_s": round(fixed, 2),
                      "images_per_s_cold": round(n / cold, 2), "images_per_s_steady": round(n / steady, 2)}
        print(f"ray x{a.workers}: {n} images in {cold:.1f} s cold ({n / cold:.2f} img/s); fixed cost "
              f"{fixed:.1f} s (ray.init, actors, encoders); steady {n / steady:.2f} img/s", flush=True)

        from mmrag.index.collection import Collection, IndexManifest
        from mmrag.embedding import IndexReport

        col = Collection.create_or_open(tmp / "index", IndexManifest(encoder="effnet-minilm", encoder_options={}, dim=enc.dim))
        t = time.perf_counter()
        index_from_embeddings(tmp / "ray", col, IndexReport(), {}, progress=False)
        col.save()
        col.close()
        idx_s = time.perf_counter() - t
        res["index_from_shards"] = {"seconds": round(idx_s, 3), "images_per_s": round(n / idx_s, 1)}
        print(f"index from shards: {n} images (+captions) in {idx_s:.2f} s = {n / idx_s:.0f} img/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Scaling model: embedding is embarrassingly parallel (each actor owns whole shards), so with
    # N machines like this one it runs at N x the best single-machine rate; the fixed cost (start
    # + encoder load, paid in parallel) and the single-writer index build do not shrink.
    rate = max(res["sequential"]["images_per_s"], res["ray"]["images_per_s_steady"])
    idx_rate = res["index_from_shards"]["images_per_s"]
    fixed = res["ray"]["fixed_cost_s"]
    model = []
    for machines in (1, 2, 4, 8, 16, 32, 64):
        embed = a.target / (machines * rate)
        total = fixed + embed + a.target / idx_rate
        model.append({"machines": machines, "embed_h": round(embed / 3600, 2),
                      "index_h": round(a.target / idx_rate / 3600, 2), "total_h": round(total / 3600, 2)})
    base = model[0]["total_h"]
    for m in model:
        m["speedup"] = round(base / m["total_h"], 2)
        m["efficiency"] = round(m["speedup"] / m["machines"], 2)
    res["scaling_model"] = {"target_images": a.target, "per_machine_images_per_s": rate,
                            "index_images_per_s": idx_rate, "rows": model}
    print(f"\nscaling model, {a.target:,} images, machines like this one ({rate:.1f} img/s each; "
          f"index from shards {idx_rate:.0f} img/s, single writer)")
    print(f"{'machines':>9}{'embed h':>9}{'index h':>9}{'total h':>9}{'speedup':>9}{'effic.':>8}")
    for m in model:
        print(f"{m['machines']:>9}{m['embed_h']:>9}{m['index_h']:>9}{m['total_h']:>9}{m['speedup']:>9}{m['efficiency']:>8}")
    write_results(a.json, res)


if __name__ == "__main__":
    main()
