"""Build the second figure-position corpus: the GRASS GIS 8.2 reference manual (Debian ``grass-doc``).

Reproducible: downloads the pinned Debian package with ``apt-get download``, extracts it with
``dpkg -x``, copies the HTML pages and shrinks their raster images to at most 512 px (as the shared
data) into ``cache_dir()/doc_corpora/grass-doc_<version>/html``, and writes ``split.json``: a
page-level dev/test split by a hash of the page path (:func:`mmrag.tasks.imageref.dev_test_split`,
the same rule as the d2l chapters, so ``mmrag eval imageref --split dev|test`` agrees with it).

The pages are read as HTML by :mod:`mmrag.corpus.documents` (figures are what the markup says;
logos, icons and navigation are skipped and counted). Nobody tuned the reader on the
``gimp-help-*`` packages: they are the held-out check.

    python benchmarks/make_doc_corpus.py            # prints the folder; then e.g.
    mmrag eval imageref --docs ~/.cache/mmrag/doc_corpora/grass-doc_8.2.1-1/html --split dev
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "grass-doc"
VERSION = "8.2.1-1"  # Debian 12 (bookworm)
HTML_DIR = "usr/share/doc/grass-doc/html"
MAX_SIDE = 512


def corpus_dir(version: str = VERSION) -> Path:
    from mmrag.paths import cache_dir

    return cache_dir() / "doc_corpora" / f"{PACKAGE}_{version}"


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


def build(version: str = VERSION, force: bool = False) -> Path:
    out = corpus_dir(version)
    html = out / "html"
    if (out / "split.json").is_file() and not force:
        return html
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        sys.exit("error: apt-get and dpkg are needed to fetch the Debian package")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", f"{PACKAGE}={version}"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if r.returncode != 0 or not debs:
            sys.exit(f"error: could not download {PACKAGE}={version} with apt-get "
                     f"({(r.stderr or r.stdout).strip().splitlines()[-1:] or 'no output'}); "
                     f"is the Debian bookworm archive configured (apt-get update)?")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        src = Path(tmp) / "x" / HTML_DIR
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

    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html"))
    split = {p: dev_test_split(p) for p in pages}
    # corpus data, not a result (no machine or date); atomic, since split.json marks the cache complete
    write_json(out / "split.json", {"package": f"{PACKAGE}={version}", "rule": "dev_test_split(page path)",
                                    "pages": split}, indent=1)
    return html


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default=VERSION)
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache folder is complete")
    args = ap.parse_args()
    html = build(args.version, args.force)
    split = json.loads((html.parent / "split.json").read_text(encoding="utf-8"))["pages"]
    n_dev = sum(v == "dev" for v in split.values())
    print(f"{html}  ({len(split)} pages: dev {n_dev}, test {len(split) - n_dev})")


if __name__ == "__main__":
    main()
