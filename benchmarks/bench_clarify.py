"""Ask when unsure: when is a clarifying split question under a search worth offering?

    python benchmarks/bench_clarify.py [--data-dir ../shared/data/flickr8k] [--shown 20]
                                       [--image-prior | --no-image-prior] [--compare-cosine]
                                       [--transfer-dir ../shared/data/coco_dev | --no-transfer]
                                       [--out benchmarks/results/clarify.json]

Per split (dev, then test): the split's 1,000 Flickr8k images are the collection; each image's
first caption is a text query (vector search ranked as ``mmrag search`` ranks text->image: by the
gated ``cos - prior`` of the images' hubness prior, ``--no-image-prior``: plain cosine), the
``--shown`` best hits are what the user sees; the rule reads their cosines, as search's does. For every query the split question over the shown hits is built
(:func:`mmrag.tasks.chat.clarify.clarify` with ``force``) and answered by the simulated user of
``mmrag eval chat`` (:class:`~mmrag.tasks.chat.answerers.SimulatedUser`, from the target's other
four captions). Candidates' caption words (the evidence, one run each):

``datastore``            the Flickr8k *train* caption datastore, what an uncaptioned index uses
                         (never the targets' captions);
``collection captions``  a captioned index: the collection's own captions 2-5 (caption 1 is the
                         query and is never among them), each candidate's 20 nearest, its own
                         included, as ``mmrag search`` uses an index's captions; the simulated user
                         answers from the same captions, so this is the optimistic case;
``own captions``         diagnostic upper bound: each candidate's own captions 2-5 exactly. The target's rank is taken before the answer and after it:
the shown hits re-ordered by the option clicked (``partition``: the hits the answer keeps first;
``loglik``: the chat re-scoring of the shown hits), and, for reference, a new search with the
answer (what "continue as a chat" gives: the chat ranking over the whole collection).

The rule "offer a question when closeness >= threshold" is then evaluated for each closeness
signal (:data:`~mmrag.tasks.chat.clarify.SIGNALS`) and re-ordering at thresholds spanning the
dev distribution, and chosen on **dev**: the highest Hits@1 over all queries after one answer
(a query without a question keeps its ranking), ties to fewer questions. Test is reported at the
dev choice, with "always ask" and "never ask" beside it. Reported per rule: how often a question
is offered; for offered queries Hits@1 / Hits@10 before and after one answer; for the others
how often the target already was at rank 1. Each evidence gets its own dev choice.

Transfer check (``--transfer-dir``, default ../shared/data/coco_dev, never used for a choice):
the same protocol on another collection (every item with >= 2 captions: caption 1 the query, the
simulated user answering from captions 2-5, the datastore still Flickr8k train), at the shipped
rule (:class:`ClarifyConfig` defaults) and at each evidence's Flickr8k dev choice, with "always
ask" and "never ask" beside them. ``--compare-cosine``: the datastore evidence also ranked by plain
cosine in the same run (its own dev choice), for the side-by-side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_chat import OwnCaptionWords  # noqa: E402
from common import write_results  # noqa: E402

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.encoders import create_encoder  # noqa: E402
from mmrag.encoders.image_prior import rerank_rows  # noqa: E402
from mmrag.retrieval import CaptionDatastore, corpus_image_vectors, default_datastore  # noqa: E402
from mmrag.retrieval.relevance import load_relevance  # noqa: E402
from mmrag.tasks.chat.answerers import SimulatedUser  # noqa: E402
from mmrag.tasks.chat.clarify import SIGNALS, ClarifyConfig, answer_evidence, clarify, closeness, rerank  # noqa: E402
from mmrag.tasks.chat.dialog import Dialog, Round  # noqa: E402
from mmrag.tasks.chat.evaluate import _Ranker  # noqa: E402
from mmrag.tasks.chat.features import CaptionWordFeatures  # noqa: E402
from mmrag.tasks.chat.ranking import RankingConfig  # noqa: E402

# how the shown hits are re-ordered by the answer: the kept hits first, or the chat's log-likelihood
# re-scoring of their cosines at a few weights (the chat's own weight, 0.15, was chosen for
# cumulative hits over several rounds, not for the ranking after one answer)
VARIANTS = {"partition": ClarifyConfig(rerank="partition"),
            **{f"loglik-{w:g}": ClarifyConfig(rerank="loglik", rescore_weight=w) for w in (0.01, 0.03, 0.05, 0.15)}}
OFFER_RATES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]  # % of dev queries: where thresholds sit


def run_split(enc, items, V, feats, shown: int, relevance, prior=None, gate=None):
    # feats: the candidates' caption-word evidence (train-caption datastore, or the diagnostic
    # OwnCaptionWords); prior, gate: the images' hubness prior (None: rank by cosine)
    """Per query: the signals, the question, the answer and the target's rank before/after."""
    ids = [it.id for it in items]
    texts = [it.captions[0] for it in items]
    Q = enc.embed_texts(texts)
    S = Q @ V.T
    # what search ranks by; the rule and the question still read the cosines (clarifying_question)
    R = S if prior is None else rerank_rows(S, prior, gate)
    ranker = _Ranker(enc, V, ids, RankingConfig(), feats, image_prior=prior, image_prior_gate=gate)
    cfg = ClarifyConfig()
    rows, dialogs = [], []
    for t, it in enumerate(items):
        s = R[t]
        order = np.argsort(-s, kind="stable")
        top = order[:shown]
        rank0 = int(np.flatnonzero(order == t)[0]) + 1
        top_ids = [ids[j] for j in top]
        cos = S[t, top].astype(np.float64)
        sc = s[top].astype(np.float64)
        # as clarifying_question: the shown scores are passed only when they are not the cosines
        scores = None if np.allclose(sc, cos, atol=1e-5) else sc
        words = feats.matrix(top_ids, V[top])
        sig = {n: closeness(cos, n, cfg.top, cfg.temperature, relevance) for n in SIGNALS}
        c = clarify(texts[t], top_ids, cos, words, feats, cfg, relevance, force=True, scores=scores)
        row = {"rank_before": rank0, "signals": sig, "question": None, "prior_on": scores is not None}
        if c is not None:
            ans = SimulatedUser(it.captions[1:]).answer(c.question)
            evidence = answer_evidence(words, feats.vocab, c.asked, ans)
            after = {}
            for name, vc in VARIANTS.items():
                new, _ = rerank(top_ids, cos if scores is None else scores, evidence, vc,
                                None if scores is None else cos)
                after[name] = new.index(it.id) + 1 if it.id in new else rank0
            row.update(question=c.question, answer=ans, options=[o.answer for o in c.options], after=after)
            dialogs.append((t, Dialog(texts[t], [Round(c.question, ans, c.topic)])))
        rows.append(row)
    if dialogs:  # "continue as a chat": a new search with the answer, the chat's ranking
        res = ranker.rank([d for _, d in dialogs], [t for t, _ in dialogs])
        for (t, _), (rk, _, _) in zip(dialogs, res):
            rows[t]["after"]["search"] = int(rk)
    return rows


def evaluate_rule(rows, signal: str, threshold: float, how: str) -> dict:
    """The rule "ask when closeness >= threshold" with re-ordering ``how`` over the queries."""
    offered = np.asarray([r["question"] is not None and r["signals"][signal] is not None
                          and r["signals"][signal] >= threshold for r in rows])
    before = np.asarray([r["rank_before"] for r in rows])
    after = np.asarray([r["after"][how] if o else r["rank_before"] for r, o in zip(rows, offered)])
    n, m = len(rows), int(offered.sum())
    up = int(((before > 1) & (after <= 1)).sum())    # targets an answer brought to rank 1
    down = int(((before <= 1) & (after > 1)).sum())  # and those it took away from rank 1

    def pct(x):
        return round(100.0 * float(x.mean()), 2) if len(x) else None

    return {"signal": signal, "threshold": round(float(threshold), 4), "rerank": how,
            "offered_pct": round(100.0 * m / n, 2), "n_offered": m, "to_rank1": up, "from_rank1": down,
            "offered_hits@1_before": pct(before[offered] <= 1), "offered_hits@1_after": pct(after[offered] <= 1),
            "offered_hits@10_before": pct(before[offered] <= 10), "offered_hits@10_after": pct(after[offered] <= 10),
            "not_offered_rank1": pct(before[~offered] <= 1),
            "all_hits@1_before": pct(before <= 1), "all_hits@1_after": pct(after <= 1),
            "all_hits@10_before": pct(before <= 10), "all_hits@10_after": pct(after <= 10)}


def thresholds(rows, signal: str) -> list[float]:
    v = np.asarray([r["signals"][signal] for r in rows if r["signals"][signal] is not None], np.float64)
    if not len(v):
        return []
    # offering p % of queries = asking when the signal is in its top p %
    out = [float(np.inf)] + [float(np.quantile(v, 1 - p / 100.0)) for p in OFFER_RATES[1:-1]] + [float(-np.inf)]
    return out


HEAD = (f"{'signal':10s} {'rerank':12s} {'thresh':>7s} | {'offer%':>6s} | {'H@1 bef':>7s} {'H@1 aft':>7s} "
        f"{'H@10 bef':>8s} {'H@10 aft':>8s} | {'not-off r1':>10s} | {'all H@1':>7s} {'all H@10':>8s} | to/from r1")


def fmt(r) -> str:
    def f(x):
        return "    -  " if x is None else f"{x:7.1f}"

    thr = "always" if r["threshold"] == -np.inf else "never" if r["threshold"] == np.inf else f"{r['threshold']:.3f}"
    return (f"{r['signal']:10s} {r['rerank']:12s} {thr:>7s} | {r['offered_pct']:6.1f} | "
            f"{f(r['offered_hits@1_before'])} {f(r['offered_hits@1_after'])} {f(r['offered_hits@10_before'])} "
            f" {f(r['offered_hits@10_after'])} | {f(r['not_offered_rank1']):>10s} | "
            f"{f(r['all_hits@1_after'])} {f(r['all_hits@10_after'])} | {r['to_rank1']:3d}/{r['from_rank1']:<3d}")


def shipped_variant() -> str:
    """The VARIANTS name of ClarifyConfig()'s re-ordering (added when the grid lacks it)."""
    cfg = ClarifyConfig()
    name = "partition" if cfg.rerank == "partition" else f"loglik-{cfg.rescore_weight:g}"
    VARIANTS.setdefault(name, ClarifyConfig(rerank=cfg.rerank, rescore_weight=cfg.rescore_weight))
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared/data"
    ap.add_argument("--data-dir", default=str(shared / "flickr8k"))
    ap.add_argument("--shown", type=int, default=20, help="hits shown under the search (the question sees them)")
    ap.add_argument("--limit", type=int, default=None, help="first N images per split only (a smoke run)")
    ap.add_argument("--no-diagnostic", action="store_true", help="skip the own-caption evidence diagnostic")
    ap.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=SIGNALS,
                    help="closeness signals to choose among (default all)")
    ap.add_argument("--image-prior", action=argparse.BooleanOptionalAction, default=True,
                    help="rank text->image by the gated cos - prior as mmrag search does (default on)")
    ap.add_argument("--compare-cosine", action="store_true",
                    help="also run the datastore evidence ranked by plain cosine, side by side")
    ap.add_argument("--transfer-dir", default=str(shared / "coco_dev"),
                    help="another collection to check the rules on (never chosen on)")
    ap.add_argument("--transfer-kind", default="auto", help="its corpus kind (read_corpus)")
    ap.add_argument("--no-transfer", action="store_true", help="skip the transfer collection")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "clarify.json"))
    a = ap.parse_args()
    if not a.no_transfer and not Path(a.transfer_dir).exists():
        ap.error(f"--transfer-dir {a.transfer_dir} does not exist (or pass --no-transfer)")

    t0 = time.perf_counter()
    enc = create_encoder("effnet-minilm")
    relevance = load_relevance(enc.fingerprint())
    full = read_corpus("flickr8k", a.data_dir)
    V = corpus_image_vectors(enc, full)
    if a.image_prior and enc.image_prior(V[:1]) is None:
        sys.exit("error: --image-prior: the encoder has no image prior (pass --no-image-prior)")
    row_of = {it.id: i for i, it in enumerate(full.items)}
    transfer = None
    if not a.no_transfer:
        tc = read_corpus(a.transfer_kind, a.transfer_dir)
        transfer = (tc, corpus_image_vectors(enc, tc))

    def collection_captions(items):  # a captioned index: its images' captions 2-5 (never the query)
        texts = [c for it in items for c in it.captions[1:]]
        owners = [it.id for it in items for _ in it.captions[1:]]
        return CaptionWordFeatures(CaptionDatastore.from_texts(enc, texts, owners), exclude_own=False)

    evidence = {"datastore": lambda items: CaptionWordFeatures(default_datastore(enc, a.data_dir)),
                "collection captions": collection_captions,
                "own captions (diagnostic)": lambda items: OwnCaptionWords(items)}
    shipped = shipped_variant()
    out = {"encoder": enc.fingerprint(), "shown": a.shown, "image_prior": bool(a.image_prior),
           "image_prior_gate": enc.image_prior_gate() if a.image_prior else None,
           "library_defaults_when_run": ClarifyConfig().to_dict(),
           "variants": {k: v.to_dict() for k, v in VARIANTS.items()}, "runs": {}}
    for ev, make in evidence.items():
        if ev.endswith("(diagnostic)") and a.no_diagnostic:
            continue
        out["runs"][ev] = evaluate_evidence(enc, full, V, row_of, make, a, relevance, ev, a.image_prior,
                                            transfer, shipped)
    if a.compare_cosine and a.image_prior:
        out["cosine_runs"] = {"datastore": evaluate_evidence(enc, full, V, row_of, evidence["datastore"], a,
                                                             relevance, "datastore, cosine ranking", False,
                                                             transfer, shipped)}
        side_by_side(out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    write_results(a.out, out)


def side_by_side(out) -> None:
    """The datastore evidence's rows, search's prior ranking beside plain cosine."""
    pr, co = out["runs"]["datastore"], out["cosine_runs"]["datastore"]
    print("\n[datastore] prior ranking vs plain cosine (same run)")
    for name, a, b in [("dev choice", pr["chosen"], co["chosen"])] + \
            [(f"test: {x['label']}", x, y) for x, y in zip(pr["test"], co["test"])] + \
            [(f"{pr['transfer']['name']}: {x['label']}", x, y)
             for x, y in zip(pr.get("transfer", {}).get("rows", []), co.get("transfer", {}).get("rows", []))]:
        print(f"  {name:52s} prior: {a['signal']} {a['threshold']} {a['rerank']:12s} asked {a['offered_pct']:5.1f} % "
              f"H@1 {a['all_hits@1_before']:.1f} -> {a['all_hits@1_after']:.1f} | cosine: {b['threshold']} "
              f"{b['rerank']:12s} asked {b['offered_pct']:5.1f} % H@1 {b['all_hits@1_before']:.1f} -> "
              f"{b['all_hits@1_after']:.1f}")


def evaluate_evidence(enc, full, V, row_of, make_features, a, relevance, label: str, use_prior: bool,
                      transfer=None, shipped: str = "loglik-0.01") -> dict:
    """Dev grid, the dev choice and the test rows for one source of caption-word evidence; the
    transfer collection's rows at the shipped rule and at this dev choice."""
    t0 = time.perf_counter()

    def run(items, SV):
        prior = enc.image_prior(SV) if use_prior else None
        gate = enc.image_prior_gate() if use_prior else None
        return run_split(enc, items, SV, make_features(items), a.shown, relevance, prior, gate)

    per = {}
    for split in ("dev", "test"):
        items = [it for it in full.items if it.split == split and len(it.captions) >= 2][: a.limit]
        SV = V[[row_of[it.id] for it in items]]
        per[split] = run(items, SV)
        print(f"{label}, {split}: {len(items)} queries, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    dev_rules = []
    print(f"\n[{label}] Dev (choose here): Flickr8k dev, {len(per['dev'])} caption-1 queries among its images, "
          f"{a.shown} hits shown\n{HEAD}")
    for sig in a.signals:
        for how in VARIANTS:
            for thr in thresholds(per["dev"], sig):
                r = evaluate_rule(per["dev"], sig, thr, how)
                dev_rules.append(r)
                print(fmt(r))
    chosen = max(dev_rules, key=lambda r: (r["all_hits@1_after"], -r["offered_pct"]))
    print(f"\n[{label}] chosen on dev: signal {chosen['signal']}, threshold {chosen['threshold']}, "
          f"rerank {chosen['rerank']}")
    search_dev = evaluate_rule(per["dev"], chosen["signal"], chosen["threshold"], "search")
    cfg = ClarifyConfig()
    shipped_dev = evaluate_rule(per["dev"], cfg.signal, cfg.threshold, shipped)
    print(f"[{label}] the shipped rule on dev: {fmt(shipped_dev)}")

    tests = []
    print(f"\n[{label}] Test: Flickr8k test, {len(per['test'])} queries, at the dev choice\n{HEAD}")
    for name, sig, thr, how in [("chosen on dev", chosen["signal"], chosen["threshold"], chosen["rerank"]),
                                ("shipped rule (ClarifyConfig)", cfg.signal, cfg.threshold, shipped),
                                ("always ask", chosen["signal"], -np.inf, chosen["rerank"]),
                                ("never ask", chosen["signal"], np.inf, chosen["rerank"]),
                                ("always ask, kept hits first", chosen["signal"], -np.inf, "partition"),
                                ("chosen, answer continues as a chat search", chosen["signal"], chosen["threshold"],
                                 "search"),
                                ("always ask, as a chat search", chosen["signal"], -np.inf, "search")]:
        r = evaluate_rule(per["test"], sig, thr, how)
        r["label"] = name
        tests.append(r)
        print(fmt(r) + f"   ({name})")

    moved = []
    if transfer is not None:  # a check on other photos: nothing here is chosen
        tc, TV = transfer
        titems = [it for it in tc.items if len(it.captions) >= 2][: a.limit]
        trows = run(titems, TV[[i for i, it in enumerate(tc.items) if len(it.captions) >= 2][: a.limit]])
        name = f"{Path(tc.root).name} ({len(titems)} queries)"
        print(f"\n[{label}] Transfer: {name}, nothing chosen here\n{HEAD}")
        for lab, sig, thr, how in [("shipped rule (ClarifyConfig)", cfg.signal, cfg.threshold, shipped),
                                   ("chosen on Flickr8k dev", chosen["signal"], chosen["threshold"], chosen["rerank"]),
                                   ("always ask", chosen["signal"], -np.inf, chosen["rerank"]),
                                   ("never ask", chosen["signal"], np.inf, chosen["rerank"])]:
            r = evaluate_rule(trows, sig, thr, how)
            r["label"] = lab
            moved.append(r)
            print(fmt(r) + f"   ({lab})")
        prior_on = round(100.0 * float(np.mean([r["prior_on"] for r in trows])), 2)
        transfer_out = {"name": name, "n_queries": len(trows), "prior_applied_pct": prior_on, "rows": moved}

    def finite(x):
        return x if np.isfinite(x) else ("always" if x < 0 else "never")

    for r in dev_rules + tests + [search_dev, shipped_dev] + moved:
        r["threshold"] = finite(r["threshold"])
    examples = [{k: r[k] for k in ("question", "answer", "options", "rank_before", "after")}
                for r in per["test"][:8] if r["question"]]
    splits = {s: {"n_queries": len(per[s]),
                  "questions_built_pct": round(100.0 * np.mean([r["question"] is not None for r in per[s]]), 2),
                  "prior_applied_pct": round(100.0 * np.mean([r["prior_on"] for r in per[s]]), 2)}
              for s in per}
    res = {"splits": splits, "image_prior": bool(use_prior), "dev": dev_rules, "chosen": chosen,
           "dev_chosen_as_chat_search": search_dev, "dev_shipped_rule": shipped_dev, "test": tests,
           "test_examples": examples}
    if transfer is not None:
        res["transfer"] = transfer_out
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


if __name__ == "__main__":
    main()
