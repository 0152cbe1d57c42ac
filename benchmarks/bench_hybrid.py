"""Vector vs keyword vs hybrid search, and the cost of OCR at index time.

(a) sign photos: every COCO sample photo (100) gets a different shop-sign phrase pasted on it
    (DejaVu Sans Bold, white board, random size and place); the folder is indexed with --ocr
    and each phrase, typed in lower case, is a query: rank-1 accuracy per mode. File names are
    neutral (photo_NNN.jpg) so only the image's own text can match.
(b) Flickr8k test captions: each of the 1,000 test images is indexed with captions 2-5 as its
    text; caption 1 (never indexed) is the query: t2i R@1/5/10 per mode. (Indexing all five
    would put every query verbatim in the keyword index.)

    python benchmarks/bench_hybrid.py [--signs 100] [--flickr 1000] [--json benchmarks/results/hybrid.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

NOUNS = ["BOOKS", "BAKERY", "PHARMACY", "GARAGE", "MUSEUM", "LIBRARY", "TAVERN", "FLORIST", "HOTEL", "CINEMA",
         "MARKET", "BARBER", "DINER", "GALLERY", "THEATER", "HARDWARE", "TAILOR", "CLINIC", "BISTRO", "STUDIO"]
ADJ = ["HARBOR", "MAPLE", "SUNSET", "GOLDEN", "RIVERSIDE", "OLD TOWN", "BLUE MOON", "CEDAR", "LIBERTY", "PIONEER",
       "SILVER", "NORTHGATE", "ORCHARD", "EMERALD", "COPPER", "MEADOW", "HIGHLAND", "LANTERN", "WILLOW", "FALCON"]


def make_signs(n: int, out: Path, seed: int = 0) -> list[tuple[str, str]]:
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    photos = sorted((DATA / "coco_sample" / "images").glob("*.jpg"))[:n]
    phrases = rng.sample([f"{a} {b}" for a in ADJ for b in NOUNS], len(photos))
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signs", type=int, default=100)
    ap.add_argument("--flickr", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "hybrid.json")
    args = ap.parse_args()

    from mmrag.corpus.items import Corpus, CorpusItem
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.encoders import create_encoder
    from mmrag.retrieval import Searcher

    enc = create_encoder("effnet-minilm")
    modes = ("vector", "keyword", "hybrid")
    res: dict = {"encoder": "effnet-minilm", "rrf_k": 60}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---------------------------------------------------------------- (a) signs
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
        ranks = {m: [rank_of(s.search(text=p.lower(), k=10, mode=m), name) for name, p in rows] for m in modes}
        auto = [rank_of(s.search(text=p.lower(), k=10, mode="auto"), name) for name, p in rows]
        exact = sum(p.replace(" ", "") in (s.get(n)["ocr_text"] or "").upper().replace(" ", "").replace("\n", "")
                    for n, p in rows)
        s.close()
        res["signs"] = {"n": len(rows), "index_s_without_ocr": round(t_plain, 1), "index_s_with_ocr": round(t_ocr, 1),
                        "ocr_s_per_image": round((t_ocr - t_plain) / len(rows), 3),
                        "phrase_read_exactly": exact, "auto_mode_R@1": recall(auto)["R@1"],
                        **{m: recall(r) for m, r in ranks.items()}}
        # ---------------------------------------------------------------- (b) Flickr8k
        f = read_corpus("flickr8k", DATA / "flickr8k", split="test", limit=args.flickr)
        items = [CorpusItem(id=it.id, path=it.path, captions=list(it.captions[1:]), split=it.split) for it in f.items]
        queries = [(it.id, it.captions[0]) for it in f.items]
        build_index(Corpus("flickr8k-test-4caps", f.root, items), tmp / "flickr", enc, IndexConfig(progress=False))
        s = Searcher(tmp / "flickr", encoder=enc)
        out = {}
        for m in modes:
            t = time.perf_counter()
            rk = [rank_of(s.search(text=q, k=10, mode=m), i) for i, q in queries]
            out[m] = {**recall(rk), "ms_per_query": round(1000 * (time.perf_counter() - t) / len(queries), 1)}
        s.close()
        res["flickr8k_test"] = {"n_images": len(items), "n_queries": len(queries), **out}

    print(f"(a) sign photos, {res['signs']['n']} COCO photos with pasted phrases, --ocr "
          f"({res['signs']['phrase_read_exactly']} phrases read exactly, spaces aside)")
    print(f"{'mode':8} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    for m in modes:
        r = res["signs"][m]
        print(f"{m:8} {r['R@1']:6.1f} {r['R@5']:6.1f} {r['R@10']:6.1f}")
    print(f"OCR cost: {res['signs']['ocr_s_per_image']} s/image (index {res['signs']['index_s_without_ocr']} s "
          f"without, {res['signs']['index_s_with_ocr']} s with)")
    print(f"(b) Flickr8k test, {res['flickr8k_test']['n_images']} images with captions 2-5 indexed, caption 1 as query")
    print(f"{'mode':8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'ms/q':>6}")
    for m in modes:
        r = res["flickr8k_test"][m]
        print(f"{m:8} {r['R@1']:6.1f} {r['R@5']:6.1f} {r['R@10']:6.1f} {r['ms_per_query']:6.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
