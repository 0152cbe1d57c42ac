"""Documents into an index: text chunks and images, for ``compose --index``.

Layout added to an ordinary index directory (``mmrag.index.collection``)::

    INDEX_DIR/chunks/           VectorStore: one row per text chunk (id = chunk id), the index's
                                encoder's text vectors; metadata doc_id, section, heading, text
    INDEX_DIR/documents.jsonl   every document's title, sections and images (rewritten atomically)
    INDEX_DIR/images/           the documents' raster images, like any indexed image (id
                                "<doc id>::<image id>", captions = the image's caption, metadata
                                doc_id), so `mmrag search` finds them (SVGs rasterised, see
                                mmrag.corpus.images); images the encoder cannot
                                read (missing, corrupt) are listed in skipped.jsonl and still kept in
                                documents.jsonl for composing.

Images without a caption or surrounding text get one from the mRAG-gim captioner when one is
given. With ``ocr=True`` the images' text is read at ingest (the ``ocr`` enricher, as ``mmrag
index --ocr``) and compose with ``use_ocr`` adds it to a candidate's matching text. Re-ingesting a document
replaces its chunks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.corpus.documents import DocImage, Document, Section
from mmrag.errors import ImageError, IndexError_, MmragError
from mmrag.tasks.imageref.chunks import Chunk, chunk_document

__all__ = ["DOCUMENTS_FILE", "CHUNK_STORE", "DocumentIndex", "ingest_documents"]

DOCUMENTS_FILE = "documents.jsonl"
CHUNK_STORE = "chunks"


def _doc_from_dict(d: dict[str, Any]) -> Document:
    return Document(
        id=d["id"], title=d["title"], sections=[Section(**s) for s in d["sections"]],
        images=[DocImage(**im) for im in d["images"]], source=d.get("source", ""), metadata=d.get("metadata") or {},
    )


def _load_documents(root: Path) -> dict[str, Document]:
    p = root / DOCUMENTS_FILE
    if not p.exists():
        return {}
    out: dict[str, Document] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = _doc_from_dict(json.loads(line))
            out[d.id] = d
    return out


def _save_documents(root: Path, docs: dict[str, Document]) -> None:
    tmp = root / (DOCUMENTS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs.values():
            f.write(json.dumps(d.to_dict(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / DOCUMENTS_FILE)


def ingest_documents(documents: Sequence[Document], index_dir: str | Path, encoder, chunk_words: int = 120,
                     index_images: bool = True, captioner=None, progress: bool = False,
                     ocr: bool = False) -> dict[str, Any]:
    """Add ``documents`` to the index at ``index_dir`` (created if needed) with ``encoder`` (for an
    existing index: the one it was built with). Returns counts."""
    from mmrag import __version__
    from mmrag.corpus.items import Corpus, CorpusItem
    from mmrag.index.collection import Collection, IndexManifest
    from mmrag.embedding import IndexConfig, build_index

    if not documents:
        raise MmragError("no documents to ingest")
    if encoder is None:
        raise MmragError("ingest_documents needs the encoder (for an existing index, the one it was built with)")
    root = Path(index_dir)
    n_captioned = 0
    if captioner is not None:
        for d in documents:
            for im in d.images:
                if not im.caption.strip() and im.exists:
                    try:
                        res = captioner.caption_batch([im.path])[0]
                    except (MmragError, ImageError):
                        continue
                    if not getattr(res, "error", None) and res.caption:
                        im.caption, im.caption_source = res.caption, "captioner"
                        n_captioned += 1
    report: dict[str, Any] = {"documents": len(documents), "captioned": n_captioned}
    items = [CorpusItem(id=f"{d.id}::{im.id}", path=Path(im.path), captions=[im.caption] if im.caption else [],
                        metadata={"doc_id": d.id, "section": im.section})
             for d in documents for im in d.images if im.exists]
    if index_images and items:
        sources = [Path(d.source).parent for d in documents if d.source and Path(d.source).exists()]
        corpus_root = Path(os.path.commonpath(sources)) if sources else root
        rep = build_index(Corpus("documents", corpus_root, items), root, encoder,
                          IndexConfig(progress=progress, enrichers=("ocr",) if ocr else ()))
        report["images_added"], report["images_skipped"] = rep.added, len(rep.skipped)
    name, options = encoder.spec()
    col = Collection.create_or_open(root, IndexManifest(encoder=name, encoder_options=options, dim=encoder.dim,
                                                        mmrag_version=__version__))
    try:
        store = col.store(CHUNK_STORE)
        known = _load_documents(root)
        chunks: list[Chunk] = []
        for d in documents:
            if d.id in known:  # replace the document's old chunks
                old = [i for i in store.ids() if i.startswith(d.id + "#s")]
                if old:
                    store.delete(old)
            chunks.extend(chunk_document(d, chunk_words, sentences=True))
            known[d.id] = d
        if chunks:
            vecs = encoder.embed_texts([f"{c.heading}: {c.text}" if c.heading else c.text for c in chunks],
                                       progress=progress)
            store.add([c.id for c in chunks], vecs, [asdict(c) for c in chunks])
        _save_documents(root, known)
        col.save()
        report["chunks_added"] = len(chunks)
        report["total_chunks"] = store.count()
    finally:
        col.close()
    return report


class DocumentIndex:
    """Chunk retrieval over an index made by :func:`ingest_documents`."""

    def __init__(self, index_dir: str | Path, encoder=None):
        from mmrag.retrieval import Searcher

        self.root = Path(index_dir)
        self.searcher = Searcher(self.root, encoder=encoder)
        if not self.searcher.has_store(CHUNK_STORE) or not (self.root / DOCUMENTS_FILE).exists():
            self.searcher.close()
            raise IndexError_(f"{self.root} holds no documents; add them with `mmrag compose --docs DIR --ingest {self.root}` "
                              "or ingest_documents()")
        self.encoder = self.searcher.encoder
        self.documents = _load_documents(self.root)

    @classmethod
    def open(cls, index_dir: str | Path, encoder=None) -> "DocumentIndex":
        return cls(index_dir, encoder)

    def retrieve(self, query: str, k: int = 8) -> tuple[list[tuple[Chunk, float]], list[Document]]:
        q = np.asarray(self.encoder.embed_texts([query]), np.float32)
        hits = self.searcher.search_vectors(q, k=k, target=CHUNK_STORE)[0]
        ranked = [(Chunk(**{f: h.metadata[f] for f in ("id", "doc_id", "section", "heading", "text")}), float(h.score))
                  for h in hits]
        docs = [self.documents[d] for d in dict.fromkeys(c.doc_id for c, _ in ranked) if d in self.documents]
        return ranked, docs

    def ocr_texts(self, docs: Sequence[Document]) -> dict[tuple[str, str], str]:
        """(doc id, image id) -> the text OCR read in that image, for the images that have it."""
        keys = [(d.id, im.id) for d in docs for im in d.images]
        metas = self.searcher.metadata([f"{d}::{i}" for d, i in keys])
        return {k: m["ocr_text"] for k, m in zip(keys, metas)
                if m and isinstance(m.get("ocr_text"), str) and m["ocr_text"].strip()}

    def close(self) -> None:
        self.searcher.close()

    def __enter__(self) -> "DocumentIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
