"""Contextual image referencing (ImageRef-VL, 2025): answers with the right images in place.

Python API::

    from mmrag.tasks.imageref import read_documents, compose, render

    docs = read_documents("docs/")                     # Markdown, HTML or JSONL files (or one file)
    c = compose("how does attention pooling work?", documents=docs.documents)
    c.markdown      # "# Title\\n\\n## Section\\n\\ntext\\n\\n![short caption](IMAGE_2)\\n..."
    c.images        # [ImageCandidate(key="IMAGE_1", id, path, caption, doc_id, caption_source, ...)]
    c.positions     # [PositionChoice(index=1, heading, image="IMAGE_2" | None, relevance, more=[])]
    c.to_dict()     # JSON-friendly (the HTTP service returns this)
    c.render()      # Markdown with IMAGE_k resolved to files; render(markdown, images, mode="data"|"html")

    ingest_documents(docs.documents, "idx/", encoder)  # text chunks + images into an index
    compose("...", index="idx/")                       # answer from the index instead

    compose(..., generator="local")                    # or "openai" with
    compose(..., config=ComposeConfig(generator="openai", generator_options={"base_url": ..., "model": ...}))

Stages (:mod:`.compose`): 1. answer from retrieved chunks (``extractive`` default, offline; any
generator of :data:`mmrag.generators.GENERATORS`); 2. context-aware captions of candidate images;
3. insertion as an optimal assignment (:mod:`.insertion`). Evaluation: figure-position recovery
(:func:`evaluate_figure_positions`) scored by :mod:`mmrag.eval.image_position`; LLM-as-judge text
score (:func:`judge_answer`). CLI: ``mmrag compose``, ``mmrag eval imageref``, ``mmrag eval judge``.

The document readers (Markdown, HTML, JSONL) live in :mod:`mmrag.corpus.documents` and are
re-exported here; chunking for retrieval is :mod:`.chunks`.
"""

from mmrag.corpus.documents import (
    DocImage,
    Document,
    DocumentError,
    DocumentSet,
    Section,
    parse_html,
    parse_markdown,
    read_documents,
)
from mmrag.tasks.imageref.chunks import Chunk, chunk_document
from mmrag.tasks.imageref.compose import (
    AnswerSection,
    ComposeConfig,
    ComposeError,
    Composition,
    ImageCandidate,
    PositionChoice,
    build_markdown,
    candidate_text,
    compose,
    place_images,
    short_caption,
)
from mmrag.tasks.imageref.evaluate import dev_test_split, evaluate_figure_positions, figure_tasks
from mmrag.tasks.imageref.insertion import Relevance, assign_images
from mmrag.tasks.imageref.render import (
    InvalidReferenceError,
    find_references,
    invalid_references,
    render,
    strip_image_markup,
)

__all__ = [
    "AnswerSection",
    "Chunk",
    "ComposeConfig",
    "ComposeError",
    "Composition",
    "DocImage",
    "Document",
    "DocumentError",
    "DocumentSet",
    "ImageCandidate",
    "InvalidReferenceError",
    "PositionChoice",
    "Relevance",
    "Section",
    "assign_images",
    "build_markdown",
    "candidate_text",
    "chunk_document",
    "compose",
    "dev_test_split",
    "evaluate_figure_positions",
    "figure_tasks",
    "find_references",
    "ingest_documents",
    "invalid_references",
    "judge_answer",
    "parse_html",
    "parse_markdown",
    "place_images",
    "read_documents",
    "render",
    "short_caption",
    "strip_image_markup",
]


def __getattr__(name):  # the index and judge parts load their dependencies only when used
    if name == "ingest_documents":
        from mmrag.tasks.imageref.ingest import ingest_documents

        return ingest_documents
    if name == "judge_answer":
        from mmrag.tasks.imageref.judge import judge_answer

        return judge_answer
    raise AttributeError(name)
