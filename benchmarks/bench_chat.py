"""Chat-based image retrieval (ChatIR protocol) on Flickr8k with the simulated user.

    python benchmarks/bench_chat.py [--data-dir ../shared/data/flickr8k] [--rounds 10]
                                    [--dev-limit N] [--dev-rounds 5] [--llm-limit N] [--llm-rounds 5]
                                    [--image-prior/--no-image-prior] [--grid all|weights]
                                    [--no-references] [--skip-test] [--out benchmarks/results]

Every ranking uses the images' gated hubness prior, as ``mmrag eval chat`` does by default
(``--no-image-prior``: plain cosine, how the ranking was first chosen; then the files are
``chat_dev.json``/``chat_test.json``, with the prior ``chat_dev_prior.json``/``chat_test_prior.json``).
``--grid weights``: only the ``words`` + ``loglik`` rows (the re-scoring weight; ``--weights``: only
those); ``--no-references``
skips split's what-each-part-adds rows on dev; ``--skip-test`` stops after dev.

Targets: every image of a split; description = its first caption; the simulated user answers
from its other four captions only. Candidates' caption words come from the Flickr8k *train*
caption datastore (each image's own captions excluded), never from the targets' captions.

1. Dev (the first --dev-limit dev targets, all 1,000 by default, searched among all 8,091
   images, --dev-rounds rounds): a grid of ranking configurations
   (query mode x answer re-scoring mode and weight) for each questioner; each questioner's best
   configuration by cumulative Hits@10 at round 5 is chosen (ties: later rounds, then simpler).
   For ``split`` it also measures, at the chosen ranking, what each part adds: yes/no questions
   only, up to 3 options per question, candidate temperature 0.05, and the raw caption-word
   fractions instead of viewer chances (``describers=1``, with the chosen and with linear
   re-scoring).
2. Test (1,000 test targets; never used for a choice): every questioner with its chosen
   configuration, searched among the 1,000 test images and among all 8,091 images. ``llm``
   (SmolLM2 via the ``local`` generator) is slow on a CPU, so it runs on the first
   ``--llm-limit`` targets for ``--llm-rounds`` rounds, against the same-subset numbers of the
   other questioners. References on the full corpus: ``split`` with plain ChatIR ranking,
   ``split`` with yes/no questions only, ``split`` as it was before viewer chances and
   log-likelihood re-scoring (raw fractions, linear 0.3, temperature 0.05), and an upper-bound
   diagnostic (candidates' evidence = their own non-description captions, what the simulated
   user answers from; not a result, it shows what a perfect image-to-words model would give;
   ``--no-oracle`` skips it).

Writes ``chat_dev.json``, ``chat_test.json`` and ``chat_hits10.png`` (Hits@10 per round) under
``--out`` and prints the tables. All image vectors are cached (mmrag cache, keyed by encoder).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.errors import MmragError  # noqa: E402
from mmrag.tasks.captioning import default_datastore  # noqa: E402
from mmrag.tasks.chat.evaluate import evaluate_chat, targets_from_items  # noqa: E402
from mmrag.tasks.chat.features import CaptionWordFeatures  # noqa: E402
from mmrag.tasks.chat.questioners import create_questioner  # noqa: E402
from mmrag.tasks.chat.ranking import RankingConfig  # noqa: E402
from mmrag.retrieval import corpus_image_vectors  # noqa: E402

GRID = [  # (query mode, re-scoring mode, weight); pool 200 (500 lost on dev before)
    ("chatir", "linear", 0.0), ("chatir-yes", "loglik", 0.15), ("words", "linear", 0.3), ("words", "loglik", 0.1),
    ("words", "loglik", 0.15), ("words", "loglik", 0.25), ("words", "loglik", 0.4), ("words", "loglik", 0.6),
]


class OwnCaptionWords:
    """Diagnostic only (an upper bound, never a result): every image's evidence is the words of
    its *own* captions other than the description, i.e. exactly what the simulated user answers
    from. It measures what the questioners and the ranking would reach with a perfect
    image-to-words model, so the distance to it is what the image-text model costs."""

    def __init__(self, items, description_index: int = 0):
        import scipy.sparse as sp

        from mmrag.tasks.chat.words import content_set

        self.vocab, self.words, self._row = {}, [], {}
        rows, cols = [], []
        for r, it in enumerate(items):
            self._row[it.id] = r
            ws = set().union(*(content_set(c) for j, c in enumerate(it.captions) if j != description_index)) \
                if len(it.captions) > 1 else set()
            for w in ws:
                if w not in self.vocab:
                    self.vocab[w] = len(self.words)
                    self.words.append(w)
                cols.append(self.vocab[w])
                rows.append(r)
        self.M = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(items), len(self.words)))

    def matrix(self, ids, vectors=None):
        return self.M[[self._row[i] for i in ids]]

    def top_words(self, image_id, n=8):
        r = self.M[self._row[image_id]]
        return [self.words[c] for c in r.indices[:n]]


def pick(rows):
    """Best by Hits@10 at round 5, then at the last round, then the earlier (simpler) grid entry."""
    return max(enumerate(rows), key=lambda x: (x[1]["hits@10"][min(5, x[1]["rounds"])], x[1]["hits@10"][-1], -x[0]))[1]


def fmt_row(name, res, rounds=(0, 1, 2, 3, 5, 10)):
    h = res["hits@10"]
    cells = [f"{h[r]:5.1f}" if r < len(h) else "  -  " for r in rounds]
    gain = h[min(5, len(h) - 1)] - h[0]
    return f"{name:42s} | " + " | ".join(cells) + f" | {gain:+5.1f} | {res['hits@1'][min(5, len(h) - 1)]:5.1f} | " \
        f"{res['mean_rank'][0]:6.1f} -> {res['mean_rank'][min(5, len(h) - 1)]:6.1f}"


HEADER = f"{'questioner / ranking':42s} | " + " | ".join(f"r{r:<4d}" for r in (0, 1, 2, 3, 5, 10)) + \
    " | gain5 | H@1@5 | mean rank r0 -> r5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/flickr8k"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--questioners", nargs="+", default=["split", "bank"])
    ap.add_argument("--dev-limit", type=int, default=None)
    ap.add_argument("--dev-rounds", type=int, default=5, help="the choice is made at round 5")
    ap.add_argument("--llm-limit", type=int, default=100)
    ap.add_argument("--llm-rounds", type=int, default=5)
    ap.add_argument("--skip-dev", action="store_true", help="reuse chat_dev.json's choices")
    ap.add_argument("--no-oracle", action="store_true", help="skip the own-caption upper-bound diagnostic")
    ap.add_argument("--image-prior", action=argparse.BooleanOptionalAction, default=True,
                    help="rank by the images' gated hubness prior, as mmrag eval chat does (default on)")
    ap.add_argument("--grid", choices=("all", "weights"), default="all",
                    help="weights: only the words + loglik rows (the re-scoring weight)")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="with --grid weights: only these re-scoring weights")
    ap.add_argument("--no-references", action="store_true", help="skip split's what-each-part-adds rows on dev")
    ap.add_argument("--skip-test", action="store_true", help="stop after dev")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)

    enc = create_encoder("effnet-minilm")
    full = read_corpus("flickr8k", a.data_dir)
    V = corpus_image_vectors(enc, full)
    ids = [it.id for it in full.items]
    row_of = {x: i for i, x in enumerate(ids)}
    t = time.perf_counter()
    feats = CaptionWordFeatures(default_datastore(enc, a.data_dir, progress=True))
    feats.compute(ids, V, progress=True)
    print(f"caption words of {len(ids)} images from {len(feats.source)} train captions: "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    # the prior as the CLI computes it (the encoder's prior of the embedded images), per search space
    prior_of = (lambda vecs: enc.image_prior(vecs)) if a.image_prior else (lambda vecs: None)
    gate = enc.image_prior_gate() if a.image_prior else None
    suffix = "_prior" if a.image_prior else ""
    grid = GRID if a.grid == "all" else [g for g in GRID if g[0] == "words" and g[1] == "loglik"
                                         and (a.weights is None or g[2] in a.weights)]
    split_items = {s: [it for it in full.items if it.split == s] for s in ("dev", "test")}

    @functools.cache
    def raw_feats():  # the caption-word fractions themselves (before viewer chances), a reference
        raw = CaptionWordFeatures(feats.source, describers=1)
        raw.compute(ids, V)
        return raw

    P = prior_of(V)

    # ---------------------------------------------------------------- dev: choose ranking per questioner
    dev_path = outdir / f"chat_dev{suffix}.json"
    if a.skip_dev and dev_path.exists():
        dev = json.loads(dev_path.read_text())
    else:
        dev_items = split_items["dev"][: a.dev_limit] if a.dev_limit else split_items["dev"]
        targets = targets_from_items(dev_items, row_of)
        dev = {"encoder": enc.fingerprint(), "n_queries": len(targets),
               "corpus_size": len(ids), "image_prior": a.image_prior,
               "grid": [list(g) for g in grid], "rows": [], "chosen": {}}
        print(f"\nDev: {len(targets)} targets among {len(ids)} images, cumulative Hits@10 (%)\n{HEADER}")
        for qn in a.questioners:
            rows = []
            for mode, rmode, beta in grid:
                cfg = RankingConfig(query=mode, rescore_mode=rmode, rescore_weight=beta)
                r = evaluate_chat(enc, V, ids, targets, create_questioner(qn), rounds=a.dev_rounds, ranking=cfg,
                                  features=feats, progress=False, keep_dialogs=0,
                                  image_prior=P, image_prior_gate=gate)
                r.pop("examples", None)
                rows.append(r)
                print(fmt_row(f"{qn} {mode} {rmode} beta={beta}", r), flush=True)
            best = pick(rows)
            dev["rows"] += rows
            dev["chosen"][qn] = best["ranking"]
            print(f"chosen for {qn}: {best['ranking']}")
            if qn == "split" and not a.no_references:  # what each part adds, at split's chosen ranking
                chosen = RankingConfig(**best["ranking"])
                raw = raw_feats()
                refs = [("yes/no questions only", create_questioner("split", max_options=1), chosen, feats),
                        ("up to 3 options per question", create_questioner("split", max_options=3), chosen, feats),
                        ("candidate temperature 0.05", create_questioner("split", temperature=0.05), chosen, feats),
                        ("raw caption fractions (describers=1)", create_questioner("split"), chosen, raw),
                        ("raw fractions, linear re-scoring 0.3", create_questioner("split"),
                         RankingConfig(query=chosen.query, rescore_mode="linear", rescore_weight=0.3), raw)]
                dev["references"] = {}
                for label, qq, cfg, ff in refs:
                    r = evaluate_chat(enc, V, ids, targets, qq, rounds=a.dev_rounds, ranking=cfg, features=ff,
                                      progress=False, keep_dialogs=0, image_prior=P, image_prior_gate=gate)
                    r.pop("examples", None)
                    dev["references"][f"split, {label}"] = r
                    print(fmt_row(f"split: {label}", r), flush=True)
        write_results(dev_path, dev)
    if a.skip_test:
        return

    # ---------------------------------------------------------------- test
    test_items = split_items["test"]
    spaces = {"test split (1,000 images)": [row_of[it.id] for it in test_items], "full corpus (8,091 images)": None}
    test = {"encoder": enc.fingerprint(), "rounds": a.rounds, "image_prior": a.image_prior, "runs": []}
    plain = RankingConfig(query="chatir", rescore_weight=0.0)
    for space, rows_ in spaces.items():
        sids = ids if rows_ is None else [ids[r] for r in rows_]
        SV = V if rows_ is None else V[rows_]
        SP = prior_of(SV)
        srow = {x: i for i, x in enumerate(sids)}
        targets = targets_from_items(test_items, srow)
        print(f"\nTest, {space}: {len(targets)} targets, cumulative Hits@10 (%)\n{HEADER}")
        for qn in a.questioners:
            chosen = RankingConfig(**dev["chosen"][qn])
            # references for split on the full corpus (CPU time is scarce): plain ChatIR ranking,
            # yes/no questions only, and the own-caption upper bound (a diagnostic, not a result)
            ref = qn == "split" and rows_ is None
            cfgs = [("chosen on dev", chosen, create_questioner(qn), feats)]
            if ref:
                cfgs += [("plain ChatIR", plain, create_questioner(qn), feats),
                         ("yes/no questions only", chosen, create_questioner(qn, max_options=1), feats),
                         ("before: raw fractions, linear 0.3, temperature 0.05",
                          RankingConfig(query="words", rescore_mode="linear", rescore_weight=0.3),
                          create_questioner(qn, temperature=0.05), raw_feats())]
                if not a.no_oracle:
                    cfgs.append(("UPPER BOUND: own captions as evidence", chosen, create_questioner(qn),
                                 OwnCaptionWords(full.items)))
            for label, cfg, qq, ff in cfgs:
                r = evaluate_chat(enc, SV, sids, targets, qq, rounds=a.rounds, ranking=cfg,
                                  features=ff, progress=False, image_prior=SP, image_prior_gate=gate)
                r.update({"space": space, "label": label})
                test["runs"].append(r)
                print(fmt_row(f"{qn} ({label})", r), flush=True)
        if rows_ is None and a.llm_limit:
            sub = targets[: a.llm_limit]
            try:
                llm = create_questioner("llm")
            except MmragError as e:
                print(f"llm questioner unavailable: {e}")
                test["llm_skipped"] = str(e)
                continue
            for qn in ["llm"] + a.questioners:
                cfg = RankingConfig(**dev["chosen"].get(qn, dev["chosen"][a.questioners[0]]))
                q = llm if qn == "llm" else create_questioner(qn)
                t0 = time.perf_counter()
                r = evaluate_chat(enc, SV, sids, sub, q, rounds=a.llm_rounds, ranking=cfg, features=feats,
                                  progress=qn == "llm", image_prior=SP, image_prior_gate=gate)
                r.update({"space": space, "label": f"first {len(sub)} targets, {a.llm_rounds} rounds",
                          "seconds_per_question": (time.perf_counter() - t0) / max(1, len(sub) * a.llm_rounds)})
                test["runs"].append(r)
                print(fmt_row(f"{qn} (first {len(sub)})", r), flush=True)
    write_results(outdir / f"chat_test{suffix}.json", test)
    plot(test, outdir / f"chat_hits10{suffix}.png")


def plot(test, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    spaces = list(dict.fromkeys(r["space"] for r in test["runs"]))
    fig, axes = plt.subplots(1, len(spaces), figsize=(6 * len(spaces), 4.2), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        for r in test["runs"]:
            if r["space"] != space or "first" in r["label"] or r["label"].startswith("UPPER"):
                continue
            style = "-" if r["label"] == "chosen on dev" else "--"
            ax.plot(range(len(r["hits@10"])), r["hits@10"], style, marker="o", ms=3,
                    label=f"{r['questioner']} ({r['label']})")
        for r in test["runs"]:
            if r["space"] == space and "first" in r["label"] and r["questioner"] == "llm":
                ax.plot(range(len(r["hits@10"])), r["hits@10"], ":", marker="s", ms=3,
                        label=f"llm ({r['label']})")
        ax.set_title(f"Flickr8k test targets, {space}")
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative Hits@10 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
