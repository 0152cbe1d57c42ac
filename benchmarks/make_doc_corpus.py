"""Build a figure-position corpus from a pinned Debian documentation package.

The corpora (``--corpus NAME``, default ``grass``):

``grass``
    The GRASS GIS 8.2 reference manual (Debian ``grass-doc`` 8.2.1-1): hand-written HTML pages.
``handbook``
    The Debian Administrator's Handbook (``debian-handbook`` 11.20220922): Publican / DocBook XSL
    HTML, figures as ``div.figure`` with a title "Figure 1.1. ..."; the English pages only.
``kicad``
    The KiCad 6.0 manuals in English (``kicad-doc-en`` 6.0.11+dfsg-1): Asciidoctor HTML, one page
    per manual (8), figures as ``div.imageblock`` with alt text and no title. (A Sphinx manual was
    tried first: ``openshot-qt-doc`` 2.6.1+dfsg1-3 has 27 figures on 17 pages, too few.)

Reproducible: downloads the pinned package with ``apt-get download``, extracts it with ``dpkg -x``,
copies the corpus's HTML folder and shrinks its raster images to at most 512 px (as the shared
data) into ``cache_dir()/doc_corpora/<package>_<version>/html``, and writes ``split.json``: a
page-level dev/test split by a hash of the page path (:func:`mmrag.tasks.imageref.dev_test_split`,
the same rule as the d2l chapters, so ``mmrag eval imageref --split dev|test`` agrees with it).

The pages are read as HTML by :mod:`mmrag.corpus.documents` (figures are what the markup says;
logos, icons and navigation are skipped and counted). ``--check`` prints what the reader makes of
the corpus: pages, figures, decoration skipped, captions taken from context, and figure captions
found verbatim in the body text (a leak of the caption). Nobody tuned the reader on the
``gimp-help-*`` packages: they are the held-out check.

    python benchmarks/make_doc_corpus.py [--corpus grass|handbook|kicad] [--check]   # prints the folder; then e.g.
    mmrag eval imageref ~/.cache/mmrag/doc_corpora/grass-doc_8.2.1-1/html --split dev   # handbook: debian-handbook_11.20220922/html, kicad: kicad-doc-en_6.0.11+dfsg-1/html
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DebianCorpus:
    package: str
    version: str
    html_dir: str  # the folder inside the .deb that is copied (pages, images, styles)
    pages: str = "*.html"  # which pages of it are documents (glob, recursive)
    about: str = ""


CORPORA = {
    "grass": DebianCorpus("grass-doc", "8.2.1-1", "usr/share/doc/grass-doc/html",
                          about="GRASS GIS 8.2 reference manual, hand-written HTML (Debian 12)"),
    "handbook": DebianCorpus("debian-handbook", "11.20220922", "usr/share/doc/debian-handbook/html/en-US",
                             about="Debian Administrator's Handbook, Publican/DocBook XSL HTML, English (Debian 12)"),
    "kicad": DebianCorpus("kicad-doc-en", "6.0.11+dfsg-1", "usr/share/doc/kicad/help/en",
                          about="KiCad 6.0 manuals, Asciidoctor HTML, English (Debian 12)"),
}
DEFAULT = "grass"
MAX_SIDE = 512


def corpus_dir(name: str = DEFAULT, version: str | None = None) -> Path:
    from mmrag.paths import cache_dir

    c = CORPORA[name]
    return cache_dir() / "doc_corpora" / f"{c.package}_{version or c.version}"


def _shrink(src: Path, dst: Path) -> None:
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif"):
        shutil.copyfile(src, dst)
        return
    try:
        with Image.open(src) as im:
            if max(im.size) <= MAX_SIDE:
                shutil.copyfile(src, dst)
                return
            im.thumbnail((MAX_SIDE, MAX_SIDE))  # keeps the aspect ratio, never enlarges
            im.save(dst)
    except OSError:
        shutil.copyfile(src, dst)


def fetch_deb(package: str, version: str, dest: Path) -> Path:
    """Download the pinned ``package=version`` with ``apt-get download`` and unpack it with
    ``dpkg -x`` into ``dest`` (returned); exits with a one-line error when it cannot."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        sys.exit("error: apt-get and dpkg are needed to fetch the Debian package")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            sys.exit(f"error: could not download {package}={version} with apt-get "
                     f"({(r.stderr or r.stdout).strip().splitlines()[-1:] or 'no output'}); "
                     f"is the Debian bookworm archive configured (apt-get update)?")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(dest)], check=True)
    return dest


def build(name: str = DEFAULT, version: str | None = None, force: bool = False) -> Path:
    if name not in CORPORA:
        sys.exit(f"error: unknown corpus {name!r} (one of {', '.join(CORPORA)})")
    c = CORPORA[name]
    version = version or c.version
    out = corpus_dir(name, version)
    html = out / "html"
    if (out / "split.json").is_file() and not force:
        return html
    with tempfile.TemporaryDirectory() as tmp:
        src = fetch_deb(c.package, version, Path(tmp) / "x") / c.html_dir
        if not src.is_dir():
            sys.exit(f"error: {c.package}={version} has no folder {c.html_dir}")
        if html.exists():
            shutil.rmtree(html)
        for f in sorted(src.rglob("*")):
            if f.is_file() and not f.is_symlink():
                rel = f.relative_to(src)
                if f.suffix.lower() in (".html", ".htm", ".css", ".svg"):
                    (html / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, html / rel)
                else:
                    _shrink(f, html / rel)
    from mmrag.paths import write_json
    from mmrag.tasks.imageref import dev_test_split

    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob(c.pages))
    split = {p: dev_test_split(p) for p in pages}
    # corpus data, not a result (no machine or date); atomic, since split.json marks the cache complete
    write_json(out / "split.json", {"package": f"{c.package}={version}", "rule": "dev_test_split(page path)",
                                    "pages": split}, indent=1)
    return html


def check(html: Path) -> dict:
    """What the reader makes of a built corpus (counts only; no model)."""
    from mmrag.corpus.documents import read_documents

    ds = read_documents(html)
    dec: dict[str, int] = {}
    sources: dict[str, int] = {}
    leaks = {"own_section": 0, "other_section": 0}
    n_fig = pages_with = 0
    for d in ds.documents:
        for k, v in d.metadata.get("decorative_images", {}).items():
            dec[k] = dec.get(k, 0) + v
        placed = [im for im in d.images if im.section is not None]
        n_fig += len(placed)
        pages_with += bool(placed)
        for im in placed:
            sources[im.caption_source] = sources.get(im.caption_source, 0) + 1
            cap = " ".join(im.caption.lower().split())
            if len(cap.split()) < 2 or im.caption_source == "context":  # those are text, and not scored
                continue
            own = " ".join(d.sections[im.section].text.lower().split())
            if cap in own:
                leaks["own_section"] += 1
            elif any(cap in " ".join(s.text.lower().split()) for s in d.sections):
                leaks["other_section"] += 1
    return {"pages": len(ds.documents), "pages_with_figures": pages_with, "figures": n_fig,
            "caption_source": sources, "context_captions (not scored)": sources.get("context", 0),
            "decoration_skipped": dec, "caption_verbatim_in_body": leaks, "skipped_files": len(ds.skipped)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=DEFAULT, choices=sorted(CORPORA))
    ap.add_argument("--version", default=None, help="the package version (default: the pinned one)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache folder is complete")
    ap.add_argument("--check", action="store_true", help="also print what the document reader makes of it")
    args = ap.parse_args()
    html = build(args.corpus, args.version, args.force)
    split = json.loads((html.parent / "split.json").read_text(encoding="utf-8"))["pages"]
    n_dev = sum(v == "dev" for v in split.values())
    print(f"{html}  ({len(split)} pages: dev {n_dev}, test {len(split) - n_dev})")
    if args.check:
        print(json.dumps(check(html), indent=1))


if __name__ == "__main__":
    main()
