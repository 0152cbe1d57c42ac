"""The three-stage ImageRef pipeline: answer, caption the candidate images, insert them.

1. **Answer** from retrieved text chunks. ``generator="extractive"`` (default, offline): the
   chunks most similar to the query, grouped by the section they come from, under those sections'
   headings. Any registry generator (``local``, ``openai``, ...) instead writes the answer from
   the numbered chunks, as Markdown with a title and sections.
2. **Captions** for every candidate image (the images of the documents the answer drew on):
   context-aware, i.e. the image's own caption (alt text, figcaption, JSONL caption) plus the text
   around it in its document, plus (``use_ocr``, off by default) the text written in it where the
   index read it (``ingest_documents(..., ocr=True)``: ``ocr_text``); an image with neither caption nor
   surrounding text is captioned by the ``captioner`` passed in (e.g. the mRAG-gim one) when
   given, else left out (reported in ``skipped``).
3. **Insertion**: one candidate position after each section; images chosen by
   :func:`~mmrag.tasks.imageref.insertion.assign_images` (optimal assignment with "Not Insert",
   at most one image per position, each image once, header image at position 1; ``capacity`` > 1
   lets a position take several, :func:`~mmrag.tasks.imageref.insertion.assign_slots`).

The output is the paper's format: Markdown whose images are ``![short caption](IMAGE_k)``, k
indexing :attr:`Composition.images`; :meth:`Composition.render` resolves them to files. Every
reference is checked before the composition is returned.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.corpus.documents import DocImage, Document, Section, parse_markdown
from mmrag.errors import MmragError
from mmrag.retrieval.exact import ExactIndex, top_k
from mmrag.tasks.imageref.chunks import Chunk, chunk_document
from mmrag.tasks.imageref.insertion import (
    DEFAULT_LEXICAL_WEIGHT,
    DEFAULT_POOL,
    DEFAULT_THRESHOLD,
    Relevance,
    assign_images,
    assign_slots,
    calibrated_scores,
    expected_occupied,
    default_text_embedder,
    mentions_figure,
    section_capacity,
)
from mmrag.tasks.imageref.render import InvalidReferenceError, invalid_references, render

__all__ = [
    "AnswerSection",
    "ComposeConfig",
    "ComposeError",
    "Composition",
    "PLACEMENTS",
    "ImageCandidate",
    "PositionChoice",
    "build_markdown",
    "candidate_text",
    "compose",
    "short_caption",
]

EXTRACTIVE = "extractive"  # the default generator (a registry name)
# Each placement rule with its parameters, as chosen by benchmarks/bench_imageref.py: "global" on
# d2l dev alone; "calibrated" and "cued" on the dev parts of d2l and the GRASS manual together.
# A ComposeConfig field left None takes its placement's value; count_factor 0 means no cap.
PLACEMENTS: dict[str, dict[str, Any]] = {
    "global": dict(threshold=DEFAULT_THRESHOLD, lexical_weight=DEFAULT_LEXICAL_WEIGHT, pool=DEFAULT_POOL,
                   lexical="tfidf", heading_weight=0.0, z_threshold=0.5, count_factor=1.2, empty_penalty=2.0,
                   mention_bonus=0.0, length_weight=0.0, capacity=1, capacity_rule="fixed", slot_penalty=0.0),
    "calibrated": dict(threshold=DEFAULT_THRESHOLD, lexical_weight=DEFAULT_LEXICAL_WEIGHT, pool=DEFAULT_POOL,
                       lexical="tfidf", heading_weight=0.0, z_threshold=0.5, count_factor=1.2, empty_penalty=2.0,
                       mention_bonus=0.0, length_weight=0.0, capacity=1, capacity_rule="fixed", slot_penalty=0.0),
    # calibrated + BM25 + the heading + a prior for sections that mention a figure
    "cued": dict(threshold=DEFAULT_THRESHOLD, lexical_weight=0.6, pool=DEFAULT_POOL, lexical="bm25",
                 heading_weight=0.15, z_threshold=1.25, count_factor=1.0, empty_penalty=1.0, mention_bonus=3.0,
                 length_weight=0.0, capacity=1, capacity_rule="fixed", slot_penalty=0.0),
}
# Figure-position recovery (mmrag eval imageref, evaluate_figure_positions) places with "cued";
# composed answers keep "global": the per-document rules standardise the answer's own matrix, and
# an answer of a section or two with two candidates (a 2x2 matrix) puts its best pair at about one
# standard deviation, under their thresholds, so nothing would be placed.
DEFAULT_PLACEMENT = "cued"
ANSWER_PLACEMENT = "global"
_PLACEMENT_FIELDS = tuple(PLACEMENTS["global"])
# Alt text is shown whole up to this length (the longest d2l figure caption is 36 words); only a
# caption longer than that is cut, at a clause boundary, with an ellipsis.
SHORT_CAPTION_WORDS = 60


class ComposeError(MmragError):
    """Composing an answer failed (no documents, empty query, generator failure)."""


@dataclass
class ComposeConfig:
    """Options of :func:`compose` (defaults chosen on the d2l dev chapters where they matter).

    ``top_chunks``: chunks retrieved for the answer; ``max_sections``: sections of an extractive
    answer; ``max_images``: candidate images given to the insertion stage; ``placement``: the
    insertion rule (:data:`PLACEMENTS`, see :func:`place_images`), whose parameters
    (``threshold``, ``lexical_weight``, ``pool``, ``lexical``, ``heading_weight``: relevance, see
    :mod:`.insertion`; ``z_threshold``, ``count_factor``, ``empty_penalty``, ``mention_bonus``, ``length_weight``;
    ``capacity``, ``capacity_rule``, ``slot_penalty``: how many images one position may take, see
    :func:`place_images`) default to the rule's own values when left None (:meth:`resolved`); ``header_image``:
    let position 1 take an image that suits the whole answer; ``use_context``: add the text around
    an image to its caption for matching; ``use_ocr``: add the first ``ocr_words`` words of the
    text read in an image (where the index has it) too; ``chunk_words``: chunk size; ``generator_options``:
    passed to a registry generator (e.g. ``base_url``, ``model``); ``max_tokens`` for it."""

    generator: str = EXTRACTIVE
    generator_options: dict[str, Any] = field(default_factory=dict)
    top_chunks: int = 8
    max_sections: int = 4
    max_images: int = 12
    header_image: bool = False  # off on d2l dev (no header figures there); the paper's rule for news
    # "global" (one fixed cosine threshold) for answers, see ANSWER_PLACEMENT; "cued" (chosen for
    # figure-position recovery on d2l + GRASS dev, better than the others on both) and
    # "calibrated" (its rule without the cues) for documents with their own figures
    placement: str = ANSWER_PLACEMENT
    threshold: float | None = None
    lexical_weight: float | None = None
    pool: float | None = None
    lexical: str | None = None
    heading_weight: float | None = None
    z_threshold: float | None = None
    count_factor: float | None = None
    empty_penalty: float | None = None
    mention_bonus: float | None = None
    length_weight: float | None = None
    capacity: int | None = None
    capacity_rule: str | None = None
    slot_penalty: float | None = None
    use_context: bool = True
    context_words: int = 40
    # off: on d2l figure placement the OCR text lowered dev F1 (benchmarks/bench_imageref_ocr.py)
    use_ocr: bool = False
    ocr_words: int = 10  # when on: the best of 10/20/40/80 words on d2l dev
    chunk_words: int = 120
    max_tokens: int = 512

    def resolved(self) -> "ComposeConfig":
        """A copy with every placement parameter left None set to its placement's value."""
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        preset = PLACEMENTS[self.placement]
        return replace(self, **{k: preset[k] for k in _PLACEMENT_FIELDS if getattr(self, k) is None})

    def relevance(self, embedder=None) -> Relevance:
        c = self.resolved()
        return Relevance(lexical_weight=c.lexical_weight, pool=c.pool, embedder=embedder, lexical=c.lexical,
                         heading_weight=c.heading_weight)


@dataclass
class ImageCandidate:
    """Candidate image ``key`` (``IMAGE_k``): where it comes from and the caption used to place it."""

    key: str
    id: str
    path: str
    caption: str
    doc_id: str = ""
    caption_source: str = "alt"
    matching_text: str = ""


@dataclass
class AnswerSection:
    heading: str
    level: int
    text: str


@dataclass
class PositionChoice:
    """Position ``index`` (1-based, after section ``index``): the image put there or None, and
    (where a position may take several, ``capacity`` > 1) the ``more`` images after it, best first.
    The image-position metric reads one image per position: ``image``."""

    index: int
    heading: str
    image: str | None
    relevance: float | None = None
    more: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        """Every image at this position, in the order the Markdown shows them."""
        return ([self.image] if self.image else []) + list(self.more)


@dataclass
class Composition:
    query: str
    title: str
    markdown: str
    sections: list[AnswerSection]
    images: list[ImageCandidate]
    positions: list[PositionChoice]
    sources: list[dict[str, Any]] = field(default_factory=list)
    generator: str = EXTRACTIVE
    skipped: list[dict[str, str]] = field(default_factory=list)

    def image_map(self) -> dict[str, ImageCandidate]:
        return {im.key: im for im in self.images}

    def inserted(self) -> dict[int, str]:
        """position index -> (first) image key, for the positions that got one."""
        return {p.index: p.image for p in self.positions if p.image}

    def placed(self) -> dict[int, list[ImageCandidate]]:
        """position index -> every image there (the first is :meth:`inserted`'s)."""
        by_key = self.image_map()
        return {p.index: [by_key[k] for k in p.images] for p in self.positions if p.image}

    def render(self, mode: str = "path", base_dir: str | Path | None = None) -> str:
        """The Markdown with ``IMAGE_k`` resolved (see :func:`mmrag.tasks.imageref.render.render`)."""
        return render(self.markdown, self.images, mode=mode, base_dir=base_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: query, title, markdown, images (key/id/path/caption...), positions, sources."""
        return asdict(self)


def short_caption(text: str, max_words: int = SHORT_CAPTION_WORDS) -> str:
    """A one-line caption safe inside ``![...]``: no brackets or newlines, otherwise whole.

    Only a caption longer than ``max_words`` words is cut, and the cut is marked with " ...":
    after its first sentence when that fits, else after the last clause boundary (``,`` ``;`` ``:``
    or a dash) within the limit when that keeps at least half of it, else at the word limit --
    never silently mid-phrase."""
    text = re.sub(r"[\[\]]", "", re.sub(r"\s+", " ", text)).strip()
    words = text.split()
    if len(words) <= max_words:
        return text.rstrip(".") or "image"
    first = re.match(r"(.+?[.!?])(\s|$)", text)
    if first and 3 <= len(first.group(1).split()) <= max_words:
        return first.group(1).rstrip(".") + " ..."
    cut = max_words
    for i in range(max_words, (max_words + 1) // 2 - 1, -1):
        if re.search(r"[,;:]$", words[i - 1]) or words[i] in ("-", "--", "\u2013", "\u2014"):
            cut = i
            break
    return " ".join(words[:cut]).rstrip(",;:") + " ..."


def build_markdown(title: str, sections: Sequence[AnswerSection],
                   placed: dict[int, ImageCandidate | Sequence[ImageCandidate]]) -> str:
    """Title, then each section; after section i (0-based) the image(s) placed at position i+1,
    one after another."""
    parts = [f"# {title}".rstrip()] if title else []
    for i, s in enumerate(sections):
        block = []
        if s.heading and not (s.level == 1 and s.heading == title):
            block.append(f"{'#' * max(2, s.level)} {s.heading}")
        if s.text.strip():
            block.append(s.text.strip())
        if i + 1 in placed:
            here = placed[i + 1]
            for im in ([here] if isinstance(here, ImageCandidate) else here):
                block.append(f"![{short_caption(im.caption)}]({im.key})")
        if block:
            parts.append("\n\n".join(block))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- stage 1

def _rank_chunks(query: str, chunks: Sequence[Chunk], embedder, k: int) -> list[tuple[Chunk, float]]:
    if not chunks:
        return []
    texts = [f"{c.heading}: {c.text}" if c.heading else c.text for c in chunks]
    index = ExactIndex(embedder.embed(texts))
    sims = index.scores(embedder.embed([query])[0])
    return [(chunks[i], float(sims[i])) for i in top_k(sims, k)]


def _evidence_answer(query: str, ranked: list[tuple[Chunk, float]], max_sections: int, gen) -> tuple[str, list[AnswerSection]]:
    """For generators that choose among retrieved texts (``reads_evidence``): the ranked chunks
    grouped by their document section (best section first, chunks in document order) are the
    evidence; the sections the generator picks (``raw["indices"]`` or ``raw["index"]``) are the answer."""
    from mmrag.generators import GenerationRequest

    groups: dict[tuple[str, int], list[tuple[Chunk, float]]] = {}
    for c, s in ranked:
        groups.setdefault((c.doc_id, c.section), []).append((c, s))
    candidates: list[AnswerSection] = []
    scores: list[float] = []
    for (_, _), items in list(groups.items())[:max_sections]:
        scores.append(max(s for _, s in items))
        items.sort(key=lambda cs: cs[0].id)  # document order inside a section
        heading = items[0][0].heading or "Details"
        candidates.append(AnswerSection(heading, 2, "\n\n".join(c.text for c, _ in items)))
    res = gen.generate(GenerationRequest(evidence=[s.text for s in candidates], evidence_scores=scores))
    raw = res.raw if isinstance(res.raw, dict) else {}
    picked = raw.get("indices", [raw["index"]] if "index" in raw else None)
    if picked is None:
        raise ComposeError(f"generator {gen.name!r} did not say which passages it chose")
    sections = [candidates[i] for i in picked]
    title = query.strip().rstrip("?.! ")
    return title[:1].upper() + title[1:], sections


_ANSWER_SYSTEM = ("You answer questions from the given passages only. Write Markdown: a title line "
                  "starting with '# ', then two to four sections, each starting with '## ' and a short "
                  "heading, followed by a paragraph. Do not include images or links.")


def _generated_answer(query: str, ranked: list[tuple[Chunk, float]], config: ComposeConfig, gen) -> tuple[str, list[AnswerSection]]:
    from mmrag.generators import GenerationRequest

    passages = "\n\n".join(f"[{i}] ({c.heading}) {c.text}" for i, (c, _) in enumerate(ranked, 1))
    req = GenerationRequest.from_prompt(f"Passages:\n{passages}\n\nQuestion: {query}\n\nAnswer in Markdown:",
                                        system=_ANSWER_SYSTEM, max_tokens=config.max_tokens)
    text = gen.generate(req).text
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # the generator must not invent image references
    text = re.sub(r"IMAGE_\d+", "", text)
    text = re.sub(r"^```(?:markdown)?\s*|```\s*$", "", text.strip())
    doc = parse_markdown(text, "answer")
    title = next((s.heading for s in doc.sections if s.level == 1 and s.heading), "") or query.strip().rstrip("?")
    sections = [AnswerSection(s.heading, s.level, s.text) for s in doc.sections if s.text.strip() or s.level > 1]
    if not sections:
        raise ComposeError(f"generator {config.generator!r} returned no usable text")
    return title, sections


# ----------------------------------------------------------------------------- stage 2

def candidate_text(im: DocImage, config: ComposeConfig, ocr_text: str = "") -> str:
    """The text of a candidate image that is matched against sections: its caption, the text
    around it (``use_context``) and the words written in it (``use_ocr``, ``ocr_text``)."""
    text = im.caption.strip()
    if config.use_context and im.context.strip() and im.caption_source != "context":
        text = f"{text} {' '.join(im.context.split()[: config.context_words])}".strip()
    if config.use_ocr and ocr_text.strip():
        text = f"{text} {' '.join(ocr_text.split()[: config.ocr_words])}".strip()
    return text


def _candidates(docs: Sequence[Document], used_docs: Sequence[str], query_vec: np.ndarray, embedder,
                config: ComposeConfig, captioner=None,
                ocr_texts: dict[tuple[str, str], str] | None = None) -> tuple[list[ImageCandidate], list[dict[str, str]]]:
    by_id = {d.id: d for d in docs}
    pool: list[tuple[str, DocImage]] = []
    skipped: list[dict[str, str]] = []
    for doc_id in used_docs:
        for im in by_id[doc_id].images:
            if not im.is_remote and not im.exists:
                skipped.append({"image": im.path, "reason": "file not found"})
                continue
            if not im.caption.strip():
                if captioner is None:
                    skipped.append({"image": im.path, "reason": "no caption or surrounding text, and no captioner"})
                    continue
                try:
                    res = captioner.caption_batch([im.path])[0]
                except MmragError as e:
                    skipped.append({"image": im.path, "reason": f"captioner failed: {e}"})
                    continue
                if getattr(res, "error", None) or not res.caption:
                    skipped.append({"image": im.path, "reason": f"captioner failed: {res.error}"})
                    continue
                im = DocImage(**{**asdict(im), "caption": res.caption, "caption_source": "captioner"})
            pool.append((doc_id, im))
    if not pool:
        return [], skipped
    texts = [candidate_text(im, config, (ocr_texts or {}).get((doc_id, im.id), "")) for doc_id, im in pool]
    if len(pool) > config.max_images:
        sims = ExactIndex(embedder.embed(texts)).scores(query_vec)
        keep = sorted(int(i) for i in top_k(sims, config.max_images))
        pool, texts = [pool[i] for i in keep], [texts[i] for i in keep]
    out = [ImageCandidate(key=f"IMAGE_{k}", id=im.id, path=im.path, caption=im.caption, doc_id=doc_id,
                          caption_source=im.caption_source, matching_text=t)
           for k, ((doc_id, im), t) in enumerate(zip(pool, texts), 1)]
    return out, skipped


# ----------------------------------------------------------------------------- stage 3

def relevance_matrix(title: str, sections: Sequence[AnswerSection], images: Sequence[ImageCandidate],
                     relevance: Relevance, header_image: bool = False,
                     chunk_words: int = 120) -> tuple[np.ndarray, np.ndarray | None]:
    """``R[position, image]`` for the sections' chunks (heading-prefixed) against the images'
    matching texts, and (``header_image``) each image's relevance to the whole answer, else None."""
    doc = Document("answer", title, [Section(s.heading, s.level, s.text) for s in sections])
    chunks = chunk_document(doc, chunk_words)
    sec_chunks = []
    for i, s in enumerate(sections):
        pieces = [c.text for c in chunks if c.section == i] or [s.heading or title]
        sec_chunks.append([f"{s.heading}: {p}" if s.heading else p for p in pieces])
    captions = [im.matching_text or im.caption for im in images]
    headings = [s.heading for s in sections]
    R = relevance.matrix(sec_chunks, captions, headings=headings) if images else np.zeros((len(sections), 0))
    header = None
    if header_image and images:
        whole = f"{title}: " + " ".join(s.text for s in sections)
        header = relevance.matrix([[" ".join(whole.split()[:chunk_words])]], captions, headings=[title])[0]
    return R, header


def place_images(title: str, sections: Sequence[AnswerSection], images: Sequence[ImageCandidate],
                 relevance: Relevance, threshold: float | None = None, header_image: bool = False,
                 chunk_words: int = 120, config: ComposeConfig | None = None) -> list[PositionChoice]:
    """Positions (one after each section) and the image chosen for each.

    ``config.placement`` (parameters from :meth:`ComposeConfig.resolved`; ``relevance`` should be
    :meth:`ComposeConfig.relevance`):

    * ``"calibrated"``: the decision to insert is made per document: relevance is standardised on
      the document's own matrix (:func:`calibrated_scores`) and compared with ``z_threshold``;
      sections with no text of their own (heading only) lose ``empty_penalty`` (standard
      deviations), since a heading alone matches many captions; and at most ``count_factor`` ×
      the expected number of occupied positions (:func:`expected_occupied`, from the document's
      own figure density; 0: no cap) get an image.
    * ``"cued"``: the same, and a section whose own text mentions a figure
      (:func:`mentions_figure`) gains ``mention_bonus`` standard deviations for every image, and
      every section ``length_weight`` × its standardised log word count (figures sit in sections
      that explain something, not in stubs such as "See also" or "Keywords").
    * ``"global"`` (or no config): a fixed ``threshold`` on the raw relevance, the first rule.

    Any rule: ``capacity`` > 1 lets a position take up to that many images
    (:func:`~mmrag.tasks.imageref.insertion.section_capacity` by ``capacity_rule``, from the
    section's own text), the k-th of them (k from 0) counting ``k × slot_penalty`` less, still one
    exact assignment, each image once (:func:`~mmrag.tasks.imageref.insertion.assign_slots`); the
    count cap then limits the positions occupied. Capacity 1 (every preset) is the one-image rule.
    """
    if not sections:
        return []
    cfg = (config or ComposeConfig(placement="global", threshold=threshold)).resolved()
    if threshold is None:
        threshold = cfg.threshold
    R, header = relevance_matrix(title, sections, images, relevance, header_image, chunk_words)
    if cfg.placement in ("calibrated", "cued") and images:
        Z = calibrated_scores(R if header is None else np.vstack([R, header[None, :]]))
        if header is not None:
            Z, header = Z[:-1], Z[-1]
        empty = np.array([not s.text.strip() for s in sections])
        Z[empty] -= cfg.empty_penalty
        if cfg.placement == "cued" and cfg.mention_bonus:
            Z[np.array([mentions_figure(s.text) for s in sections])] += cfg.mention_bonus
        if cfg.placement == "cued" and cfg.length_weight:
            Z += cfg.length_weight * calibrated_scores(np.log1p([len(s.text.split()) for s in sections]))[:, None]
        cap = None
        if cfg.count_factor:
            cap = int(round(cfg.count_factor * expected_occupied(len(sections), len(images))))
        M, limit = Z, cfg.z_threshold
    else:
        M, limit, cap = R, threshold, None
    if cfg.capacity == 1:
        choice = [[] if c is None else [c] for c in assign_images(M, limit, header=header, max_inserted=cap)]
    else:
        slots = section_capacity([s.text for s in sections], cfg.capacity, cfg.capacity_rule)
        choice = assign_slots(M, limit, slots, cfg.slot_penalty, header=header, max_occupied=cap)
    out = []
    for p, (s, cs) in enumerate(zip(sections, choice)):
        out.append(PositionChoice(p + 1, s.heading, images[cs[0]].key if cs else None,
                                  float(R[p, cs[0]]) if cs else None, [images[c].key for c in cs[1:]]))
    return out


def compose(query: str, documents: Sequence[Document] | None = None, index: str | Path | None = None,
            generator: str | None = None, config: ComposeConfig | None = None,
            text_embedder=None, captioner=None) -> Composition:
    """Answer ``query`` from ``documents`` (see :func:`read_documents`) or a document index built by
    :func:`mmrag.tasks.imageref.ingest_documents` (``index``), with images in place.

    ``generator`` overrides ``config.generator`` ("extractive" or a registry name)."""
    config = config or ComposeConfig()
    if generator:
        config = ComposeConfig(**{**asdict(config), "generator": generator})
    if not query or not query.strip():
        raise ComposeError("empty query")
    if (documents is None) == (index is None):
        raise ComposeError("give documents or an index (one of them)")
    embedder = text_embedder or default_text_embedder()
    if index is not None:
        from mmrag.tasks.imageref.ingest import DocumentIndex

        with DocumentIndex.open(index) as di:
            ranked, docs = di.retrieve(query, config.top_chunks)
            ocr_texts = di.ocr_texts(docs) if config.use_ocr else {}
    else:
        docs = list(documents)
        ocr_texts = {}
        if not docs:
            raise ComposeError("no documents to answer from")
        chunks = [c for d in docs for c in chunk_document(d, config.chunk_words, sentences=True)]
        ranked = _rank_chunks(query, chunks, embedder, config.top_chunks)
    if not ranked:
        raise ComposeError("the documents hold no text to answer from")
    from mmrag.generators import create_generator

    gen = create_generator(config.generator, **config.generator_options)
    if gen.reads_evidence:
        title, sections = _evidence_answer(query, ranked, config.max_sections, gen)
    else:
        title, sections = _generated_answer(query, ranked, config, gen)
    used_docs = list(dict.fromkeys(c.doc_id for c, _ in ranked))
    qv = embedder.embed([query])[0]
    images, skipped = _candidates(docs, used_docs, qv, embedder, config, captioner, ocr_texts)
    positions = place_images(title, sections, images, config.relevance(embedder), None, config.header_image,
                             config.chunk_words, config)
    by_key = {im.key: im for im in images}
    placed = {p.index: [by_key[k] for k in p.images] for p in positions if p.image}
    markdown = build_markdown(title, sections, placed)
    bad = invalid_references(markdown, len(images))
    if bad:  # cannot happen by construction; never hand out a broken reference
        raise InvalidReferenceError(f"internal error: invalid references {bad}")
    sources = [{"chunk": c.id, "doc_id": c.doc_id, "heading": c.heading, "score": round(s, 4)} for c, s in ranked]
    return Composition(query=query, title=title, markdown=markdown, sections=list(sections), images=images,
                       positions=positions, sources=sources, generator=config.generator, skipped=skipped)

