"""Figure-position recovery: put a document's figures back where they belong.

For every document with images: the figures are removed; the system gets the document's sections
(title, headings, text without the figures, their labels or their surrounding text) and the
figures with their captions only; it places them with the insertion stage (one position after
each section). Gold: the section each figure came from, grade 3, every section a labelled
position (empty where no figure was). Scored with the ImageRef-VL metrics
(:mod:`mmrag.eval.image_position`); ``valid_refs`` is the share of ``IMAGE_k`` references in the
produced Markdown that name a candidate image (each at most once).

Figures are given even where the file is absent (a few d2l SVGs, remote badges): placement uses
captions only, and the metric does not open files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from mmrag.corpus.documents import Document
from mmrag.eval.image_position import evaluate_positions, sample_metrics
from mmrag.tasks.imageref.compose import (
    DEFAULT_PLACEMENT,
    PLACEMENTS,
    AnswerSection,
    ComposeConfig,
    ImageCandidate,
    build_markdown,
    place_images,
)
from mmrag.tasks.imageref.insertion import Relevance, default_text_embedder
from mmrag.tasks.imageref.render import find_references, invalid_references

__all__ = ["FigureTask", "dev_test_split", "evaluate_figure_positions", "figure_tasks"]


@dataclass
class FigureTask:
    doc_id: str
    title: str
    sections: list[AnswerSection]
    images: list[ImageCandidate]
    labels: dict[int, dict[str, list[str]]]  # position (1-based) -> {"3": [IMAGE keys], "2": [], "1": []}
    n_excluded: int = 0  # figures left out: caption taken from their own surrounding text


def figure_tasks(docs: Sequence[Document], excluded: dict[str, int] | None = None) -> list[FigureTask]:
    """One task per document with at least one placed image.

    A figure whose caption was taken from its own surrounding text (``caption_source ==
    "context"``: no alt text, no figure caption) is left out: the system must not see the text
    around a figure, and that caption is a sentence of it. ``excluded`` (if given) counts them
    under ``"context_caption"``.

    The candidates are numbered (``IMAGE_k``) in an order fixed by a hash of the document's and
    the image's ids, not in document order: IMAGE_1 being the first figure would tell a system
    where the figures go (the first one near the top), which the benchmark does not give it."""
    out = []
    for d in docs:
        leaked = [im for im in d.images if im.section is not None and im.caption_source == "context"]
        if excluded is not None and leaked:
            excluded["context_caption"] = excluded.get("context_caption", 0) + len(leaked)
        placed = [im for im in d.images if im.section is not None and im.caption.strip()
                  and im.caption_source != "context"]
        placed.sort(key=lambda im: _candidate_order(d.id, im.id))
        if not placed:
            if leaked:  # nothing to score, but the exclusion is reported
                out.append(FigureTask(d.id, d.title, [], [], {}, len(leaked)))
            continue
        images = [ImageCandidate(key=f"IMAGE_{k}", id=im.id, path=im.path, caption=im.caption, doc_id=d.id,
                                 caption_source=im.caption_source, matching_text=im.caption)
                  for k, im in enumerate(placed, 1)]
        sections = [AnswerSection(s.heading, s.level, s.text) for s in d.sections]
        labels = {p + 1: {"3": [images[k].key for k, im in enumerate(placed) if im.section == p], "2": [], "1": []}
                  for p in range(len(sections))}
        out.append(FigureTask(d.id, d.title, sections, images, labels, len(leaked)))
    return out


def _candidate_order(doc_id: str, image_id: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{image_id}".encode("utf-8")).hexdigest()


def dev_test_split(doc_id: str) -> str:
    """A stable split of documents by a hash of their id: about half "dev", half "test"."""
    return "dev" if int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest(), 16) % 2 == 0 else "test"


def evaluate_figure_positions(docs: Sequence[Document] | Sequence[FigureTask], config: ComposeConfig | None = None,
                              embedder=None, progress: bool = False, keep_outputs: bool = False,
                              relevance: Relevance | None = None) -> dict[str, Any]:
    """Place every document's figures and score them. Returns ``{"n_docs", "n_images",
    "R_lenient", "R_strict", "P", "F1", "score", "valid_refs", "config", "per_doc"?, "figures"}``
    (``figures``: every placed image counted, several at one position too: placed, right, R, P,
    F1; not an ImageRef-VL metric, which reads one image per position).
    ``relevance``: instead of ``config.relevance(embedder)`` (e.g. one that memoises, benchmarks)."""
    config = (config or ComposeConfig(placement=DEFAULT_PLACEMENT)).resolved()
    tasks = list(docs)
    if tasks and isinstance(tasks[0], Document):
        tasks = figure_tasks(tasks)  # type: ignore[arg-type]
    n_excluded = sum(t.n_excluded for t in tasks)
    tasks = [t for t in tasks if t.images]
    if not tasks:
        raise ValueError("no documents with images to evaluate")
    rel = relevance or config.relevance(embedder or default_text_embedder())
    samples, per_doc = [], []
    n_refs = n_valid = n_all_placed = n_all_right = 0
    it = tasks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tasks, desc="placing figures", unit="doc", leave=False)
    for t in it:
        positions = place_images(t.title, t.sections, t.images, rel, config.threshold, config.header_image,
                                 config.chunk_words, config)
        by_key = {im.key: im for im in t.images}
        placed = {p.index: [by_key[k] for k in p.images] for p in positions if p.image}
        markdown = build_markdown(t.title, t.sections, placed)
        refs = [k for _, k in find_references(markdown)]
        bad = invalid_references(markdown, len(t.images))
        n_refs += len(refs)
        n_valid += len(refs) - len(bad) - (len(refs) - len(set(refs)))
        # the metric reads one image per position (a later prediction at a position replaces an
        # earlier one in the reference's load_result): the position's first, most relevant image
        results = {p.index: p.image for p in positions if p.image}
        samples.append((t.labels, results))
        for p in positions:  # every placed image, the figure-level counts the metric cannot see
            n_all_placed += len(p.images)
            n_all_right += sum(k in t.labels[p.index]["3"] for k in p.images)
        if keep_outputs:
            per_doc.append({"doc_id": t.doc_id, "n_images": len(t.images), **sample_metrics(t.labels, results),
                            "placed": {str(k): v for k, v in results.items()}, "markdown": markdown})
    res = evaluate_positions(samples)
    out: dict[str, Any] = {
        "n_docs": len(tasks),
        "n_images": sum(len(t.images) for t in tasks),
        "n_positions": sum(len(t.sections) for t in tasks),
        **{k: res[k] for k in ("R_lenient", "R_strict", "P", "F1", "score")},
        "valid_refs": 1.0 if n_refs == 0 else n_valid / n_refs,
        "n_references": n_refs,
        # figures not scored: their caption is a sentence of their own surrounding text (a leak)
        "n_excluded_context_caption": n_excluded,
        "config": {"placement": config.placement, **{k: getattr(config, k) for k in PLACEMENTS[config.placement]},
                   "header_image": config.header_image, "chunk_words": config.chunk_words},
    }
    if keep_outputs:
        out["per_doc"] = per_doc
    out["n_placed"] = sum(len(r) for _, r in samples)  # positions given an image
    n_fig = out["n_images"]
    fr = n_all_right / max(n_fig, 1)
    fp = n_all_right / n_all_placed if n_all_placed else 1.0
    # figure level (not an ImageRef-VL metric): every figure counts, several at one position too
    out["figures"] = {"placed": n_all_placed, "right": n_all_right, "R": fr, "P": fp,
                      "F1": 0.0 if fr + fp == 0 else 2 * fr * fp / (fr + fp)}
    out["n_positions_with_figure"] = sum(sum(1 for v in lab.values() if v["3"]) for lab, _ in samples)
    return out
