"""Tux Paint's stamps as extra training pairs for the v2 bridge (issue 15, "more varied pairs").

    python benchmarks/bench_encoder_stamps.py [--stamps DIR] --json benchmarks/results/encoder_stamps_dev.json
    python benchmarks/bench_encoder_stamps.py --final "white, desc+name, w 3" --json benchmarks/results/encoder_stamps_final.json

The stamps of Debian's ``tuxpaint-stamps-default`` (pinned below; GPL): transparent PNG drawings
and cut-out photos, each with a ``.txt`` whose first line is an English description ("A
giraffe."). Without ``--stamps`` the package is fetched with ``apt-get download`` + ``dpkg -x``
into ``cache_dir()/tuxpaint_stamps`` (``make_doc_corpus.fetch_deb``). Left out: ``symbols/``
(letters, money, shapes, chess, music signs), the ``*_mirror`` copies, SVG-only stamps, and any
stamp whose first line is not plain English (a ``xx.utf8=`` translation line).

Every row is the ``flickr8k-train-v2`` recipe (EfficientNet-Lite2 260 px centre crop, sqrt-pooled
+ class mix + mid-level parts standardised on the fit rows (``--stats``), ridge λ ``V2_LAMBDA``, half text
whitening on the fit's captions, zero-shot channel w ``V2_ZEROSHOT_WEIGHT``) fitted on Flickr8k
train plus the stamps, each stamp's row repeated w times (an integer sample weight, so means,
standardisation and whitening weigh it the same way). Variants: the stamp composited on white
(as ``open_image`` does) or mid-grey; its target the description alone, or the unit mean of the
description and a template from the file name ("a photo of a giraffe."). t2i is ranked as the
shipped search ranks (the gated image prior: bank of 5,000 Flickr8k train captions, α 0.5, gate
at the 0.6 quantile of the Flickr8k train bank images' priors); the cosine-only t2i is in the
JSON too. Train/dev/COCO dev/sample features come from ``ood_features.py --rich`` (cached).

Adoption rule (stated before any figure): against the v2 row of the same run, Flickr8k dev and
COCO dev t2i R@1 each +0.5 or more, COCO concept P@5 not lower, Flickr8k dev i2t R@1 at most 0.5
lower. The default run evaluates the dev sets only and names the choice (largest mean of the two
dev R@1 gains among the rows that pass; the best such mean if none passes); ``--final NAME`` then
evaluates the v2 row and that row once on Flickr8k test too, with the quickstart ranks.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from benchmarks.bench_encoder_ood import V2_PARTS, Levers, fmt, text_encoder  # noqa: E402
from mmrag.encoders.base import l2_normalize  # noqa: E402
from mmrag.encoders.bridge import Bridge, BridgeConfig  # noqa: E402
from mmrag.encoders.effnet_minilm import V2_LAMBDA, V2_ZEROSHOT_WEIGHT  # noqa: E402
from mmrag.paths import cache_dir  # noqa: E402

PACKAGE, VERSION = "tuxpaint-stamps-default", "2022.06.04-1"
STAMPS_IN_DEB = "usr/share/tuxpaint/stamps"
SKIP_DIRS = ("symbols",)
BACKGROUNDS = {"white": (255, 255, 255), "grey": (128, 128, 128)}
TEMPLATE = "a photo of a {}."
SHIPPED_PRIOR = {"kind": "gate", "alpha": 0.5, "q": 0.6, "beta": 20.0}  # image_prior_flickr8k_train_v2.npz
# a translation line of the .txt files: "af.utf8='n Kameelperd."
_LANG_LINE = re.compile(r"^[A-Za-z_@]+\.utf-?8=", re.I)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def stamps_dir(given: str | None) -> Path:
    if given:
        p = Path(given)
        if not p.is_dir():
            sys.exit(f"error: --stamps {given}: not a folder")
        return p
    from make_doc_corpus import fetch_deb

    root = cache_dir() / "tuxpaint_stamps" / f"{PACKAGE}_{VERSION}"
    if not root.is_dir():
        # unpacked beside it and renamed, so an interrupted run leaves no half folder behind
        part = root.with_name(root.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        fetch_deb(PACKAGE, VERSION, part)
        part.rename(root)
    return root / STAMPS_IN_DEB


def name_of(stem: str) -> str:
    """File name -> words: 'apple_granny_smith' -> 'apple granny smith', 'Strawberry2' -> 'strawberry'."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    s = re.sub(r"[_\-.]+|\d+", " ", s).lower()
    return " ".join(w for w in s.split() if w not in ("mirror", "flip", "cartoon"))


def read_stamps(root: Path) -> list[dict]:
    """[{path, rel, description, name}], sorted by path."""
    out = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or png.stem.endswith("_mirror"):
            continue
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        first = (txt.read_text(encoding="utf-8", errors="replace").splitlines() or [""])[0].strip()
        first = first.translate(_QUOTES)
        if not first or _LANG_LINE.match(first):
            continue
        out.append({"path": png, "rel": rel.as_posix(), "description": first, "name": name_of(png.stem)})
    return out


def composite(path: Path, bg: tuple[int, int, int]):
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, bg)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def stamp_features(stamps: list[dict], bg: str) -> dict:
    """Lite2 features of the stamps' centre crop on one background, as the rich cache holds them
    for the other splits ([n, 1, dim] per kind); cached by background and stamp list."""
    import hashlib

    from benchmarks.ood_features import _RichNet
    from mmrag.encoders.efficientnet_lite import get_variant
    from mmrag.encoders.image_features import view_arrays

    key = hashlib.sha1("\n".join(s["rel"] for s in stamps).encode()).hexdigest()[:10]
    p = cache_dir() / "ood" / f"lite2_stamps_{bg}_{key}_v1.npz"
    if p.exists():
        z = np.load(p)
        return {k: z[k] for k in z.files}
    size = get_variant("lite2").size
    net = _RichNet("lite2")
    t = time.perf_counter()
    out: dict[str, list] = {}
    for i in range(0, len(stamps), 32):
        arrays = [view_arrays(composite(s["path"], BACKGROUNDS[bg]), size, ("center",))[0] for s in stamps[i:i + 32]]
        f = net(arrays)
        for k in ("pooled", "logits", "mid"):
            out.setdefault(k, []).append(f[k][:, None].astype(np.float16))
        print(f"  stamps {bg}: {min(i + 32, len(stamps))}/{len(stamps)}", end="\r", file=sys.stderr, flush=True)
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["views"] = np.array(["center"])
    res["seconds"] = np.array(time.perf_counter() - t)
    np.savez(p, **res)
    print(f"stamps on {bg}: {len(stamps)} images in {float(res['seconds']):.0f}s", file=sys.stderr, flush=True)
    return res


def stamp_captions(stamps: list[dict], kind: str) -> list[list[str]]:
    if kind == "desc":
        return [[s["description"]] for s in stamps]
    if kind == "desc+name":
        return [[s["description"], TEMPLATE.format(s["name"])] for s in stamps]
    raise ValueError(kind)


class StampFit:
    """The v2 ridge fit on Flickr8k train + stamp rows, on a ``Levers`` object's cached features."""

    def __init__(self, z: Levers, stats: str = "fit"):
        self.z = z
        self.stats = stats  # "fit": standardise and whiten on the fit rows; "flickr8k": on Flickr8k train only
        self._text: dict = {}

    def embed(self, caps: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(unit mean per stamp, all caption vectors), MiniLM as the Flickr8k captions were embedded."""
        flat = [c for cs in caps for c in cs]
        miss = [c for c in dict.fromkeys(flat) if c not in self._text]
        if miss:
            self._text.update(zip(miss, text_encoder().embed(miss).astype(np.float16).astype(np.float32)))
        C = np.stack([self._text[c] for c in flat])
        owner = np.repeat(np.arange(len(caps)), [len(c) for c in caps])
        Y = np.zeros((len(caps), C.shape[1]))
        np.add.at(Y, owner, C)
        return l2_normalize(Y), C

    def fit(self, stamp_split: str | None = None, caps: list[list[str]] | None = None, w: int = 0):
        """(bridge, vectors(split)); ``w`` = 0 (or no stamps): the shipped v2 fit."""
        z = self.z
        kinds = [k for k, _ in V2_PARTS]
        rows = {k: [z.raw("train", k)] for k in kinds}
        Ym, C = z.Y["train"][0], z.Y["train"][1]
        Ys, Cs = [Ym], [C]
        if stamp_split and w:
            ys, cs = self.embed(caps)
            for k in kinds:
                rows[k] += [z.raw(stamp_split, k)] * w
            Ys += [ys] * w
            Cs += [cs] * w
        # standardised on the fit rows, weighted and scaled as design_matrix does
        stats = {}
        for k in kinds:
            a = np.concatenate(rows[k]) if self.stats == "fit" else rows[k][0]
            stats[k] = (a.mean(0), a.std(0) + 1e-6)

        def design(split: str | None = None, raw: dict | None = None) -> np.ndarray:
            out = []
            for k, wt in V2_PARTS:
                a = ((raw[k] if raw is not None else z.raw(split, k)) - stats[k][0]) / stats[k][1]
                out.append(a * (wt / np.sqrt(a.shape[1])))
            return np.concatenate(out, 1).astype(np.float32)

        X = design(raw={k: np.concatenate(rows[k]) for k in kinds})
        b = Bridge.fit(X, np.concatenate(Ys), BridgeConfig(lam=V2_LAMBDA))
        b.whiten_text_space(np.concatenate(Cs) if self.stats == "fit" else C, 0.5)

        def vectors(s):
            G = b.transform(design(s))
            return l2_normalize(G + V2_ZEROSHOT_WEIGHT * b.center_text(z.probs(s) @ z.zs_table))
        vectors.bridge_only = lambda s: b.transform(design(s))
        return b, vectors


def variants(weights, backgrounds, caption_kinds):
    out = [("v2 (shipped recipe, no stamps)", None, None, 0)]
    for bg in backgrounds:
        for ck in caption_kinds:
            for w in weights:
                out.append((f"{bg}, {ck}, w {w}", bg, ck, w))
    return out


def rule(r: dict, base: dict) -> tuple[bool, str, float]:
    d_f = r["dev"]["t2i"]["R@1"] - base["dev"]["t2i"]["R@1"]
    d_c = r["coco_dev"]["t2i"]["R@1"] - base["coco_dev"]["t2i"]["R@1"]
    d_p = r["coco_concept_p5"] - base["coco_concept_p5"]
    d_i = r["dev"]["i2t"]["R@1"] - base["dev"]["i2t"]["R@1"]
    fails = [m for m, bad in (("F8k dev", d_f < 0.5 - 1e-9), ("COCO dev", d_c < 0.5 - 1e-9),
                              ("P@5", d_p < -1e-9), ("i2t", d_i < -0.5 - 1e-9)) if bad]
    return not fails, f"{d_f:+.1f}/{d_c:+.1f}/{d_p:+.1f}/{d_i:+.1f}" + (f" fails {','.join(fails)}" if fails else " passes"), (d_f + d_c) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stamps", help=f"the unpacked {STAMPS_IN_DEB} folder (default: fetch the pinned package)")
    ap.add_argument("--weights", nargs="+", type=int, default=[1, 3, 10])
    ap.add_argument("--backgrounds", nargs="+", default=["white", "grey"], choices=list(BACKGROUNDS))
    ap.add_argument("--captions", nargs="+", default=["desc", "desc+name"], choices=["desc", "desc+name"])
    ap.add_argument("--stats", choices=["fit", "flickr8k"], default="fit",
                    help="where the standardisation and text whitening come from: the fit rows (as fit_effnet_bridge "
                         "on the combined corpus; default) or Flickr8k train only (a diagnostic)")
    ap.add_argument("--final", metavar="NAME", help="the row chosen on dev: evaluate it and v2 once with Flickr8k test")
    ap.add_argument("--json", default="benchmarks/results/encoder_stamps_dev.json")
    a = ap.parse_args()
    if any(w < 1 for w in a.weights):
        sys.exit("error: --weights must be integers >= 1")
    stamps = read_stamps(stamps_dir(a.stamps))
    if not stamps:
        sys.exit("error: no stamp with an English description found")
    cats = {}
    for s in stamps:
        cats[s["rel"].split("/")[0]] = cats.get(s["rel"].split("/")[0], 0) + 1
    print(f"{len(stamps)} stamps: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())), flush=True)
    todo = variants(a.weights, a.backgrounds, a.captions)
    if a.final:
        todo = [v for v in todo if v[3] == 0 or v[0] == a.final]
        if len(todo) < 2:
            sys.exit(f"error: --final {a.final!r} is no row of this run ({'; '.join(v[0] for v in variants(a.weights, a.backgrounds, a.captions)[1:])})")
    evals = ("dev", "coco_dev", "test") if a.final else ("dev", "coco_dev")
    z = Levers("lite2", evals)
    for bg in {v[1] for v in todo if v[1]}:
        z.data[f"stamps_{bg}"] = stamp_features(stamps, bg)
    fitter = StampFit(z, a.stats)
    head = (f"{'variant':<32}| {'F8k dev t2i':>16} {'i2t R@1':>7} | {'COCO dev t2i':>16} | {'P@5':>5} | "
            f"{'cos t2i dev/COCO':>16} | Δ F8k/COCO/P@5/i2t, rule")
    if a.final:
        head += f" | {'F8k test t2i':>16} {'test i2t':>16} | quickstart"
    print(head, flush=True)
    rows, base = [], None
    for name, bg, ck, w in todo:
        t = time.perf_counter()
        b, vectors = fitter.fit(f"stamps_{bg}" if bg else None, stamp_captions(stamps, ck) if ck else None, w)
        r = z.evaluate(vectors, b, SHIPPED_PRIOR)
        cos = z.evaluate(vectors, b, None)
        r["cosine_t2i"] = {s: cos[s]["t2i"] for s in evals}
        r["cosine_coco_concept_p5"] = cos["coco_concept_p5"]
        if not a.final:  # read once, after the choice (--final)
            r.pop("quickstart_ranks", None)
        base = base or r
        ok, verdict, gain = rule(r, base) if w else (False, "—", 0.0)
        line = (f"{name:<32}| {fmt(r['dev']['t2i']):>16} {r['dev']['i2t']['R@1']:>7.1f} | "
                f"{fmt(r['coco_dev']['t2i']):>16} | {r['coco_concept_p5']:>5.1f} | "
                f"{cos['dev']['t2i']['R@1']:>7.1f}/{cos['coco_dev']['t2i']['R@1']:<8.1f} | {verdict}")
        if a.final:
            line += (f" | {fmt(r['test']['t2i']):>16} {fmt(r['test']['i2t']):>16} | "
                     f"{','.join(map(str, r['quickstart_ranks']))}")
        print(line + f"  ({time.perf_counter() - t:.0f}s)", flush=True)
        rows.append({"variant": name, "background": bg, "captions": ck, "weight": w, "passes_rule": ok,
                     "mean_dev_r1_gain": round(gain, 2), **r})
    cand = [r for r in rows if r["weight"]]
    passing = [r for r in cand if r["passes_rule"]]
    choice = max(passing or cand, key=lambda r: r["mean_dev_r1_gain"]) if cand else None
    if choice and not a.final:
        print(f"chosen on dev: {choice['variant']!r} ({'passes the rule' if passing else 'no row passes the rule; best mean dev gain'}, "
              f"mean dev t2i R@1 gain {choice['mean_dev_r1_gain']:+.2f})", flush=True)
    write_results(a.json, {"package": f"{PACKAGE}={VERSION}", "stats": a.stats, "n_stamps": len(stamps), "categories": cats,
                           "prior": SHIPPED_PRIOR, "rows": rows,
                           "choice": choice["variant"] if choice and not a.final else None,
                           "any_passes": bool(passing)})


if __name__ == "__main__":
    main()
