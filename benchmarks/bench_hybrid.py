"""Vector vs keyword vs hybrid search (plain RRF vs calibrated score fusion), and the cost of OCR
at index time. The fusion's keyword weight is chosen here on dev sets and only then run on test:

* dev: sign photos made from 100 coco_dev photos with other words and another seed, and the
  Flickr8k dev split (captions 2-5 indexed, caption 1 as query);
* test: the sets below.

(a) sign photos: every COCO sample photo (100) gets a different shop-sign phrase pasted on it
    (DejaVu Sans Bold, white board, random size and place); the folder is indexed with --ocr
    and each phrase, typed in lower case, is a query: rank-1 accuracy per mode. File names are
    neutral (photo_NNN.jpg) so only the image's own text can match.
(b) Flickr8k test captions: each of the 1,000 test images is indexed with captions 2-5 as its
    text; caption 1 (never indexed) is the query: t2i R@1/5/10 per mode. (Indexing all five
    would put every query verbatim in the keyword index.)
(d) d2l figures: every figure of the d2l chapters that a sentence of its own chapter references
    (``:numref:``) is indexed with --ocr and its alt text as text; the query is the first such
    sentence with the reference removed (never the caption). The figures' chapters split the
    queries dev/test by bench_imageref's hash of the chapter id; every query searches all the
    figures. Also with the OCR text only (no alt text) and the alt text only (no OCR), to show
    what OCR adds. The fusion weight is the library's (chosen on the dev sets above).

    python benchmarks/bench_hybrid.py [--parts dev,signs,flickr,d2l] [--signs 100] [--flickr 1000] [--json FILE]
        [--keep-ocr-index DIR]

Without --parts every part runs and the results go to benchmarks/results/hybrid.json; a subset
writes benchmarks/results/hybrid_<parts>.json (so a partial run never overwrites the full one).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
DATA = ROOT.parent / "shared" / "data"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

NOUNS = ["BOOKS", "BAKERY", "PHARMACY", "GARAGE", "MUSEUM", "LIBRARY", "TAVERN", "FLORIST", "HOTEL", "CINEMA",
         "MARKET", "BARBER", "DINER", "GALLERY", "THEATER", "HARDWARE", "TAILOR", "CLINIC", "BISTRO", "STUDIO"]
ADJ = ["HARBOR", "MAPLE", "SUNSET", "GOLDEN", "RIVERSIDE", "OLD TOWN", "BLUE MOON", "CEDAR", "LIBERTY", "PIONEER",
       "SILVER", "NORTHGATE", "ORCHARD", "EMERALD", "COPPER", "MEADOW", "HIGHLAND", "LANTERN", "WILLOW", "FALCON"]


# dev signs: other words (none shared with the test lists), other photos, another seed
DEV_NOUNS = ["BREWERY", "BOUTIQUE", "CAFE", "BANK", "SALON", "DENTIST", "BOOKSTORE", "PIZZERIA", "OPTICIAN", "KITCHEN",
             "CYCLES", "JEWELERS", "MOTORS", "PANTRY", "ARCADE", "TOYS", "LAUNDRY", "CREAMERY", "DELI", "PRINTERS"]
DEV_ADJ = ["OAKWOOD", "CRIMSON", "SEASIDE", "BRIGHTON", "ELMWOOD", "HILLTOP", "RED FOX", "IVORY", "SUMMIT", "VALLEY",
           "BAYVIEW", "JUNIPER", "GRANITE", "PARKSIDE", "AUTUMN", "SAFFRON", "STARLIGHT", "MARBLE", "THISTLE", "HARVEST"]


def make_signs(n: int, out: Path, seed: int = 0, photos_dir: Path | None = None,
               adj=ADJ, nouns=NOUNS) -> list[tuple[str, str]]:
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    photos = sorted((photos_dir or DATA / "coco_sample" / "images").glob("*.jpg"))[:n]
    phrases = rng.sample([f"{a} {b}" for a in adj for b in nouns], len(photos))
    rows = []
    for i, (p, phrase) in enumerate(zip(photos, phrases)):
        im = Image.open(p).convert("RGB")
        d = ImageDraw.Draw(im)
        size = rng.randint(18, 30)
        font = ImageFont.truetype(FONT, size)
        w = d.textlength(phrase, font=font)
        while w > im.width - 16:  # fit the board in the photo
            size -= 2
            font = ImageFont.truetype(FONT, size)
            w = d.textlength(phrase, font=font)
        x = rng.randint(6, max(6, int(im.width - w - 10)))
        y = rng.randint(6, max(6, im.height - size - 14))
        d.rectangle([x - 5, y - 4, x + w + 5, y + size + 8], fill="white", outline="black", width=2)
        d.text((x, y), phrase, font=font, fill=rng.choice(["black", "darkred", "navy"]))
        name = f"photo_{i:03d}.jpg"
        im.save(out / name, quality=90)
        rows.append((name, phrase))
    return rows


def recall(ranks: list[int | None], ks=(1, 5, 10)) -> dict[str, float]:
    return {f"R@{k}": round(100 * sum(r is not None and r <= k for r in ranks) / len(ranks), 1) for k in ks}


def rank_of(hits, want: str) -> int | None:
    return next((r for r, h in enumerate(hits, 1) if h.id == want), None)


KEYWORD_WEIGHTS = [round(0.1 * i, 1) for i in range(1, 10)]
MODES = ("vector", "keyword", "hybrid-rrf", "hybrid-score")


def channel_runs(s, queries: list[tuple[str, str]], enc, k: int = 10):
    """Per query: (want, query text, query vector, vector pool) -- embedded once, so every fusion
    setting is scored on the same candidates (Searcher.fuse is what hybrid search runs)."""
    from mmrag.retrieval.searcher import HYBRID_POOL

    qs = enc.embed_texts([q for _, q in queries])
    pools = s.search_vectors(qs, k=HYBRID_POOL)
    return [(w, q, v, p) for (w, q), v, p in zip(queries, qs, pools)]


def ranks_for(s, runs, how: str, weight: float | None = None, k: int = 10) -> list[int | None]:
    import copy

    out = []
    for want, q, v, pool in runs:
        if how == "vector":
            hits = pool[:k]
        elif how == "keyword":
            hits = s.keyword_search(q, k)
        else:
            fusion = "rrf" if how == "hybrid-rrf" else "score"
            kw = {} if weight is None else {"keyword_weight": weight}
            hits = s.fuse(v, q, copy.deepcopy(pool), k, fusion=fusion, **kw)
        out.append(rank_of(hits, want))
    return out


def sign_index(tmp: Path, name: str, n: int, enc, **make) -> tuple[Path, list[tuple[str, str]], float]:
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    d = tmp / name
    d.mkdir()
    rows = make_signs(n, d, **make)
    t = time.perf_counter()
    build_index(read_corpus("folder", d), tmp / f"{name}_ocr", enc, IndexConfig(progress=False, enrichers=("ocr",)))
    return tmp / f"{name}_ocr", rows, time.perf_counter() - t


def flickr_index(tmp: Path, split: str, n: int, enc):
    """Captions 2-5 indexed, caption 1 (never indexed) the query."""
    from mmrag.corpus.items import Corpus, CorpusItem
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    f = read_corpus("flickr8k", DATA / "flickr8k", split=split, limit=n)
    items = [CorpusItem(id=it.id, path=it.path, captions=list(it.captions[1:]), split=it.split) for it in f.items]
    build_index(Corpus(f"flickr8k-{split}-4caps", f.root, items), tmp / f"flickr_{split}", enc, IndexConfig(progress=False))
    return tmp / f"flickr_{split}", [(it.id, it.captions[0]) for it in f.items]

# ------------------------------------------------------------------------------------ (d) d2l figures
_FIG = re.compile(r"!\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)[^)]*\)")
_LABEL = re.compile(r":label:`([^`]+)`")
_NUMREF = re.compile(r":numref:`([^`]+)`")
MIN_QUERY_WORDS = 3


def _prose_paragraphs(text: str) -> list[str]:
    """The chapter's paragraphs outside fenced code, image and role lines kept (they are cut later)."""
    paras, cur, fence = [], [], False
    for ln in text.splitlines():
        if ln.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence:
            continue
        if not ln.strip():
            if cur:
                paras.append(" ".join(cur))
            cur = []
        else:
            cur.append(ln.strip())
    if cur:
        paras.append(" ".join(cur))
    return paras


def _tidy(sentence: str) -> str:
    from mmrag.corpus.documents import clean_inline

    s = _NUMREF.sub("", sentence)  # the reference itself is removed, not turned into "Figure"
    s = clean_inline(s)
    s = re.sub(r"\\[a-zA-Z]+|[${}*`_^\\]", " ", s)  # LaTeX and emphasis markup
    s = re.sub(r"\s+([,.;:)])", r"\1", re.sub(r"\(\s*\)", "", s))
    return re.sub(r"\s+", " ", s).strip()


def d2l_figure_queries(d2l: Path = DATA / "d2l") -> tuple[list[dict], dict[str, int]]:
    """Each d2l figure (chapter_* Markdown, as bench_imageref reads them) with its alt text, its
    chapter's dev/test split (the same hash of the chapter id as bench_imageref) and a query: the
    first sentence of its own chapter that references it by ``:numref:``, the reference removed.
    Figures without a label, without a referencing sentence, or whose file is absent are counted."""
    from mmrag.tasks.imageref import dev_test_split, read_documents

    docs = [d for d in read_documents(d2l).documents if d.id.startswith("chapter_")]
    figs, why = [], {"no_label": 0, "no_referencing_sentence": 0, "file_missing": 0}
    for doc in docs:
        raw = Path(doc.source).read_text("utf-8")
        # label -> the figure's resolved path: a ":label:`fig_x`" within the lines after its markup
        labels = {}
        for m in _FIG.finditer(raw):  # alt text may span lines
            for nxt in raw[m.end():].split("\n")[1:4]:
                if not nxt.strip():
                    break
                if lm := _LABEL.search(nxt):
                    labels[str((Path(doc.source).parent / m.group(2)).resolve())] = lm.group(1)
                    break
        sentences = [s for p in _prose_paragraphs(raw) if not p.startswith("![")
                     for s in re.split(r"(?<=[.!?])[*\]\)]*\s+(?=[A-Z:(\[*])", _FIG.sub(" ", p))]
        for im in doc.images:
            if not im.exists:
                why["file_missing"] += 1
                continue
            label = labels.get(im.path)
            if label is None:
                why["no_label"] += 1
                continue
            q = next((t for s in sentences if f":numref:`{label}`" in s
                      and len((t := _tidy(s)).split()) >= MIN_QUERY_WORDS), None)
            if q is None:
                why["no_referencing_sentence"] += 1
                continue
            figs.append({"id": str(Path(im.path).relative_to(d2l)), "path": im.path, "alt": im.caption,
                         "query": q, "chapter": doc.id, "split": dev_test_split(doc.id)})
    return figs, why


def d2l_part(tmp: Path, enc, weight: float, keep: Path | None = None) -> dict:
    from mmrag.corpus.items import Corpus, CorpusItem
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.retrieval import Searcher

    figs, left_out = d2l_figure_queries()
    root = DATA / "d2l"

    def build(name: str, items, **cfg) -> tuple[Path, float]:
        t = time.perf_counter()
        build_index(Corpus(f"d2l-figures-{name}", root, items), tmp / f"d2l_{name}", enc, IndexConfig(progress=False, **cfg))
        return tmp / f"d2l_{name}", time.perf_counter() - t

    # alt text only first, then the same with --ocr: the difference is the OCR cost
    idx_alt, t_alt = build("alt", [CorpusItem(id=f["id"], path=Path(f["path"]), captions=[f["alt"]]) for f in figs])
    idx_both, t_both = build("alt_ocr", [CorpusItem(id=f["id"], path=Path(f["path"]), captions=[f["alt"]]) for f in figs],
                             enrichers=("ocr",))
    if keep is not None:  # the OCR output, for benchmarks/bench_imageref_ocr.py
        import shutil

        shutil.copytree(idx_both, keep, dirs_exist_ok=True)
    s = Searcher(idx_both, encoder=enc)
    ocr = {f["id"]: {k: (s.get(f["id"]) or {}).get(k) for k in ("ocr_text", "ocr_lines")} for f in figs}
    s.close()
    # OCR text only: the same OCR output (not run again), no alt text
    idx_ocr, _ = build("ocr", [CorpusItem(id=f["id"], path=Path(f["path"]), metadata={k: v for k, v in ocr[f["id"]].items()
                                                                                        if v is not None}) for f in figs])
    n_words = sorted(len((o["ocr_text"] or "").split()) for o in ocr.values())
    out: dict = {"n_figures": len(figs), "left_out": left_out,
                 "queries": {sp: sum(f["split"] == sp for f in figs) for sp in ("dev", "test")},
                 "figures_with_ocr_text": sum(w > 0 for w in n_words), "ocr_words_median": n_words[len(n_words) // 2],
                 "index_s_alt": round(t_alt, 1), "index_s_alt_ocr": round(t_both, 1),
                 "ocr_s_per_image": round((t_both - t_alt) / len(figs), 3), "keyword_weight": weight,
                 "examples": [{k: f[k] for k in ("id", "split", "query")} for f in figs[:: max(1, len(figs) // 8)]]}
    for name, idx in (("alt+ocr", idx_both), ("ocr only", idx_ocr), ("alt only", idx_alt)):
        s = Searcher(idx, encoder=enc)
        res = {}
        for sp in ("dev", "test"):
            runs = channel_runs(s, [(f["id"], f["query"]) for f in figs if f["split"] == sp], enc)
            res[sp] = {m: recall(ranks_for(s, runs, m, weight)) for m in MODES}
            if name == "alt+ocr" and sp == "dev":  # for reading only: the weight stays the one chosen above
                res[sp]["hybrid_score_R@1_by_weight"] = {
                    w: recall(ranks_for(s, runs, "hybrid-score", w))["R@1"] for w in KEYWORD_WEIGHTS}
        res["test"]["auto_R@1"] = recall([rank_of(s.search(text=f["query"], k=10, mode="auto"), f["id"])
                                          for f in figs if f["split"] == "test"])["R@1"]
        s.close()
        out[name] = res
    return out


PARTS = ("dev", "signs", "flickr", "d2l")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated, any of " + ",".join(PARTS) + " (without dev the test parts use the "
                         "library's KEYWORD_WEIGHT)")
    ap.add_argument("--signs", type=int, default=100)
    ap.add_argument("--flickr", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep-ocr-index", type=Path, default=None,
                    help="(d): keep a copy of the d2l figures' --ocr index there (bench_imageref_ocr.py reads it)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: choose from {','.join(PARTS)} (got {args.parts!r})")
    if args.json is None:
        tail = "" if set(parts) == set(PARTS) else "_" + "_".join(p for p in PARTS if p in parts)
        args.json = ROOT / "benchmarks" / "results" / f"hybrid{tail}.json"

    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.encoders import create_encoder
    from mmrag.retrieval import Searcher
    from mmrag.retrieval import searcher as S

    enc = create_encoder("effnet-minilm")
    res: dict = {"encoder": "effnet-minilm", "rrf_k": S.RRF_K, "pool": S.HYBRID_POOL, "parts": parts,
                 "keyword_weights_tried": KEYWORD_WEIGHTS}
    chosen = S.KEYWORD_WEIGHT
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "dev" in parts:  # ------------------------------------------------ dev: choose the weight
            idx, rows, _ = sign_index(tmp, "signs_dev", args.signs, enc, seed=1,
                                      photos_dir=DATA / "coco_dev" / "images", adj=DEV_ADJ, nouns=DEV_NOUNS)
            s = Searcher(idx, encoder=enc)
            runs = channel_runs(s, [(n, p.lower()) for n, p in rows], enc)
            dev_signs = {w: recall(ranks_for(s, runs, "hybrid-score", w))["R@1"] for w in KEYWORD_WEIGHTS}
            dev_signs_rrf = recall(ranks_for(s, runs, "hybrid-rrf"))["R@1"]
            s.close()
            idx, queries = flickr_index(tmp, "dev", args.flickr, enc)
            s = Searcher(idx, encoder=enc)
            runs = channel_runs(s, queries, enc)
            dev_flickr = {w: recall(ranks_for(s, runs, "hybrid-score", w))["R@1"] for w in KEYWORD_WEIGHTS}
            dev_flickr_rrf = recall(ranks_for(s, runs, "hybrid-rrf"))["R@1"]
            s.close()
            # one weight for both kinds of query: the best mean dev R@1 (ties: the smaller weight)
            chosen = max(KEYWORD_WEIGHTS, key=lambda w: (dev_signs[w] + dev_flickr[w], -w))
            res["dev"] = {"signs_R@1": dev_signs, "signs_rrf_R@1": dev_signs_rrf,
                          "flickr8k_R@1": dev_flickr, "flickr8k_rrf_R@1": dev_flickr_rrf,
                          "chosen_keyword_weight": chosen, "library_keyword_weight": S.KEYWORD_WEIGHT}
        if "signs" in parts:  # ---------------------------------------------- test (a) signs
            signs = tmp / "signs"
            signs.mkdir()
            rows = make_signs(args.signs, signs)
            corpus = read_corpus("folder", signs)
            t = time.perf_counter()
            build_index(corpus, tmp / "plain", enc, IndexConfig(progress=False))
            t_plain = time.perf_counter() - t
            t = time.perf_counter()
            build_index(corpus, tmp / "ocr", enc, IndexConfig(progress=False, enrichers=("ocr",)))
            t_ocr = time.perf_counter() - t
            s = Searcher(tmp / "ocr", encoder=enc)
            runs = channel_runs(s, [(n, p.lower()) for n, p in rows], enc)
            ranks = {m: ranks_for(s, runs, m, chosen) for m in MODES}
            auto = [rank_of(s.search(text=p.lower(), k=10, mode="auto"), name) for name, p in rows]
            exact = sum(p.replace(" ", "") in (s.get(n)["ocr_text"] or "").upper().replace(" ", "").replace("\n", "")
                        for n, p in rows)
            s.close()
            res["signs"] = {"n": len(rows), "index_s_without_ocr": round(t_plain, 1), "index_s_with_ocr": round(t_ocr, 1),
                            "ocr_s_per_image": round((t_ocr - t_plain) / len(rows), 3),
                            "phrase_read_exactly": exact, "auto_mode_R@1": recall(auto)["R@1"],
                            **{m: recall(r) for m, r in ranks.items()}}
        if "flickr" in parts:  # --------------------------------------------- test (b) Flickr8k
            idx, queries = flickr_index(tmp, "test", args.flickr, enc)
            s = Searcher(idx, encoder=enc)
            runs = channel_runs(s, queries, enc)
            out = {m: recall(ranks_for(s, runs, m, chosen)) for m in MODES}
            t = time.perf_counter()
            auto = [rank_of(s.search(text=q, k=10, mode="auto"), i) for i, q in queries[:200]]
            out["auto_ms_per_query"] = round(1000 * (time.perf_counter() - t) / len(auto), 1)
            s.close()
            res["flickr8k_test"] = {"n_images": len(queries), "n_queries": len(queries), **out}
        if "d2l" in parts:  # ------------------------------------------------ (d) d2l figures
            res["d2l_figures"] = d2l_part(tmp, enc, chosen, args.keep_ocr_index)

    if "dev" in res:
        d = res["dev"]
        print(f"dev R@1 of score fusion by keyword weight (RRF: signs {d['signs_rrf_R@1']}, "
              f"Flickr8k {d['flickr8k_rrf_R@1']})")
        print(f"{'weight':>6} {'signs':>6} {'flickr':>6}")
        for w in KEYWORD_WEIGHTS:
            print(f"{w:6.1f} {d['signs_R@1'][w]:6.1f} {d['flickr8k_R@1'][w]:6.1f}")
    print(f"keyword weight used {chosen} (library default KEYWORD_WEIGHT = {S.KEYWORD_WEIGHT})")
    if "signs" in res:
        print(f"(a) test sign photos, {res['signs']['n']} COCO photos with pasted phrases, --ocr "
              f"({res['signs']['phrase_read_exactly']} phrases read exactly, spaces aside); auto R@1 "
              f"{res['signs']['auto_mode_R@1']}")
        print(f"{'mode':13} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
        for m in MODES:
            r = res["signs"][m]
            print(f"{m:13} {r['R@1']:6.1f} {r['R@5']:6.1f} {r['R@10']:6.1f}")
        print(f"OCR cost: {res['signs']['ocr_s_per_image']} s/image (index {res['signs']['index_s_without_ocr']} s "
              f"without, {res['signs']['index_s_with_ocr']} s with)")
    if "flickr8k_test" in res:
        print(f"(b) Flickr8k test, {res['flickr8k_test']['n_images']} images with captions 2-5 indexed, caption 1 as query")
        print(f"{'mode':13} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
        for m in MODES:
            r = res["flickr8k_test"][m]
            print(f"{m:13} {r['R@1']:6.1f} {r['R@5']:6.1f} {r['R@10']:6.1f}")
        print(f"auto (hybrid, score fusion): {res['flickr8k_test']['auto_ms_per_query']} ms/query")
    if "d2l_figures" in res:
        r = res["d2l_figures"]
        print(f"(d) d2l figures: {r['n_figures']} indexed (left out: {r['left_out']}), queries dev {r['queries']['dev']} / "
              f"test {r['queries']['test']}; OCR text on {r['figures_with_ocr_text']} (median {r['ocr_words_median']} "
              f"words), {r['ocr_s_per_image']} s/figure")
        print(f"{'text indexed':9} {'split':5} {'mode':13} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
        for name in ("alt+ocr", "ocr only", "alt only"):
            for sp in ("dev", "test"):
                for m in MODES:
                    x = r[name][sp][m]
                    print(f"{name:9} {sp:5} {m:13} {x['R@1']:6.1f} {x['R@5']:6.1f} {x['R@10']:6.1f}")
            print(f"{name:9} test  auto R@1 {r[name]['test']['auto_R@1']:.1f}")
        print("dev R@1 by keyword weight (alt+ocr, for reading):", r["alt+ocr"]["dev"]["hybrid_score_R@1_by_weight"])
    write_results(args.json, res)


if __name__ == "__main__":
    main()
