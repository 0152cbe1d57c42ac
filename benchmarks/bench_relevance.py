"""Calibrated relevance (Platt scaling of the text->image cosine), fitted on Flickr8k dev:
reliability on dev and test, and how often "no good match" is said.

Pairs: every caption with its own image (relevant) and with one random other image (not),
equal numbers. ECE: 10 equal-width bins, pair-weighted |fraction relevant - mean probability|.
"No good match" rates: over the 1,000 test images, every test caption-1 query (should rarely
say it) and 200 nonsense letter strings (should nearly always say it), best hit's relevance
against NO_MATCH_THRESHOLD; also with the top 10 hits ranked as search ranks them (the images'
hubness prior where the best image is a hub, ``mmrag.encoders.image_prior``) against by cosine,
the best relevance of the 10 read. Writes the fit to mmrag/assets/relevance.json (--write-asset).

    python benchmarks/bench_relevance.py [--json benchmarks/results/relevance.json] [--write-asset]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from mmrag.paths import write_json  # noqa: E402
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "relevance.json")
    ap.add_argument("--write-asset", action="store_true", help="store the fit in mmrag/assets/relevance.json")
    args = ap.parse_args()

    import numpy as np

    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders import create_encoder
    from mmrag.retrieval.cache import corpus_image_vectors
    from mmrag.retrieval.relevance import (ASSET, NO_MATCH_THRESHOLD, expected_calibration_error, fit_platt,
                                           pair_scores, RelevanceModel)

    enc = create_encoder("effnet-minilm")
    dev = read_corpus("flickr8k", DATA / "flickr8k", split="dev")
    test = read_corpus("flickr8k", DATA / "flickr8k", split="test")
    s_dev, y_dev = pair_scores(enc, dev)
    a, b = fit_platt(s_dev, y_dev)
    model = RelevanceModel(a=a, b=b, fingerprint=enc.fingerprint(), fitted_on="flickr8k dev", n_pairs=len(y_dev))
    s_test, y_test = pair_scores(enc, test)
    res = {"encoder": "effnet-minilm", "fingerprint": model.fingerprint, "a": a, "b": b,
           "threshold": NO_MATCH_THRESHOLD}
    for name, s, y in (("dev", s_dev, y_dev), ("test", s_test, y_test)):
        p = model(s)
        raw = np.clip(s, 0, 1)  # the uncalibrated cosine read as a probability, for contrast
        res[name] = {"pairs": int(len(y)), "ECE": round(expected_calibration_error(p, y), 4),
                     "ECE_raw_cosine": round(expected_calibration_error(raw, y), 4),
                     "brier": round(float(((p - y) ** 2).mean()), 4),
                     "accuracy_at_threshold": round(float(((p >= NO_MATCH_THRESHOLD) == (y == 1)).mean()), 4)}
    img = corpus_image_vectors(enc, test, progress=False)
    real = enc.embed_texts([it.captions[0] for it in test.items])
    rng = random.Random(0)
    junk = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))) + " "
            + "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))) for _ in range(200)]
    nons = enc.embed_texts(junk)
    best_real = model((real @ img.T).max(1))
    best_junk = model((nons @ img.T).max(1))
    res["no_good_match_rate"] = {"real_queries": round(float((best_real < NO_MATCH_THRESHOLD).mean()), 4),
                                 "nonsense_queries": round(float((best_junk < NO_MATCH_THRESHOLD).mean()), 4)}
    from mmrag.encoders.image_prior import rerank_rows

    prior, gate = enc.image_prior(img), enc.image_prior_gate()
    res["no_good_match_rate_top10"] = {}
    for name, Q in (("real_queries", real), ("nonsense_queries", nons)):
        S = Q @ img.T
        for arm, R in (("cosine", S), ("image_prior", None if prior is None else rerank_rows(S, prior, gate))):
            if R is None:
                continue
            top = np.argsort(-R, 1, kind="stable")[:, :10]
            best = model(np.take_along_axis(S, top, 1).max(1))  # relevance reads the cosine
            res["no_good_match_rate_top10"].setdefault(arm, {})[name] = round(float((best < NO_MATCH_THRESHOLD).mean()), 4)
    print(f"Platt fit on Flickr8k dev ({len(y_dev)} pairs): p = 1/(1+exp(-({a:.3f} cos + {b:.3f})))")
    print(f"{'split':5} {'pairs':>6} {'ECE':>7} {'ECE raw':>8} {'Brier':>7} {'acc@0.5':>8}")
    for name in ("dev", "test"):
        r = res[name]
        print(f"{name:5} {r['pairs']:6d} {r['ECE']:7.4f} {r['ECE_raw_cosine']:8.4f} {r['brier']:7.4f} "
              f"{r['accuracy_at_threshold']:8.4f}")
    g = res["no_good_match_rate"]
    print(f"'no good match' (best of 1,000 test images < {NO_MATCH_THRESHOLD}): real caption queries "
          f"{100 * g['real_queries']:.1f} %, nonsense strings {100 * g['nonsense_queries']:.1f} %")
    for arm, g in res["no_good_match_rate_top10"].items():
        print(f"'no good match' over the top 10 ranked by {arm}: real caption queries {100 * g['real_queries']:.1f} %, "
              f"nonsense strings {100 * g['nonsense_queries']:.1f} %")
    if args.write_asset:
        stored = json.loads(ASSET.read_text()) if ASSET.exists() else {}
        stored[model.fingerprint] = {**asdict(model), "ece_dev": res["dev"]["ECE"], "ece_test": res["test"]["ECE"]}
        write_json(ASSET, stored)  # a shipped asset, not a result: no machine or date
        print(f"wrote {ASSET}")
    write_results(args.json, res)


if __name__ == "__main__":
    main()
