"""Does the keyword table slow down indexing without --ocr? `mmrag index` of the same photos
with this checkout and with a checkout of the commit before the keyword table (FTS5 inserts in
the store's SQLite), side by side in one run: runs alternate (old, new, new, old, ...) so drifting
load on a shared machine hits both alike; one untimed warm-up each first (ONNX export caches,
page cache). Each run is a fresh process building a fresh index, timed end to end (start-up
included, the same for both). Beside it, the part the keyword table adds, timed alone: the FTS5
inserts (``keyword_text`` + ``INSERT INTO items_fts``) of the same rows (images and captions, read
back from the new index), in one transaction, best of 5 -- a shared machine's noise in the end-to-
end runs is far larger than this, so the direct figure bounds what the table can cost.

    git worktree add --detach /tmp/wt-old 3eb1c85      # the commit before mmrag/index/keyword.py
    nice -n 10 python benchmarks/bench_index_overhead.py --old /tmp/wt-old [--reps 3]

Prints a table and writes ``benchmarks/results/index_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _commit(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def index_once(checkout: Path, data: Path, kind: str, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "mmrag.cli", "index", str(data), "--out", str(out), "--kind", kind]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} (in {checkout}) exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return wall, {"files": sorted(p.name for p in out.iterdir())}


def count_images(out: Path) -> dict:
    """Images and captions in an index, read by this checkout's ``mmrag info --json``."""
    r = subprocess.run([sys.executable, "-m", "mmrag.cli", "info", "--index", str(out), "--json"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    try:
        d = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {}
    return {"images": d.get("images"), "captions": d.get("captions")}


def fts_insert_seconds(index: Path, repeats: int = 5) -> dict:
    """Seconds to write the keyword rows of ``index``'s stores (images + captions) into a fresh
    FTS5 trigram table, as SqliteMeta does (keyword_text, one executemany, one transaction)."""
    import sqlite3

    from mmrag.index.keyword import keyword_text

    metas = []
    for store in ("images", "captions"):
        db = index / store / "store.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            metas += [m for (m,) in c.execute("SELECT metadata FROM items")]
    best = float("inf")
    for _ in range(repeats):
        c = sqlite3.connect(":memory:")
        c.execute("CREATE VIRTUAL TABLE items_fts USING fts5(body, name, tokenize='trigram')")
        t = time.perf_counter()
        with c:
            texts = [keyword_text(json.loads(m)) for m in metas]
            c.executemany("INSERT INTO items_fts(rowid, body, name) VALUES (?, ?, ?)",
                          [(i, b, n) for i, (b, n) in enumerate(texts, 1) if b or n])
        best = min(best, time.perf_counter() - t)
        c.close()
    return {"rows": len(metas), "best_s": round(best, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the commit before the keyword table")
    ap.add_argument("--data", type=Path, default=DATA / "coco_dev" / "captions.jsonl")
    ap.add_argument("--kind", default="jsonl")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "index_overhead.json")
    args = ap.parse_args()
    if not (args.old / "mmrag" / "cli").is_dir():
        sys.exit(f"error: --old {args.old}: not a checkout of this project")
    if args.reps < 1:
        sys.exit("error: --reps must be at least 1")

    variants = {f"before keyword table ({_commit(args.old)})": args.old, f"now ({_commit(ROOT)})": ROOT}
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n, checkout in variants.items():  # warm-up, untimed
            out = tmp / f"warm_{names.index(n)}"
            _, info[n] = index_once(checkout, args.data, args.kind, out)
            info[n].update(count_images(out))
        k = 0
        for rep in range(args.reps):
            order = names if rep % 2 == 0 else names[::-1]
            for n in order:
                wall, _ = index_once(variants[n], args.data, args.kind, tmp / f"run_{k}")
                k += 1
                times[n].append(round(wall, 2))
                print(f"rep {rep + 1} {n}: {wall:.1f} s", file=sys.stderr)
        fts = fts_insert_seconds(tmp / f"warm_{len(names) - 1}")
    images = info[names[-1]].get("images")
    rows = {n: {"runs_s": times[n], "median_s": round(statistics.median(times[n]), 2),
                "images_per_s": round(images / statistics.median(times[n]), 2) if images else None,
                "images_indexed": info[n].get("images"),
                "captions_indexed": info[n].get("captions"), "index_files": info[n].get("files")} for n in names}
    ratio = rows[names[1]]["median_s"] / rows[names[0]]["median_s"]
    print(f"mmrag index {args.data} --kind {args.kind} ({images} images), {args.reps} alternating runs each")
    print(f"{'checkout':36} {'runs (s)':24} {'median s':>9} {'img/s':>7}")
    for n in names:
        r = rows[n]
        print(f"{n:36} {' '.join(f'{x:.1f}' for x in r['runs_s']):24} {r['median_s']:9.1f} {r['images_per_s']:7.2f}")
    print(f"now / before: {ratio:.3f}")
    print(f"FTS5 keyword inserts alone, same rows ({fts['rows']}): {1000 * fts['best_s']:.1f} ms "
          f"({100 * fts['best_s'] / rows[names[1]]['median_s']:.2f} % of the median run)")
    write_results(args.json, {"benchmark": "mmrag index without --ocr: before vs after the keyword table",
                              "data": str(args.data), "kind": args.kind, "reps": args.reps, "rows": rows,
                              "ratio_now_over_before": round(ratio, 3), "fts_insert": fts})


if __name__ == "__main__":
    main()
