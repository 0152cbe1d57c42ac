"""RIR (reverse-image-retrieval augmented answering) on VQA-RAD: choose on dev, report on test.

    python benchmarks/bench_rir.py [--data-dir ../shared/data/vqa_rad] [--dev-fraction 0.2]
                                   [--generator local --gen-limit N] [--json benchmarks/results/rir_vqa_rad.json]

1. Dev: VQA-RAD train is split by image (80 % "fit" images indexed with their QA pairs, 20 %
   "dev" images whose questions are asked); no dev image is in the fit index, so dev measures
   the unseen-image case. The knn answerer's question pool (top_m, tau_q) is chosen for the
   no-RIR baseline first (its own best), then the RIR part (k, tau_img, mix) on top of it, by
   dev "overall" (exact match on CLOSED, answer-in-prediction on OPEN).
2. Image retrieval sanity check: how often the neighbours of a dev image show the same organ
   (HEAD / CHEST / ABD), against chance.
3. Test (never used for a choice): index = all train images with their train QA pairs; all 451
   test questions, with and without RIR, in both settings (query image excluded = headline;
   included), 95 % bootstrap intervals, per question type.
4. Optional ``--generator NAME``: the same with a generator answerer (cue block in the prompt),
   on the first ``--gen-limit`` test questions.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.tasks.rir import (  # noqa: E402
    AnswerRequest,
    KnnAnswerer,
    KnnConfig,
    RIRPipeline,
    create_provider,
    index_vqa,
    read_vqa_rad,
    split_by_image,
)
from mmrag.tasks.rir.evaluate import run_eval, score_question, summarize, vqa_index_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def dev_grid(fit, dev, enc, kmax: int = 30):
    """Every configuration's dev scores (unseen images: dev images are not in the fit index)."""
    idx = vqa_index_dir(fit, enc)
    index_vqa(fit, idx, enc, progress=True)
    prov = create_provider("index", index_dir=idx, encoder=enc)
    pipe = RIRPipeline(prov, answerer="knn")
    images = list(dict.fromkeys(q.image for q in dev.questions))
    ivec = dict(zip(images, enc.embed_images(images, progress=True)))
    qvec = pipe.question_vectors([q.question for q in dev.questions])
    neigh = {p: prov.search(vector=ivec[p], k=kmax) for p in images}

    organs = {i: (m.get("image_organ") or "") for i, m in prov.all_metadata()}
    dev_organ = {q.image: q.metadata.get("image_organ", "") for q in dev.questions}
    at1 = np.mean([organs[neigh[p][0].id] == dev_organ[p] for p in images])
    at5 = np.mean([np.mean([organs[n.id] == dev_organ[p] for n in neigh[p][:5]]) for p in images])
    counts = np.array(list({o: list(organs.values()).count(o) for o in set(organs.values())}.values()), float)
    chance = float(((counts / counts.sum()) ** 2).sum())
    organ = {"same_organ_at_1": round(100 * at1, 1), "same_organ_at_5": round(100 * at5, 1),
             "chance": round(100 * chance, 1), "n_images": len(images)}

    def score(cfg: KnnConfig, k: int) -> float:
        ans = KnnAnswerer(pipe.bank, cfg)
        recs = [score_question(q, ans.answer(AnswerRequest(q.question, qv, neighbours=neigh[q.image][:k])).text)
                for q, qv in zip(dev.questions, qvec)]
        return summarize(recs, n_boot=1)

    rows = []
    t = time.perf_counter()
    for top_m, tau_q in itertools.product([1, 3, 5, 10, 20, 50], [0.02, 0.05, 0.1, 0.2]):
        s = score(KnnConfig(top_m=top_m, tau_q=tau_q), 0)
        rows.append({"rir": False, "top_m": top_m, "tau_q": tau_q, **{m: s[m] for m in ("closed_acc", "open_recall", "overall")}})
    base = max((r for r in rows), key=lambda r: (r["overall"], -r["top_m"]))
    for k, tau_img, mix in itertools.product([1, 3, 5, 10, 20, 30], [0.02, 0.05, 0.1, math.inf], [0.25, 0.5, 0.75, 1.0]):
        cfg = KnnConfig(top_m=base["top_m"], tau_q=base["tau_q"], tau_img=tau_img, mix=mix)
        s = score(cfg, k)
        rows.append({"rir": True, "top_m": base["top_m"], "tau_q": base["tau_q"], "k": k,
                     "tau_img": tau_img if math.isfinite(tau_img) else "inf", "mix": mix,
                     **{m: s[m] for m in ("closed_acc", "open_recall", "overall")}})
    best = max((r for r in rows if r["rir"]), key=lambda r: (r["overall"], -r["k"]))
    print(f"dev grid: {len(rows)} configurations in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    pipe.close()
    return rows, base, best, organ


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/vqa_rad"))
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generator", default=None, help="also evaluate this generator answerer (e.g. local)")
    ap.add_argument("--gen-limit", type=int, default=None, help="generator: first N test questions")
    ap.add_argument("--bridge", default=None, help="effnet-minilm bridge (shipped name or file; default: the default)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "rir_vqa_rad.json"))
    a = ap.parse_args()

    enc = create_encoder("effnet-minilm", **({"bridge": a.bridge} if a.bridge else {}))
    train = read_vqa_rad(a.data_dir, "train")
    fit, dev = split_by_image(train, a.dev_fraction, a.seed)
    print(f"train {len(train)} questions / {len(train.image_ids())} images -> fit {len(fit)} / "
          f"{len(fit.image_ids())}, dev {len(dev)} / {len(dev.image_ids())}", file=sys.stderr)
    rows, base, best, organ = dev_grid(fit, dev, enc)
    print(f"dev no-RIR best: {base}\ndev RIR best:    {best}\norgan check: {organ}", file=sys.stderr)
    tau_img = math.inf if best["tau_img"] == "inf" else best["tau_img"]
    knn = {"top_m": best["top_m"], "tau_q": best["tau_q"], "tau_img": tau_img, "mix": best["mix"]}

    t = time.perf_counter()
    rep = run_eval("vqa-rad", Path(a.data_dir), k=best["k"], knn_options=knn, encoder=enc)
    test_s = time.perf_counter() - t
    out = {
        "encoder": "effnet-minilm", "bridge": a.bridge,
        "dev": {"n_questions": len(dev), "n_images": len(dev.image_ids()), "fit_images": len(fit.image_ids()),
                "no_rir_best": base, "rir_best": best, "grid": rows, "image_retrieval_organ_check": organ},
        "chosen": {"k": best["k"], **{k_: (v if not (isinstance(v, float) and math.isinf(v)) else "inf")
                                      for k_, v in knn.items()}},
        "test_knn": {k_: v for k_, v in rep.items() if k_ != "records"},
        "test_knn_seconds": round(test_s, 1),
    }
    if a.generator:
        from mmrag.errors import ModelUnavailableError

        try:
            t = time.perf_counter()
            g = run_eval("vqa-rad", Path(a.data_dir), generator=a.generator, limit=a.gen_limit, encoder=enc)
            out["test_generator"] = {k_: v for k_, v in g.items() if k_ != "records"}
            out["test_generator_seconds"] = round(time.perf_counter() - t, 1)
            out["test_generator_records"] = g["records"]
        except ModelUnavailableError as e:
            out["test_generator"] = {"unavailable": str(e)}
    write_results(a.json, out)

    print(f"\nDev (unseen images, {len(dev)} questions): no-RIR best overall {base['overall']:.1f} "
          f"(top_m={base['top_m']}, tau_q={base['tau_q']}); RIR best {best['overall']:.1f} "
          f"(k={best['k']}, tau_img={best['tau_img']}, mix={best['mix']})")
    print(f"Same organ among neighbours: @1 {organ['same_organ_at_1']} %, @5 {organ['same_organ_at_5']} % "
          f"(chance {organ['chance']} %)\n")
    for name, r in [("knn", rep)] + ([("generator", out["test_generator"])] if "settings" in out.get("test_generator", {}) else []):
        print(f"Test, {name} ({r['answerer']}, {r['n_questions']} questions):")
        print(f"| setting | metric | no RIR | RIR | gain (95 % CI) |\n|---|---|---|---|---|")
        for s, res in r["settings"].items():
            for m in ("closed_acc", "open_recall", "overall"):
                g = res["gain"][m]
                print(f"| {s} | {m} | {res['no_rir'][m]:.1f} {res['no_rir'][m + '_ci95']} | "
                      f"{res['rir'][m]:.1f} {res['rir'][m + '_ci95']} | {g['points']:+.1f} {g['ci95']} |")
        print()


if __name__ == "__main__":
    main()
