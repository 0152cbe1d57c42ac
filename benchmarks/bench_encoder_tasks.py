"""The tasks built on the encoder, re-run per effnet-minilm bridge, old vs new side by side (issue 15).

    python benchmarks/bench_encoder_tasks.py [--bridges flickr8k-train flickr8k-train-v2 [PATH ...]]
        [--tasks caption chat ask] [--questioners split bank] [--from-json DIR]
        [--vqa-rad-bridge v1:3000 v2:10000 ...] [--json benchmarks/results/encoder_tasks.json]

Each cell is one run of the CLI verb a user would type (in a subprocess, so exactly what the verb
does), with ``--bridge B``:

* ``caption``: ``mmrag eval caption ../shared/data/flickr8k --kind flickr8k --split test`` (CIDEr-D,
  BLEU-4); the datastore is the Flickr8k train captions embedded with the same encoder;
* ``chat``: ``mmrag eval chat ../shared/data/flickr8k --split test --search-space all --rounds 5
  --questioner Q`` (cumulative Hits@10 at rounds 0 and 5, the gain, split minus bank at round 5);
  ``bank`` runs with ``--rescore-weight 0.25``, its dev choice (docs/benchmarks.md, ChatIR);
* ``ask``: ``mmrag eval ask ../shared/data/vqa_rad --kind vqa-rad`` (knn answerer; overall /
  closed / open with and without RIR cues, query image excluded and included); the knowledge index
  of the train questions is built with the bridge.

A bridge is a shipped name or a file from ``mmrag bridge fit``. The Flickr8k tasks (caption, chat)
are skipped for a bridge fitted on another corpus (e.g. ``--kind vqa-rad``: radiology images);
the table shows "-" there.

``--vqa-rad-bridge RECIPE:LAMBDA ...``: also fit a bridge on VQA-RAD train (``mmrag bridge fit
--kind vqa-rad``), its recipe and λ chosen on dev (:func:`vqa_rad_dev`), and run ``ask`` on it.

``--from-json DIR``: each run's CLI JSON is ``DIR/<task>_<bridge>.json``; a run whose file is
already there is read instead of run again (runs made by hand with ``--json`` count), the others
are run and written there. Without it, the runs go to a fresh temporary folder.

Old vs new: paired 95 % bootstrap intervals of the difference against the first bridge where the
runs keep per-item results (per-image CIDEr-D of the predictions; per-question RIR scores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_results  # noqa: E402

DATA = Path("../shared/data")  # relative to the repository root, where the runs start
TASKS = ("caption", "chat", "ask")
FLICKR_TASKS = ("caption", "chat")
BANK_RESCORE = "0.15"  # bank's dev choice with the image prior (benchmarks/bench_chat.py); split's is the default


def label(bridge: str) -> str:
    return Path(bridge).stem if ("/" in bridge or bridge.endswith(".npz")) else bridge


def bridge_corpus(bridge: str) -> str:
    """Which corpus a bridge was fitted on (its file's info), to skip tasks on another domain."""
    from mmrag.encoders.bridge import Bridge
    from mmrag.encoders.effnet_minilm import resolve_bridge

    info = Bridge.load(resolve_bridge(bridge)).info
    return str(info.get("corpus") or "")


def commands(bridge: str, data: Path, questioners: list[str]) -> dict[str, list[str]]:
    f8k, vqa = str(data / "flickr8k"), str(data / "vqa_rad")
    out = {"caption": ["eval", "caption", f8k, "--kind", "flickr8k", "--split", "test"]}
    for q in questioners:
        out[f"chat-{q}"] = ["eval", "chat", f8k, "--split", "test", "--search-space", "all",
                            "--questioner", q, "--rounds", "5"] + (["--rescore-weight", BANK_RESCORE] if q == "bank" else [])
    out["ask"] = ["eval", "ask", vqa, "--kind", "vqa-rad"]
    return {k: v + ["--bridge", bridge] for k, v in out.items()}


def run_cli(args: list[str], json_path: Path, log) -> dict:
    cmd = [sys.executable, "-m", "mmrag.cli", *args, "--json", str(json_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log(f"running: mmrag {' '.join(args)}")
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: mmrag {' '.join(args)} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    log(f"  {time.perf_counter() - t:.0f} s")
    return json.loads(json_path.read_text(encoding="utf-8"))


def paired_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile interval of mean(a - b) over paired items."""
    rng = np.random.default_rng(seed)
    d = a - b
    s = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    return [round(float(x), 2) for x in np.percentile(s, [2.5, 97.5])]


def caption_per_image(res: dict, data: Path = DATA) -> dict:
    from mmrag.corpus.readers import read_corpus
    from mmrag.eval.caption_metrics import cider_d_per_image

    refs = {it.id: it.captions for it in read_corpus("flickr8k", ROOT / data / "flickr8k", split="test").items}
    preds = {k: v for k, v in res["predictions"].items() if k in refs}
    return cider_d_per_image(preds, {k: refs[k] for k in preds})


def ask_scores(res: dict, setting: str, arm: str) -> dict:
    return {r["qid"]: r["score"] for r in res["records"][setting][arm]}


def summarise(runs: dict[str, dict], bridges: list[str], questioners: list[str]) -> dict:
    """One row per bridge: the figures of every task, and differences against the first bridge."""
    rows = []
    base = label(bridges[0])
    base_cider = None
    for b in bridges:
        lb = label(b)
        row: dict = {"bridge": lb}
        cap = runs.get(f"caption_{lb}")
        if cap:
            row["caption"] = {"CIDEr-D": round(cap["CIDEr-D"], 2), "BLEU-4": round(cap["BLEU-4"], 2),
                              "METEOR": round(cap.get("METEOR", float("nan")), 2), "n_images": cap["n_images"]}
            per = caption_per_image(cap)
            if base_cider is None:
                base_cider = per
            elif lb != base:
                keys = sorted(set(per) & set(base_cider))
                a, c = np.array([per[k] for k in keys]), np.array([base_cider[k] for k in keys])
                row["caption"]["CIDEr-D_vs_first"] = {"points": round(float((a - c).mean()), 2),
                                                      "ci95": paired_ci(a, c)}
        for q in questioners:
            ch = runs.get(f"chat-{q}_{lb}")
            if ch:
                h = ch["hits@10"]
                row[f"chat_{q}"] = {"hits@10": h, "r0": h[0], "r5": h[5], "gain": round(h[5] - h[0], 2),
                                    "hits@1_r5": ch["hits@1"][5], "n_targets": ch["n_queries"],
                                    "corpus_size": ch["corpus_size"]}
        if "chat_split" in row and "chat_bank" in row:
            row["chat_split_minus_bank_r5"] = round(row["chat_split"]["r5"] - row["chat_bank"]["r5"], 2)
        ask = runs.get(f"ask_{lb}")
        if ask:
            a = {}
            for s, res in ask["settings"].items():
                a[s] = {arm: {m: res[arm][m] for m in ("closed_acc", "open_recall", "overall")} for arm in ("no_rir", "rir")}
                a[s]["gain"] = {m: res["gain"][m] for m in ("closed_acc", "open_recall", "overall")}
            base_ask = runs.get(f"ask_{base}")
            if lb != base and base_ask:
                for s in a:
                    x, y = ask_scores(ask, s, "rir"), ask_scores(base_ask, s, "rir")
                    keys = sorted(set(x) & set(y))
                    xa, ya = np.array([x[k] for k in keys]) * 100, np.array([y[k] for k in keys]) * 100
                    a[s]["rir_overall_vs_first"] = {"points": round(float((xa - ya).mean()), 2), "ci95": paired_ci(xa, ya)}
            a["embed_s"] = ask.get("timing", {}).get("embed_s")
            row["ask"] = a
        rows.append(row)
    return {"rows": rows}


def fmt_ci(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{d['points']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def table(rows: list[dict], questioners: list[str]) -> str:
    """Metrics down, bridges across: old and new side by side."""
    def get(r, *path, f="{:.1f}"):
        x = r
        for p in path:
            if not isinstance(x, dict) or p not in x:
                return "-"
            x = x[p]
        return f.format(x) if isinstance(x, (int, float)) else str(x)

    lines = []
    spec = [("caption: Flickr8k test CIDEr-D", ("caption", "CIDEr-D")),
            ("caption: BLEU-4", ("caption", "BLEU-4")),
            ("caption: CIDEr-D vs first bridge (paired 95 % CI)", None)]
    for q in questioners:
        spec += [(f"chat {q}: Hits@10 r0", (f"chat_{q}", "r0")), (f"chat {q}: Hits@10 r5", (f"chat_{q}", "r5")),
                 (f"chat {q}: gain r0->r5", (f"chat_{q}", "gain"))]
    if "split" in questioners and "bank" in questioners:
        spec.append(("chat: split - bank at r5", ("chat_split_minus_bank_r5",)))
    for s, name in (("query_image_excluded", "excluded"), ("query_image_included", "included")):
        spec += [(f"ask {name}: overall no RIR", ("ask", s, "no_rir", "overall")),
                 (f"ask {name}: overall RIR", ("ask", s, "rir", "overall")),
                 (f"ask {name}: RIR gain (95 % CI)", ("ask", s, "gain", "overall")),
                 (f"ask {name}: closed / open with RIR", ("ask", s, "rir")),
                 (f"ask {name}: RIR vs first bridge (paired 95 % CI)", ("ask", s, "rir_overall_vs_first"))]
    head = "| metric | " + " | ".join(r["bridge"] for r in rows) + " |"
    lines += [head, "|---|" + "---:|" * len(rows)]
    for name, path in spec:
        cells = []
        for r in rows:
            if path is None:
                cells.append(fmt_ci(r.get("caption", {}).get("CIDEr-D_vs_first")))
            elif path[-1] == "overall" and path[-2] == "gain":
                g = r.get("ask", {}).get(path[1], {}).get("gain", {}).get("overall")
                cells.append(fmt_ci(g))
            elif path[-1] == "rir" and path[0] == "ask":
                x = r.get("ask", {}).get(path[1], {}).get("rir")
                cells.append(f"{x['closed_acc']:.1f} / {x['open_recall']:.1f}" if x else "-")
            elif path[-1] == "rir_overall_vs_first":
                cells.append(fmt_ci(r.get("ask", {}).get(path[1], {}).get("rir_overall_vs_first")))
            else:
                cells.append(get(r, *path))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def vqa_rad_dev(data: Path, candidates: list[tuple[str, float]], shipped: list[str], work: Path, log) -> list[dict]:
    """Choose the VQA-RAD bridge on dev, never on test (the split of benchmarks/bench_rir.py):
    VQA-RAD train split by image, seed 0, 80 % "fit" / 20 % "dev". Each candidate (recipe, λ)
    is fitted on the fit images' QA texts, the fit images are indexed with it as the knowledge
    index, and the dev questions are answered (their images are not in the index: unseen
    images). The shipped bridges are scored the same way for reference. Returns one row each."""
    from mmrag.corpus.vqa_rad import qa_corpus, read_vqa_rad, split_by_image
    from mmrag.encoders.effnet_minilm import (V2_ZEROSHOT_WEIGHT, EffnetMinilmEncoder,
                                              default_recipe, fit_effnet_bridge, v2_recipe)
    from mmrag.tasks.rir import RIRPipeline, create_provider, index_vqa
    from mmrag.tasks.rir.evaluate import evaluate_vqa, vqa_index_dir

    train = read_vqa_rad(ROOT / data / "vqa_rad", "train")
    fit, dev = split_by_image(train, 0.2, 0)
    rows = []
    arms = [(b, None, None) for b in shipped] + [(None, r, lam) for r, lam in candidates]
    for bridge, recipe, lam in arms:
        t = time.perf_counter()
        if bridge is None:
            name = f"vqa-rad-fit {recipe} λ {lam:g}"
            v2 = recipe == "v2"
            b = fit_effnet_bridge(qa_corpus(fit, captions=True), v2_recipe() if v2 else default_recipe(),
                                  lam=lam, progress=False, zeroshot_weight=V2_ZEROSHOT_WEIGHT if v2 else 0.0)
            path = work / f"dev_{recipe}_{lam:g}.npz"
            b.save(path)
            enc = EffnetMinilmEncoder(bridge=path)
        else:
            name, enc = bridge, EffnetMinilmEncoder(bridge=bridge)
        idx = vqa_index_dir(fit, enc)
        index_vqa(fit, idx, enc, progress=False)
        pipe = RIRPipeline(create_provider("index", index_dir=idx, encoder=enc), answerer="knn")
        try:
            # dev images are not in the fit index, so "included" is already the unseen-image case
            res = evaluate_vqa(pipe, dev, settings=("query_image_included",), n_boot=1, progress=False)
        finally:
            pipe.close()
        r = res["settings"]["query_image_included"]
        row = {"bridge": name, "recipe": recipe, "lam": lam, "fitted_on_vqa_rad": bridge is None,
               "no_rir_overall": r["no_rir"]["overall"], "rir_overall": r["rir"]["overall"],
               "rir_closed": r["rir"]["closed_acc"], "rir_open": r["rir"]["open_recall"],
               "gain": r["gain"]["overall"]["points"], "seconds": round(time.perf_counter() - t, 1)}
        log(f"dev {name}: RIR overall {row['rir_overall']:.1f} (no RIR {row['no_rir_overall']:.1f}), {row['seconds']} s")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridges", nargs="+", default=["flickr8k-train", "flickr8k-train-v2"])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--questioners", nargs="+", default=["split", "bank"], choices=["split", "bank"])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="folder of the runs' CLI JSON: existing files are read, missing runs written there")
    ap.add_argument("--vqa-rad-bridge", nargs="*", default=None, metavar="RECIPE:LAMBDA",
                    help="also fit a bridge on VQA-RAD train, its recipe and λ chosen on dev among these "
                         "(e.g. v1:1000 v1:3000 v2:10000), and add it to --bridges (task ask only)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "encoder_tasks.json")
    a = ap.parse_args()
    if len({label(b) for b in a.bridges}) != len(a.bridges):
        ap.error("two bridges have the same name; give files distinct names")
    runs_dir = a.from_json or Path(tempfile.mkdtemp(prefix="encoder_tasks_"))
    runs_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    extra: dict = {}
    if a.vqa_rad_bridge:
        try:
            cands = [(c.split(":")[0], float(c.split(":")[1])) for c in a.vqa_rad_bridge]
        except (IndexError, ValueError):
            ap.error("--vqa-rad-bridge takes RECIPE:LAMBDA items, e.g. v1:3000")
        if any(r not in ("v1", "v2") for r, _ in cands):
            ap.error("--vqa-rad-bridge recipes are v1 or v2")
        out_path = runs_dir / "vqa-rad-train.npz"
        dev_path = runs_dir / "vqa_rad_dev.json"
        if dev_path.is_file():
            dev_rows = json.loads(dev_path.read_text(encoding="utf-8"))["rows"]
            log(f"reading {dev_path}")
        else:
            dev_rows = vqa_rad_dev(a.data, cands, a.bridges, runs_dir, log)
            write_results(dev_path, {"rows": dev_rows})
        best = max((r for r in dev_rows if r["fitted_on_vqa_rad"]), key=lambda r: r["rir_overall"])
        fit_args = ["bridge", "fit", str(a.data / "vqa_rad"), "--kind", "vqa-rad", "--split", "train",
                    "--recipe", best["recipe"], "--lam", f"{best['lam']:g}", "--out", str(out_path)]
        if not out_path.is_file():
            log("running: mmrag " + " ".join(fit_args))
            subprocess.run([sys.executable, "-m", "mmrag.cli", *fit_args], cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        extra["vqa_rad_bridge"] = {"dev": dev_rows, "chosen": best, "fit_command": "mmrag " + " ".join(fit_args)}
        a.bridges = a.bridges + [str(out_path)]

    runs: dict[str, dict] = {}
    ran: dict[str, str] = {}
    for b in a.bridges:
        lb = label(b)
        flickr = bridge_corpus(b).startswith("flickr8k")
        for key, args in commands(b, a.data, a.questioners).items():
            task = key.split("-")[0]
            if task not in a.tasks or (task in FLICKR_TASKS and not flickr):
                continue
            path = runs_dir / f"{key}_{lb}.json"
            if path.is_file():
                log(f"reading {path}")
                runs[f"{key}_{lb}"] = json.loads(path.read_text(encoding="utf-8"))
                ran[f"{key}_{lb}"] = "read: mmrag " + " ".join(args)
            else:
                runs[f"{key}_{lb}"] = run_cli(args, path, log)
                ran[f"{key}_{lb}"] = "ran: mmrag " + " ".join(args)
    out = summarise(runs, a.bridges, a.questioners)
    print(table(out["rows"], a.questioners))
    if extra:
        print("\nVQA-RAD bridge, dev (train split by image; dev images unseen): RIR overall / no RIR")
        for r in extra["vqa_rad_bridge"]["dev"]:
            print(f"  {r['bridge']:<28} {r['rir_overall']:5.1f} / {r['no_rir_overall']:5.1f}")
        print(f"  chosen: {extra['vqa_rad_bridge']['chosen']['bridge']}")
    write_results(a.json, {**out, **extra, "bridges": a.bridges, "tasks": a.tasks, "runs": ran, "runs_dir": str(runs_dir)})


if __name__ == "__main__":
    main()
