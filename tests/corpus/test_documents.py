"""Document readers (CommonMark Markdown, HTML figure detection), the evaluation leak rule and
the calibrated placement, on small hand-made documents (real parser, real images on disk)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmrag.tasks.imageref import (
    AnswerSection,
    ComposeConfig,
    ImageCandidate,
    assign_images,
    figure_tasks,
    parse_html,
    parse_markdown,
    place_images,
    read_documents,
)
from mmrag.tasks.imageref.insertion import Relevance, expected_occupied


def test_markdown_images_are_the_parsers_image_nodes():
    doc = parse_markdown("# T\n\nUse `![x](inline.png)` to embed.\n\n![spaced alt](<my img.png>) after it.\n\n"
                         "```\n![c](code.png)\n```\n", "a.md")
    assert [(im.id, im.caption) for im in doc.images] == [("my img.png", "spaced alt")]
    text = doc.sections[0].text
    assert "`![x](inline.png)`" in text            # inline code stays text, not a figure
    assert "my img" not in text and "spaced alt" not in text and "after it." in text  # markup gone
    assert "code.png" not in text                  # code blocks left out


DOCBOOK = """<html><head><title>Manual</title></head><body>
<div class="navheader"><a href="prev.html"><img src="prev.png" alt="Prev"></a> Prev | Next</div>
<h1 class="title">Layers</h1>
<p>Layers stack images.</p>
<div class="note"><img src="note.png" alt="[Note]"> Save often.</div>
<p>Click <span class="inlinemediaobject"><img src="eye.png" alt="eye icon" width="16" height="16"></span> to hide.</p>
<div class="figure"><div class="figure-contents"><div class="mediaobject"><img src="dialog.png" alt="dialog.png"></div></div>
<p class="title"><b>Figure 2.1. The layers dialog</b></p></div>
<h2>Masks</h2><p>A mask hides parts.</p><p><img src="mask.png" alt="A layer mask painted in grey"></p>
<center><img src="plot.png"><br>Figure: mask histogram</center>
<img src="nocap.png">
<div class="navfooter"><img src="home.png" alt="Home"></div></body></html>"""


def _png(path, w, h):
    Image.new("RGB", (w, h), (120, 30, 200)).save(path)


def test_html_figures_are_what_the_markup_says(tmp_path):
    for name, size in {"dialog.png": (300, 200), "mask.png": (400, 300), "plot.png": (300, 300),
                       "nocap.png": (300, 300), "prev.png": (22, 22), "note.png": (24, 24),
                       "eye.png": (16, 16), "home.png": (22, 22)}.items():
        _png(tmp_path / name, *size)
    doc = parse_html(DOCBOOK, "m.html", base_dir=tmp_path)
    got = {im.id: (im.caption, im.caption_source, doc.sections[im.section].heading) for im in doc.images}
    assert got == {"dialog.png": ("The layers dialog", "figcaption", "Layers"),   # the number is not kept
                   "mask.png": ("A layer mask painted in grey", "alt", "Masks"),
                   "plot.png": ("Figure: mask histogram", "figcaption", "Masks")}
    body = " ".join(s.text for s in doc.sections)
    assert "The layers dialog" not in body and "mask histogram" not in body  # titles are not body text
    assert "Prev" not in body and "Layers stack images." in body
    dec = doc.metadata["decorative_images"]
    assert sum(dec.values()) == 5                   # prev, note, eye, nocap, home
    assert dec["page chrome"] == 2 and dec["icon-sized"] == 1


def test_a_linked_thumbnail_keeps_its_figure_caption_out_of_the_body(tmp_path):
    # GRASS manual pages: the image links to its full size and the caption follows the link
    # or repeats the alt text under the image (a visible caption, here in a table cell)
    _png(tmp_path / "hist.png", 300, 120)
    _png(tmp_path / "thin.png", 300, 120)
    html = ("<html><body><h2>Examples</h2><p>Make a surface.</p>"
            '<div align="center"><a href="hist_big.png"><img src="hist.png" alt="example histogram" '
            'width="600" height="244" border="0"></a><br><i>Figure: Histogram of random surface</i></div>'
            "<p>Then smooth it.</p><table><tr><td>&nbsp;<img src='thin.png' alt='Raster feature thinning'>"
            "<br><font size='-1'><i>Raster feature thinning (skeletonizing)</i></font></td></tr></table>"
            "<p>The map can be vectorized.</p></body></html>")
    doc = parse_html(html, "r.html", base_dir=tmp_path)
    assert [(im.caption, im.caption_source) for im in doc.images] == [
        ("Figure: Histogram of random surface", "figcaption"), ("Raster feature thinning (skeletonizing)", "figcaption")]
    body = " ".join(s.text for s in doc.sections)
    assert "Histogram of random surface" not in body and "skeletonizing" not in body
    assert "Then smooth it." in body and "The map can be vectorized." in body


PUBLICAN = """<html><head><title>4.2. Installing</title></head><body>
<div class="docnav top"><a class="previous" href="a.html"><strong>Prev</strong></a></div>
<div class="section"><div class="titlepage"><h2 class="title">4.2. Installing, Step by Step</h2></div>
<div class="para">The installer starts from a boot menu.</div>
<div class="sidebar"><div class="titlepage"><p class="title"><strong>GOING FURTHER 32 or 64 bits?</strong></p></div>
<div class="para">A 32-bit system cannot address more than 4 GB of memory.</div></div>
<div class="figure"><a id="figure.boot"></a><div class="figure-contents"><div class="mediaobject">
<img src="boot.png" alt="Boot screen" /></div></div><p class="title"><strong>Figure 4.1. Boot screen</strong></p></div>
<h3 class="title">4.2.2. Forwarding</h3>
<div class="para">It listens to port 8000 (see <a class="xref" href="#figure.ssh">Figure 9.3, “Forwarding a local
port with SSH”</a>) and <a class="xref" href="#sect.x">Section 4.2.1, “Booting the Installer”</a>.</div>
<div class="figure"><a id="figure.ssh"></a><div class="figure-contents"><div class="mediaobject">
<img src="ssh.png" alt="Forwarding a local port with SSH" /></div></div>
<p class="title"><strong>Figure 9.3. Forwarding a local port with SSH</strong></p></div></div>
<div class="docnav"><a class="home" href="index.html"><strong>Home</strong></a></div></body></html>"""


def test_docbook_figure_titles_cross_references_and_sidebars(tmp_path):
    # Publican/DocBook XSL (the Debian Administrator's Handbook): numbered figure titles, figure
    # cross-references that repeat the title, "GOING FURTHER" sidebars
    _png(tmp_path / "boot.png", 300, 200)
    _png(tmp_path / "ssh.png", 300, 200)
    doc = parse_html(PUBLICAN, "p.html", base_dir=tmp_path)
    assert [(im.caption, im.caption_source, doc.sections[im.section].heading) for im in doc.images] == [
        ("Boot screen", "figcaption", "4.2. Installing, Step by Step"),
        ("Forwarding a local port with SSH", "figcaption", "4.2.2. Forwarding")]
    body = " ".join(s.text for s in doc.sections)
    assert "Boot screen" not in body and "Figure 4.1" not in body          # the title is the caption only
    assert "Forwarding a local port" not in body and "(see Figure)" in body  # the cross-reference keeps "Figure"
    assert "Section 4.2.1, “Booting the Installer”" in body            # other cross-references stay
    assert "cannot address more than 4 GB" in body and "GOING FURTHER" in body  # a sidebar is content
    assert "Prev" not in body and "Home" not in body


ASCIIDOCTOR = """<html><head><title>Schematic Editor</title></head><body class="book toc2 toc-left">
<div id="header"><h1>Schematic Editor</h1><div id="toc" class="toc2"><div id="toctitle">Table of Contents</div>
<ul class="sectlevel1"><li><a href="#_pins">1. Pin properties and the pin table</a></li></ul></div></div>
<div id="content"><div class="sect1"><h2 id="_pins">1. Pin properties and the pin table</h2>
<div class="paragraph"><p>Each pin has a number and a name.</p></div>
<div class="imageblock"><div class="content"><img src="images/pin-properties.png" alt="pin properties"></div></div>
<div class="paragraph"><p>Several pins are edited at once in a table.</p></div>
<div class="imageblock"><div class="content"><img src="images/pin_table.png" alt="The pin table of a connector"></div></div>
<div class="imageblock"><div class="content"><img src="images/board_setup.png" alt="board_setup"></div>
<div class="title">Figure 3. Board setup dialog</div></div>
</div></div><div id="footer"><div id="footer-text">Last updated 2023-01-26</div></div></body></html>"""


def test_asciidoctor_toc_footer_and_file_name_alt_text(tmp_path):
    # Asciidoctor (the KiCad manuals): the table of contents is div#toc (its class "toc2" is also
    # the body's), and an image block's default alt text is its file name with "-"/"_" as spaces
    (tmp_path / "images").mkdir()
    for name in ("pin-properties.png", "pin_table.png", "board_setup.png"):
        _png(tmp_path / "images" / name, 300, 200)
    doc = parse_html(ASCIIDOCTOR, "eeschema.html", base_dir=tmp_path)
    assert [(im.caption, im.caption_source) for im in doc.images] == [
        ("Each pin has a number and a name.", "context"),        # no caption but its file name: not scored
        ("The pin table of a connector", "alt"), ("Board setup dialog", "figcaption")]
    body = " ".join(s.text for s in doc.sections)
    assert "Table of Contents" not in body and "Last updated" not in body
    assert body.count("Pin properties and the pin table") == 0  # the heading only, not the TOC's copy
    assert [s.heading for s in doc.sections] == ["Schematic Editor", "1. Pin properties and the pin table"]
    assert "Several pins are edited at once in a table." in body
    (task,) = figure_tasks([doc])
    assert [im.caption for im in task.images] == ["The pin table of a connector", "Board setup dialog"]
    assert task.n_excluded == 1


def test_a_logo_on_every_page_is_chrome(tmp_path):
    _png(tmp_path / "logo.png", 200, 100)
    _png(tmp_path / "fig.png", 300, 200)
    for k in range(4):
        fig = '<p><img src="fig.png" alt="a contour map of the valley"></p>' if k == 0 else ""
        (tmp_path / f"p{k}.html").write_text(f'<h1>Page {k}</h1><img src="logo.png" alt="Project banner">'
                                             f"<p>text {k}</p>{fig}", encoding="utf-8")
    ds = read_documents(tmp_path)
    assert [(d.id, [im.id for im in d.images]) for d in ds.documents] == [
        ("p0.html", ["fig.png"]), ("p1.html", []), ("p2.html", []), ("p3.html", [])]
    assert ds.documents[1].metadata["decorative_images"] == {"repeated on many pages": 1}


def test_figures_captioned_from_their_own_context_are_not_scored():
    doc = parse_markdown("# T\n\n## A\n\nAlpha text.\n\n![](a.png)\n\nThe plot shows alpha.\n\n"
                         "## B\n\nBeta text.\n\n![beta curve](b.png)\n", "t.md")
    a = next(im for im in doc.images if im.id == "a.png")
    assert a.caption_source == "context"            # its caption is a sentence around it
    excluded: dict[str, int] = {}
    (task,) = figure_tasks([doc], excluded)
    assert [im.id for im in task.images] == ["b.png"] and task.n_excluded == 1
    assert excluded == {"context_caption": 1}


def test_max_inserted_is_the_best_placement_with_that_many_images():
    r = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.1], [0.1, 0.1, 0.6]])
    assert assign_images(r, threshold=0.0) == [0, 1, 2]
    assert assign_images(r, threshold=0.0, max_inserted=2) == [0, 1, None]   # 0.9 + 0.7 beats 0.9 + 0.6
    assert assign_images(r, threshold=0.0, max_inserted=1) == [0, None, None]
    assert assign_images(r, threshold=0.0, max_inserted=0) == [None, None, None]
    assert round(expected_occupied(10, 10), 3) == round(10 * (1 - 0.9 ** 10), 3)


class _Lexical(Relevance):
    """tf-idf only (the real relevance with lexical weight 1): no model needed."""


def test_calibrated_placement_penalises_heading_only_sections():
    secs = [AnswerSection("Raster maps", 2, ""),   # a heading only
            AnswerSection("Slope", 3, "The slope of the raster map in degrees from the elevation."),
            AnswerSection("Aspect", 3, "Aspect is the compass direction the slope faces.")]
    ims = [ImageCandidate("IMAGE_1", "s", "s.png", "raster maps and slope", matching_text="raster maps and slope")]
    rel = _Lexical(lexical_weight=1.0)
    cfg = ComposeConfig(placement="calibrated", z_threshold=-5.0, count_factor=0, empty_penalty=0.0)
    no_pen = {p.index: p.image for p in place_images("Maps", secs, ims, rel, 0.0, config=cfg) if p.image}
    cfg.empty_penalty = 10.0
    pen = {p.index: p.image for p in place_images("Maps", secs, ims, rel, 0.0, config=cfg) if p.image}
    assert pen == {2: "IMAGE_1"}
    assert no_pen == {1: "IMAGE_1"}                # the heading alone wins without the penalty
