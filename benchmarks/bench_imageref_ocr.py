"""Does a figure's OCR text help place it? d2l figure-position recovery (as bench_imageref: the
chapters' figures removed, placed back from their captions; dev/test by the hash of the chapter
id) with each figure's matching text = its caption, or its caption + the first N words OCR read
in it (``candidate_text``, what compose does with ``use_ocr``). N is chosen on dev; test is
reported for every variant. Placement: the library's calibrated rule at its defaults.

The OCR text comes from an index of the figures built with ``--ocr`` (OCR is the slow part:
seconds per figure on a loaded 2-core machine), e.g. the one bench_hybrid's part (d) builds;
figures it lacks (those no sentence references) are read here with the same enricher:

    nice -n 10 python benchmarks/bench_hybrid.py --parts d2l --keep-ocr-index /tmp/d2l_fig_ocr
    nice -n 10 python benchmarks/bench_imageref_ocr.py --ocr-index /tmp/d2l_fig_ocr

Prints a table and writes ``benchmarks/results/imageref_ocr.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_results  # noqa: E402

from mmrag.corpus.documents import DocImage  # noqa: E402
from mmrag.tasks.imageref import (ComposeConfig, candidate_text, dev_test_split, evaluate_figure_positions,  # noqa: E402
                                  figure_tasks, read_documents)
from mmrag.tasks.imageref.insertion import default_text_embedder  # noqa: E402

KEYS = ("R_strict", "P", "F1", "score")
OCR_WORDS = (10, 20, 40, 80)


def ocr_by_path(index: Path) -> dict[str, str]:
    from mmrag.retrieval import Searcher

    s = Searcher(index)
    try:
        ids = s.ids()
        return {str(Path(m["path"]).resolve()): m.get("ocr_text") or "" for m in s.metadata(ids) if m and m.get("path")}
    finally:
        s.close()


def with_ocr(tasks, ocr: dict[str, str], words: int | None):
    """The tasks with each figure's matching text = caption (+ OCR's first ``words`` words)."""
    out = copy.deepcopy(tasks)
    cfg = ComposeConfig(use_context=False, use_ocr=words is not None, ocr_words=words or 0)
    for t in out:
        for im in t.images:
            doc_im = DocImage(id=im.id, path=im.path, caption=im.caption, caption_source=im.caption_source)
            im.matching_text = candidate_text(doc_im, cfg, ocr.get(str(Path(im.path).resolve()), ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d2l", type=Path, default=ROOT.parent / "shared" / "data" / "d2l")
    ap.add_argument("--ocr-index", type=Path, required=True, help="an index of the d2l figures built with --ocr")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "imageref_ocr.json")
    args = ap.parse_args()
    if not (args.ocr_index / "manifest.json").is_file():
        sys.exit(f"error: --ocr-index {args.ocr_index}: not an index (build it with mmrag index ... --ocr)")

    ocr = ocr_by_path(args.ocr_index)
    docs = [d for d in read_documents(args.d2l).documents if d.id.startswith("chapter_")]
    tasks = [t for t in figure_tasks(docs) if t.images]
    split = {sp: [t for t in tasks if dev_test_split(t.doc_id) == sp] for sp in ("dev", "test")}
    figs = [im for t in tasks for im in t.images]
    from_index = len(ocr)
    missing = sorted({str(Path(im.path).resolve()) for im in figs} - set(ocr))
    missing = [p for p in missing if Path(p).is_file()]
    if missing:
        from mmrag.embedding.enrich import OcrEnricher

        print(f"reading {len(missing)} figures the OCR index lacks", file=sys.stderr)
        for p, r in zip(missing, OcrEnricher().enrich([Path(p) for p in missing])):
            ocr[p] = r["ocr_text"] if isinstance(r, dict) else ""
    have = sum(bool(ocr.get(str(Path(im.path).resolve()), "").strip()) for im in figs)
    print(f"d2l: {len(tasks)} chapters with figures ({len(figs)} figures, {have} with OCR text; "
          f"{from_index} from the OCR index, {len(missing)} read here); dev {len(split['dev'])}, test {len(split['test'])}")
    emb = default_text_embedder()
    cfg = ComposeConfig(placement="calibrated")
    variants = {"caption only": None, **{f"caption + OCR {w} words": w for w in OCR_WORDS}}
    rows = {}
    for name, w in variants.items():
        rows[name] = {}
        for sp, ts in split.items():
            r = evaluate_figure_positions(with_ocr(ts, ocr, w), cfg, embedder=emb, progress=False)
            rows[name][sp] = {**{k: r[k] for k in KEYS}, "n_placed": r["n_placed"], "n_images": r["n_images"]}
    emb.save()
    best = max(OCR_WORDS, key=lambda w: (round(rows[f"caption + OCR {w} words"]["dev"]["F1"], 6), -w))
    print(f"| matching text | split | {' | '.join(KEYS)} | placed / figures |")
    print("|---|---|" + "---:|" * (len(KEYS) + 1))
    for name, r in rows.items():
        for sp in ("dev", "test"):
            m = r[sp]
            print(f"| {name} | {sp} | " + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + f" | {m['n_placed']} / {m['n_images']} |")
    dev_gain = rows[f"caption + OCR {best} words"]["dev"]["F1"] - rows["caption only"]["dev"]["F1"]
    print(f"best OCR words on dev: {best} (dev F1 {100 * dev_gain:+.1f} over caption only)")
    write_results(args.json, {"benchmark": "d2l figure-position recovery, caption vs caption + OCR text",
                              "ocr_index": str(args.ocr_index), "placement": "calibrated (library defaults)",
                              "figures": len(figs), "figures_with_ocr_text": have,
                              "ocr_from_index": from_index, "ocr_read_here": len(missing),
                              "splits": {sp: {"docs": len(ts), "figures": sum(len(t.images) for t in ts)}
                                         for sp, ts in split.items()},
                              "rows": rows, "chosen_ocr_words_on_dev": best, "dev_F1_gain": round(dev_gain, 4)})


if __name__ == "__main__":
    main()
