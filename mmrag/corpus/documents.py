"""Documents with images: readers (Markdown, HTML, JSONL) into sections and images.

(Chunking a document for retrieval is task behaviour; it lives with the imageref task.)

A :class:`Document` is a title, a list of :class:`Section` (heading + plain text, code left out)
and the :class:`DocImage` it contains, each knowing its section and its surrounding text. Readers:

``markdown`` (``.md``, ``.markdown``)
    ATX headings (``#`` .. ``######``) outside fenced code; images ``![alt](path "title")``.
    Sphinx/d2lbook roles are made readable: ``:label:`x``` lines are dropped, ``:numref:`fig_x```
    becomes "Figure" (``sec_`` "Section", ``tab_`` "Table", ``eq_`` "Equation"), ``:eqref:`` becomes
    "Equation", citations (``:cite:``, ``:citet:``, ``:citep:``) are removed. Labels are never
    kept, so a figure's label cannot leak where the figure belongs.
``html`` (``.html``, ``.htm``)
    The standard library's ``html.parser``: ``h1``-``h6`` start sections; ``img`` gives ``alt`` and
    ``src``; a ``figcaption`` captions the images of its ``figure``; ``script``/``style``/``pre``
    text is left out. A figure caption's number label ("Figure 4.1. ") is dropped (it tells the
    figure's order); a DocBook cross-reference to a figure, "Figure 9.3, “Its title”", is read as
    "Figure" (it repeats the caption in the body text). DocBook/Sphinx sidebars are content;
    Asciidoctor's table of contents and footer are not. In figure markup, alt text that is only
    the file's name (Asciidoctor's default) is no caption.
``jsonl`` (``.jsonl``)
    One document per line: ``{"id", "text", "images": [{"id", "path", "caption"}], "title"?}``.
    ``text`` is read as Markdown; an image referenced in it as ``![..](<image id or path>)`` lands
    in that section, the others belong to the document with no section.

Image paths are resolved against the file that names them (URLs are kept as they are). An image's
``caption`` is its alt text (or figcaption / title); without one it is taken from the surrounding
text (``caption_source="context"``), and without that it stays empty for the captioner
(``caption_source="none"``).

Bad input: a file that is not UTF-8 or cannot be read is a :class:`DocumentError` naming it
when read on its own; when a folder is read it is skipped with the reason in
:attr:`DocumentSet.skipped`, and the other files are kept. A JSONL line that is not valid JSON
(or lacks ``text``) is skipped with its line number.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from mmrag.errors import MmragError

__all__ = [
    "DOCUMENT_SUFFIXES",
    "DocImage",
    "Document",
    "DocumentError",
    "DocumentSet",
    "Section",
    "clean_inline",
    "parse_html",
    "parse_markdown",
    "read_document_file",
    "read_document_text",
    "read_documents",
    "split_paragraphs",
]

DOCUMENT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".jsonl": "jsonl"}
CONTEXT_WORDS = 60  # words of surrounding text kept on each side of an image
CAPTION_FROM_CONTEXT_WORDS = 30


class DocumentError(MmragError):
    """A document could not be read (missing, not UTF-8, wrong format, empty)."""


@dataclass
class DocImage:
    """An image of a document. ``section``: index into :attr:`Document.sections` (None = unplaced);
    ``context``: the text around it; ``caption_source``: alt, figcaption, title, given, context or none."""

    id: str
    path: str
    caption: str = ""
    alt: str = ""
    context: str = ""
    section: int | None = None
    caption_source: str = "alt"

    @property
    def is_remote(self) -> bool:
        return bool(re.match(r"^[a-z][a-z0-9+.-]*://", self.path, re.I)) or self.path.startswith("data:")

    @property
    def exists(self) -> bool:
        return not self.is_remote and Path(self.path).is_file()


@dataclass
class Section:
    """A heading and its plain text (paragraphs separated by blank lines)."""

    heading: str
    level: int
    text: str

    def paragraphs(self) -> list[str]:
        return split_paragraphs(self.text)


@dataclass
class Document:
    id: str
    title: str
    sections: list[Section]
    images: list[DocImage] = field(default_factory=list)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def images_in(self, section: int) -> list[DocImage]:
        return [im for im in self.images if im.section == section]

    def without_images(self) -> "Document":
        """The same text with no images (what the figure-position benchmark gives the system)."""
        return Document(self.id, self.title, list(self.sections), [], self.source, dict(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DocumentSet:
    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def __len__(self) -> int:
        return len(self.documents)


# ----------------------------------------------------------------------------- text helpers

_ROLE_NAMES = {"fig": "Figure", "sec": "Section", "chap": "Chapter", "tab": "Table", "eq": "Equation"}


def _numref(m: re.Match) -> str:
    target = m.group(1).strip()
    return _ROLE_NAMES.get(re.split(r"[_:-]", target, 1)[0].lower(), "this")


def clean_inline(text: str) -> str:
    """Sphinx/d2lbook roles -> readable words; nothing of a label survives."""
    text = re.sub(r":numref:`([^`]*)`", _numref, text)
    text = re.sub(r":eqref:`[^`]*`", "Equation", text)
    text = re.sub(r":cite[tp]?:`[^`]*`", "", text)
    text = re.sub(r":ref:`([^`<]*)(?:<[^`]*>)?`", lambda m: m.group(1).strip() or "this", text)
    text = re.sub(r":(begin|end)_tab:(`[^`]*`)?", "", text)  # d2lbook framework tabs
    text = re.sub(r"\[\*\*(.+?)\*\*\]", r"\1", text)  # d2lbook's [**highlight**]
    text = re.sub(r":[a-z_]+:`([^`]*)`", r"\1", text)  # any other role: keep its text
    return re.sub(r"[ \t]+", " ", text)


def split_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _words(text: str) -> list[str]:
    return text.split()


def _tail(text: str, n: int) -> str:
    w = _words(text)
    return " ".join(w[-n:])


def _head(text: str, n: int) -> str:
    w = _words(text)
    return " ".join(w[:n])


def _first_sentence(text: str, max_words: int = CAPTION_FROM_CONTEXT_WORDS) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.S)
    s = m.group(1) if m else text.strip()
    return _head(s, max_words)


def _unique_id(base: str, taken: set[str]) -> str:
    out, k = base, 2
    while out in taken:
        out, k = f"{base}#{k}", k + 1
    taken.add(out)
    return out


def _resolve(path: str, base_dir: Path | None) -> str:
    path = path.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", path, re.I) or path.startswith("data:") or base_dir is None:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _fill_caption(im: DocImage) -> None:
    if im.caption.strip():
        return
    if im.context.strip():
        im.caption = _first_sentence(im.context)
        im.caption_source = "context"
    else:
        im.caption = ""
        im.caption_source = "none"


# ----------------------------------------------------------------------------- Markdown

_LABEL_LINE = re.compile(r"^\s*:(label|width|height|alt):`[^`]*`\s*$")
_MD: Any = None


def _markdown_parser():
    """A CommonMark parser (markdown-it-py) whose image rule also records where each image's
    markup sits in its inline text, so the markup can be cut out of the text exactly."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt
        from markdown_it.rules_inline.image import image as image_rule

        def image_with_span(state, silent: bool) -> bool:
            start = state.pos
            ok = image_rule(state, silent)
            if ok and not silent:
                state.tokens[-1].meta["span"] = (start, state.pos)
            return ok

        md = MarkdownIt("commonmark")  # no tables: a pipe table stays plain text, as before
        md.inline.ruler.at("image", image_with_span)
        _MD = md
    return _MD


def _inline_images(tok) -> list:
    """Image tokens of an inline token, including images nested in link text."""
    out = []
    for c in tok.children or []:
        if c.type == "image":
            out.append(c)
    return out


def parse_markdown(text: str, doc_id: str, base_dir: Path | None = None, title: str | None = None,
                   keep_code: bool = False, image_lookup: dict[str, DocImage] | None = None) -> Document:
    """Parse Markdown (CommonMark, markdown-it-py) into a :class:`Document`.

    Figures are the parser's image nodes: ``![..](x.png)`` inside inline code or a code block is
    text, ``![a](<my img.png>)`` is an image. ``image_lookup`` (JSONL documents): images named in
    the text by id or path take their record from there instead of being created from the markup."""
    from urllib.parse import unquote

    lines = [ln for ln in text.splitlines() if not _LABEL_LINE.match(ln)]  # labels never kept
    tokens = _markdown_parser().parse("\n".join(lines))
    sections: list[Section] = []
    images: list[DocImage] = []
    taken: set[str] = set()
    heading, level = "", 0
    blocks: list[str] = []  # the current section's text, "" = paragraph break
    pending: list[tuple[DocImage, int]] = []  # images of the current section with their block slot
    code_lines: set[int] = set()
    last_end: int | None = None

    def close() -> None:
        body = "\n".join(blocks)
        body = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", body).strip()
        body = re.sub(r"\n{3,}", "\n\n", body)
        if body or heading or pending:
            idx = len(sections)
            sections.append(Section(heading=heading, level=level, text=body))
            for im, at in pending:
                before = "\n".join(blocks[:at])
                after = "\n".join(blocks[at:])
                im.context = (_tail(before, CONTEXT_WORDS) + " " + _head(after, CONTEXT_WORDS)).strip()
                im.section = idx
                _fill_caption(im)
        pending.clear()

    def separate(start: int) -> None:
        # a blank source line (outside code) between two blocks is a paragraph break
        if last_end is not None and any(not lines[k].strip() for k in range(last_end, start) if k not in code_lines):
            blocks.append("")

    def make_image(tok) -> DocImage:
        alt = re.sub(r"\s+", " ", clean_inline(tok.content)).strip()
        src = unquote(tok.attrs.get("src", ""))
        img_title = str(tok.attrs.get("title") or "").strip()
        record = (image_lookup or {}).get(src)
        if record is not None:
            im = DocImage(**{**asdict(record), "id": _unique_id(record.id, taken)})
            if alt and not im.caption:
                im.caption, im.caption_source = alt, "alt"
            (image_lookup or {}).pop(src, None)
            return im
        return DocImage(id=_unique_id(src, taken), path=_resolve(src, base_dir), caption=alt or img_title, alt=alt,
                        caption_source="alt" if alt else ("title" if img_title else "none"))

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.type in ("fence", "code_block"):
            a, b = tok.map or (0, 0)
            code_lines.update(range(a, b))
            if keep_code:
                separate(a)
                blocks.append(tok.content.rstrip("\n"))
                last_end = b
            continue
        if tok.type == "heading_open":
            close()
            inline = tokens[i]
            i += 2  # inline, heading_close
            for im_tok in _inline_images(inline):  # an image in a heading belongs to the new section
                pending.append((make_image(im_tok), 0))
                images.append(pending[-1][0])
            heading = _cut_spans(inline.content, _inline_images(inline)).strip()
            heading, level, blocks = re.sub(r"\s+", " ", clean_inline(heading)).strip(), int(tok.tag[1]), []
            last_end = (tok.map or (0, 0))[1]
            continue
        if tok.type in ("inline", "html_block"):
            a, b = tok.map or (last_end or 0, last_end or 0)
            separate(a)
            if tok.type == "html_block":
                blocks.append(clean_inline(tok.content).rstrip())
            else:
                ims = _inline_images(tok)
                spans = sorted((t.meta.get("span", (0, 0)), t) for t in ims if t.meta.get("span")) if ims else []
                pos = 0
                piece: list[str] = []
                for (s0, s1), im_tok in spans:
                    piece.append(tok.content[pos:s0])
                    piece.append("\0")  # where the image was
                    pos = s1
                piece.append(tok.content[pos:])
                joined = "".join(piece)
                by_line = joined.split("\n")
                k_img = 0
                for k, ln in enumerate(by_line):
                    # keep the source line's list / quote marker, as the plain-text reading has it
                    raw_line = lines[a + k] if a + k < len(lines) else ""
                    bare = tok.content.split("\n")[k] if k < len(tok.content.split("\n")) else ""
                    at = raw_line.find(bare) if bare else -1
                    if at > 0:
                        ln = raw_line[:at] + ln
                    n_here = ln.count("\0")
                    ln_text = clean_inline(ln.replace("\0", " "))
                    if n_here:
                        for _ in range(n_here):
                            im = make_image(spans[k_img][1])
                            k_img += 1
                            images.append(im)
                            pending.append((im, len(blocks)))
                    # a line that held only an image is a paragraph break, as in the source
                    blocks.append(ln_text.rstrip() if ln_text.strip() else "")
            last_end = b
    close()
    doc_title = title or next((s.heading for s in sections if s.level == 1 and s.heading), "") or doc_id
    return Document(id=doc_id, title=doc_title, sections=sections, images=images)


def _cut_spans(content: str, image_tokens: list) -> str:
    out, pos = [], 0
    for t in sorted(image_tokens, key=lambda t: t.meta.get("span", (0, 0))):
        s0, s1 = t.meta.get("span", (pos, pos))
        out.append(content[pos:s0] + " ")
        pos = s1
    out.append(content[pos:])
    return "".join(out)


# ----------------------------------------------------------------------------- HTML

# What HTML documentation marks as a figure (HTML5, DocBook, Sphinx, AsciiDoc); the caption
# element inside such a container captions its images and is not body text.
_FIGURE_CLASSES = {"figure", "informalfigure", "imageblock"}
_CAPTION_CLASSES = {"title", "caption", "caption-text"}
# Page chrome: text and images inside are not part of the document.
_CHROME_TAGS = {"nav"}
# (DocBook's and Sphinx's "sidebar" is a content box -- "GOING FURTHER ...", ".. sidebar::" -- not chrome;
# Sphinx's page sidebar is "sphinxsidebar")
_CHROME_CLASSES = {"navheader", "navfooter", "docnav", "breadcrumb", "breadcrumbs", "toc", "related",
                   "sphinxsidebar", "headerlink"}
# Asciidoctor's table of contents (``div#toc``; its class "toc2" is also on <body>, so the id is
# the cue) and its footer ("Last updated ...")
_CHROME_IDS = {"toc", "footer"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_ICON_ALT = re.compile(r"^\W*(note|tip|warning|caution|important|danger|attention|hint|error|info|home|next|prev|"
                       r"previous|up|top|back|forward|logo|icon|image|picture|figure|screenshot|menu|close|open|"
                       r"search|\d+)\W*$", re.I)
_FIGURE_TEXT = re.compile(r"^\s*(figure|fig\.)\s*(\d[\w.-]*\s*[.:]?|[:.])", re.I)
# A caption's number ("Figure 4.1. ", "Fig. 2: ") is dropped: it gives the figure's order in the
# document, which the system must not see (d2l captions carry none). "Figure: ..." has no number.
_FIGURE_LABEL = re.compile(r"^\s*(?:figure|fig\.)\s*\d+(?:[.-]\d+)*\s*[.:]?\s+(?=\S)", re.I)
# DocBook's cross-reference to a figure repeats its whole title ("see Figure 9.3, “Forwarding a
# port”"): the caption itself in the body text. It is read as "Figure", as d2l's :numref: is.
_FIGURE_XREF = re.compile(r"\b(?:figure|fig\.)\s+\d+(?:[.-]\d+)*\s*,\s*(?:“[^”]{1,300}”|\"[^\"]{1,300}\")", re.I)


def _figure_caption(text: str) -> str:
    """A figure's caption text without its number label."""
    return _FIGURE_LABEL.sub("", text, count=1)


def _repeats_alt(text: str, alt: str) -> bool:
    """``text`` starts with the image's alt text (at least two words), case and spacing aside."""
    a = " ".join(alt.lower().split())
    return len(a.split()) >= 2 and " ".join(text.lower().split()).startswith(a)


MIN_FIGURE_SIDE = 48  # px: smaller is an icon (inline GUI icons, admonition and navigation arrows)
MIN_FIGURE_LONG_SIDE = 96
CHROME_SHARE = 0.2  # an image on more than this share of a folder's HTML pages is site chrome


def _px(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)(px)?\s*$", value or "")
    return int(m.group(1)) if m else None


def _image_size(path: str) -> tuple[int, int] | None:
    """Pixel size read from the file's header (None: remote, missing or unreadable)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", path, re.I) or path.startswith("data:"):
        return None
    try:
        if path.lower().endswith(".svg"):
            head = Path(path).read_text("utf-8", errors="replace")[:4000]
            w = re.search(r"<svg[^>]*?\bwidth=[\"']([\d.]+)(px)?[\"']", head, re.S)
            h = re.search(r"<svg[^>]*?\bheight=[\"']([\d.]+)(px)?[\"']", head, re.S)
            return (int(float(w.group(1))), int(float(h.group(1)))) if w and h else None
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):
        return None


def _real_alt(alt: str, src: str) -> bool:
    """Alt text that describes something: not empty, not a file name, not an icon's word or number."""
    a = alt.strip()
    if len(a) < 3 or _ICON_ALT.match(a) or a.startswith("[") and a.endswith("]"):
        return False
    name = Path(src.split("?")[0]).name
    stem = Path(name).stem.lower()
    # Asciidoctor's default alt text is the file's stem with "-" and "_" as spaces
    return a.lower() not in (name.lower(), stem, stem.replace("_", " "), re.sub(r"[-_]+", " ", stem).strip())


def _decoration_reason(alt: str, src: str, path: str, attrs: dict) -> str | None:
    """Why an ``<img>`` outside figure markup is not a figure (None: it is one)."""
    if not _real_alt(alt, src):
        return "no descriptive alt text"
    w, h = _px(attrs.get("width")), _px(attrs.get("height"))
    if w is None and h is None:
        size = _image_size(path)
        if size is not None:
            w, h = size
    sides = [x for x in (w, h) if x is not None]
    if sides and (min(sides) < MIN_FIGURE_SIDE or max(sides) < MIN_FIGURE_LONG_SIDE):
        return "icon-sized"
    return None


class _HTMLDoc(HTMLParser):
    _SKIP = {"script", "style", "pre", "noscript", "template"}
    _BLOCK = {"p", "div", "li", "br", "tr", "blockquote", "section", "article", "table", "ul", "ol", "dd", "dt",
              "center", "figure", "dl", "td", "th"}

    def __init__(self, base_dir: Path | None):
        super().__init__(convert_charrefs=True)
        self.base_dir = base_dir
        self.sections: list[Section] = []
        self.images: list[DocImage] = []
        self.taken: set[str] = set()
        self.heading, self.level, self.buf = "", 0, [""]
        self.pending: list[tuple[DocImage, int]] = []
        self.in_heading: int | None = None
        self.heading_buf: list[str] = []
        self.title_buf: list[str] = []
        self.in_title = False
        self.stack: list[tuple[str, set[str], str]] = []  # (tag, classes, role: ""/skip/chrome/figure/caption)
        self.figures: list[list[DocImage]] = []  # images of each open figure container
        self.caption_buf: list[str] = []
        self.loose: tuple[DocImage, int] | None = None  # a figure image whose "Figure N: ..." text may follow
        self.loose_depth: int | None = None
        self.loose_buf: list[str] = []
        self.loose_why: str | None = None
        self.decorative: dict[str, int] = {}
        self.figure_markup: set[str] = set()  # ids of images inside figure markup

    def _role(self, role: str) -> bool:
        return any(r == role for _, _, r in self.stack)

    def _close(self) -> None:
        body = "\n\n".join(re.sub(r"\s+", " ", b).strip() for b in self.buf if b.strip())
        body = _FIGURE_XREF.sub("Figure", body)
        if body or self.heading or self.pending:
            idx = len(self.sections)
            self.sections.append(Section(self.heading, self.level, body))
            for im, at in self.pending:
                before = " ".join(self.buf[:at])
                after = " ".join(self.buf[at:])
                im.context = (_tail(before, CONTEXT_WORDS) + " " + _head(after, CONTEXT_WORDS)).strip()
                im.section = idx
        self.pending = []

    def _skip_count(self, reason: str) -> None:
        self.decorative[reason] = self.decorative.get(reason, 0) + 1

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        classes = set(a.get("class", "").split())
        if tag == "img":
            self._img(a)
            return
        if tag in _VOID:
            if tag == "br":
                self.buf.append("")
            return
        role = ""
        if tag in self._SKIP:
            role = "skip"
        elif tag in _CHROME_TAGS or classes & _CHROME_CLASSES or a.get("id") in _CHROME_IDS:
            role = "chrome"
        elif tag == "figure" or classes & _FIGURE_CLASSES:
            role = "figure"
            self.figures.append([])
        elif self.figures and (tag == "figcaption" or classes & _CAPTION_CLASSES) and not self._role("caption"):
            role = "caption"
            self.caption_buf = []
        self.stack.append((tag, classes, role))
        if tag == "title":
            self.in_title = True
        elif re.fullmatch(r"h[1-6]", tag) and not self._role("chrome") and not self._role("figure"):
            self._close()
            self.in_heading, self.heading_buf, self.buf = int(tag[1]), [], [""]
        elif tag in self._BLOCK:
            self.buf.append("")

    def _img(self, a: dict) -> None:
        src = a.get("src", "").strip()
        if not src:
            return
        if self._role("skip") or self._role("chrome"):
            self._skip_count("page chrome")
            return
        alt = re.sub(r"\s+", " ", a.get("alt", "")).strip()
        ttl = (a.get("title") or "").strip()
        path = _resolve(src, self.base_dir)
        in_figure = bool(self.figures)
        why = None if in_figure else _decoration_reason(alt, src, path, a)
        if why == "icon-sized" or (why and _decoration_reason("a real description", src, path, a)):
            self._skip_count(why)
            return
        self._end_loose_caption()
        # in figure markup, alt text that is only the file's name is no caption (the system must
        # not see file names): the figure keeps its caption element, else it has none
        cap_alt = alt if not in_figure or _real_alt(alt, src) else ""
        im = DocImage(id=_unique_id(src, self.taken), path=path, caption=cap_alt or ttl, alt=alt,
                      caption_source="alt" if cap_alt else ("title" if ttl else "none"))
        self.images.append(im)
        self.pending.append((im, len(self.buf)))
        self.buf.append("")
        if in_figure:
            self.figures[-1].append(im)
            self.figure_markup.add(im.id)
        else:
            # without descriptive alt text it is a figure only if "Figure N: ..." text follows it.
            # An image wrapped in a link (a thumbnail linking to the full size) keeps its caption
            # after the link closes: "<a><img></a><br><i>Figure: ...</i>" (GRASS manual pages)
            depth = len(self.stack)
            while depth and self.stack[depth - 1][0] == "a":
                depth -= 1
            self.loose, self.loose_depth, self.loose_why = (im, len(self.buf)), depth, why

    def handle_endtag(self, tag):
        if tag in _VOID or not any(t == tag for t, _, _ in self.stack):
            return  # a stray end tag
        while self.stack:
            t, classes, role = self.stack.pop()
            self._end(t, role)
            if t == tag:
                break
        if self.loose_depth is not None and len(self.stack) < self.loose_depth:
            self._end_loose_caption()

    def _end(self, tag: str, role: str) -> None:
        if tag == "title":
            self.in_title = False
        elif re.fullmatch(r"h[1-6]", tag) and self.in_heading is not None:
            self.heading = re.sub(r"\s+", " ", "".join(self.heading_buf)).strip()
            self.level, self.in_heading = self.in_heading, None
        if role == "caption":
            cap = _figure_caption(re.sub(r"\s+", " ", "".join(self.caption_buf)).strip())
            for im in self.figures[-1] if self.figures else []:
                if cap and im.caption_source in ("none", "title", "alt"):
                    # the figure's own caption beats its alt text (often the same words, or a file name)
                    if im.caption_source != "alt" or not _real_alt(im.alt, im.path) or len(cap) >= len(im.alt):
                        im.caption, im.caption_source = cap, "figcaption"
        elif role == "figure":
            self.figures.pop()
        if tag in self._BLOCK:
            self.buf.append("")

    def _end_loose_caption(self) -> None:
        cap = _figure_caption(re.sub(r"\s+", " ", "".join(self.loose_buf)).strip())
        if self.loose is not None and cap:
            im = self.loose[0]
            im.caption, im.caption_source = cap, "figcaption"
        elif self.loose is not None and self.loose_why:
            im = self.loose[0]
            self.images.remove(im)
            self.pending = [(x, at) for x, at in self.pending if x is not im]
            self._skip_count(self.loose_why)
        self.loose, self.loose_depth, self.loose_buf, self.loose_why = None, None, [], None

    def handle_data(self, data):
        if self._role("skip") or self._role("chrome"):
            return
        if self.in_title:
            self.title_buf.append(data)
            return
        if self.in_heading is not None:
            self.heading_buf.append(data)
            return
        if self._role("caption"):
            self.caption_buf.append(data)  # a caption is not body text
            return
        if self.loose is not None and data.strip():
            # "Figure 3: ..." right after an image (old-style HTML figures): its caption, not body text
            # or the alt text shown again under the image ("<img alt='X'><br><i>X</i>"): its visible caption
            if self.loose_buf or _FIGURE_TEXT.match(data) or _repeats_alt(data, self.loose[0].alt):
                self.loose_buf.append(data)
                return
            self._end_loose_caption()
        self.buf[-1] += data


def parse_html(text: str, doc_id: str, base_dir: Path | None = None) -> Document:
    """Parse HTML into a :class:`Document`. Figures are what the markup says: images in
    ``<figure>`` (caption: ``figcaption``) or a DocBook/Sphinx/AsciiDoc figure block (caption: its
    title/caption element), and other ``<img>`` with descriptive alt text and a real size (at
    least 48 px a side, 96 the long one, from the attributes or the file). Navigation, admonition
    and inline icons are skipped; ``metadata["decorative_images"]`` counts them by reason."""
    p = _HTMLDoc(base_dir)
    p.feed(text)
    p.close()
    p._end_loose_caption()
    p._close()
    for im in p.images:
        _fill_caption(im)
    title = re.sub(r"\s+", " ", "".join(p.title_buf)).strip()
    title = title or next((s.heading for s in p.sections if s.level == 1 and s.heading), "") or doc_id
    meta = {"decorative_images": dict(p.decorative), "figure_markup": sorted(p.figure_markup)}
    return Document(id=doc_id, title=title, sections=p.sections, images=p.images, metadata=meta)


# ----------------------------------------------------------------------------- JSONL

def _jsonl_documents(path: Path, text: str, root: Path) -> DocumentSet:
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        src = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            skipped.append((src, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            skipped.append((src, "a row needs a 'text' string"))
            continue
        doc_id = str(row.get("id") or f"{path.stem}:{n}")
        if doc_id in seen:
            skipped.append((src, f"duplicate id {doc_id!r}"))
            continue
        seen.add(doc_id)
        lookup: dict[str, DocImage] = {}
        records: list[DocImage] = []
        bad = None
        for k, img in enumerate(row.get("images") or []):
            if not isinstance(img, dict) or not img.get("path"):
                bad = f"image {k} needs a 'path'"
                break
            cap = str(img.get("caption") or "").strip()
            rec = DocImage(id=str(img.get("id") or img["path"]), path=_resolve(str(img["path"]), path.parent),
                           caption=cap, caption_source="given" if cap else "none")
            records.append(rec)
            lookup[rec.id] = rec
            lookup.setdefault(str(img["path"]), rec)
        if bad:
            skipped.append((src, bad))
            continue
        doc = parse_markdown(row["text"], doc_id, base_dir=path.parent, title=row.get("title"), image_lookup=lookup)
        placed = {im.id.split("#")[0] for im in doc.images}
        taken = {im.id for im in doc.images}
        for rec in records:  # images the text does not mention: the document's, no section
            if rec.id not in placed:
                rec.id = _unique_id(rec.id, taken)
                _fill_caption(rec)
                doc.images.append(rec)
        doc.source = src
        doc.metadata = {k: v for k, v in row.items() if k not in ("id", "text", "images", "title")}
        docs.append(doc)
    return DocumentSet(docs, skipped)


# ----------------------------------------------------------------------------- files and folders

def read_document_text(path: Path) -> str:
    """A file's UTF-8 text (BOM accepted); unreadable or not UTF-8 is a DocumentError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DocumentError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DocumentError(f"{path}: not UTF-8 (byte {e.start}, line {line}); convert it to UTF-8") from None


def read_document_file(path: str | Path, root: str | Path | None = None, kind: str | None = None) -> DocumentSet:
    """Read one file (Markdown, HTML or JSONL, by suffix unless ``kind`` is given)."""
    path = Path(path)
    if not path.is_file():
        raise DocumentError(f"{path}: no such file")
    kind = kind or DOCUMENT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DocumentError(f"{path}: unknown document format (use {', '.join(sorted(DOCUMENT_SUFFIXES))})")
    root = Path(root) if root else path.parent
    text = read_document_text(path)
    try:
        doc_id = path.relative_to(root).as_posix()
    except ValueError:
        doc_id = path.name
    if kind == "jsonl":
        return _jsonl_documents(path, text, root)
    if kind == "markdown":
        doc = parse_markdown(text, doc_id, base_dir=path.parent)
    elif kind == "html":
        doc = parse_html(text, doc_id, base_dir=path.parent)
    else:
        raise DocumentError(f"unknown document kind {kind!r}")
    doc.source = str(path)
    return DocumentSet([doc])


def _drop_site_chrome(docs: list[Document]) -> None:
    """An HTML image outside figure markup that recurs on many pages of a folder (a logo, a
    banner) is page chrome, not a figure: dropped and counted as decoration."""
    html = [d for d in docs if "figure_markup" in d.metadata]
    if len(html) < 3:
        return
    pages: dict[str, int] = {}
    for d in html:
        for path in {im.path for im in d.images if im.id not in d.metadata["figure_markup"]}:
            pages[path] = pages.get(path, 0) + 1
    limit = max(2, CHROME_SHARE * len(html))
    chrome = {p for p, n in pages.items() if n > limit}
    for d in html:
        gone = [im for im in d.images if im.path in chrome and im.id not in d.metadata["figure_markup"]]
        if gone:
            d.images = [im for im in d.images if im not in gone]
            dec = d.metadata.setdefault("decorative_images", {})
            dec["repeated on many pages"] = dec.get("repeated on many pages", 0) + len(gone)


def read_documents(path: str | Path, kind: str | None = None, limit: int | None = None) -> DocumentSet:
    """Read a document file, or every document file under a folder (recursively, sorted; hidden
    files ignored). Files that cannot be read are skipped with the reason; no document at all is a
    :class:`DocumentError`."""
    path = Path(path)
    if not path.exists():
        raise DocumentError(f"{path}: no such file or folder")
    if path.is_file():
        out = read_document_file(path, kind=kind)
    else:
        out = DocumentSet([])
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        for f in files:
            try:
                got = read_document_file(f, root=path, kind=kind)
            except DocumentError as e:
                out.skipped.append((str(f), str(e).split(": ", 1)[-1]))
                continue
            out.documents.extend(got.documents)
            out.skipped.extend(got.skipped)
            if limit is not None and len(out.documents) >= limit:
                break
        _drop_site_chrome(out.documents)
    if limit is not None:
        out.documents = out.documents[:limit]
    if not out.documents:
        why = "; ".join(f"{s}: {r}" for s, r in out.skipped[:3])
        raise DocumentError(f"{path}: no readable documents (.md, .html, .jsonl){' — ' + why if why else ''}")
    return out
