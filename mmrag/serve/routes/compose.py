"""``POST /api/compose``: answer from the documents ingested into the served index
(:mod:`mmrag.tasks.imageref`, ``mmrag compose --ingest``), with their images in place; and
``GET /api/compose/images/{token}`` for the document images a composition references."""

from __future__ import annotations

import asyncio
import mimetypes
import re
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from mmrag.serve.app import ServeState
from mmrag.serve.schemas import image_links
from mmrag.serve.service import BadRequestError, NotFoundError, UnavailableError

__all__ = ["compose_router", "is_document_index"]



class ComposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=2000, description="The question to answer with images.")
    generator: Optional[str] = Field(None, description="extractive (default, offline) or a generator name.")


def is_document_index(root) -> bool:
    from mmrag.tasks.imageref.ingest import CHUNK_STORE, DOCUMENTS_FILE

    return (root / CHUNK_STORE).exists() and (root / DOCUMENTS_FILE).exists()


def compose_router(state: ServeState) -> APIRouter:
    from mmrag.tasks.imageref import ComposeConfig, ComposeError, compose
    from mmrag.tasks.imageref.ingest import DocumentIndex

    router = APIRouter(prefix="/api", tags=["compose"])
    files: OrderedDict[str, str] = OrderedDict()  # token -> a document image's file (server-side)
    files_lock = threading.Lock()

    def documents():
        """The index's documents, read once (``compose`` then answers from them; its text
        embedder caches chunk vectors on disk, so only the first call embeds them)."""
        def load():
            if not is_document_index(state.service.index_dir):
                raise UnavailableError(f"{state.service.index_dir.name} holds no documents to compose from; add "
                                       "them with `mmrag compose --docs DIR --ingest INDEX` and restart the server")
            di = DocumentIndex(state.service.index_dir, encoder=state.service.encoder)
            try:
                return list(di.documents.values())
            finally:
                di.close()

        return state.lazy("compose_documents", load)

    def image_url(im) -> str:
        iid = f"{im.doc_id}::{im.id}"
        if state.service.searcher.has(iid):
            return image_links(iid)[0]
        if re.match(r"^(https?:|data:)", im.path):
            return im.path  # the document's own reference to a remote image
        token = uuid.uuid4().hex
        with files_lock:
            files[token] = im.path
            while len(files) > 4096:
                files.popitem(last=False)
        return f"/api/compose/images/{token}"

    def to_json(c) -> dict[str, Any]:
        images = {im.key: im for im in c.images}
        placed = {p.index: [images[k] for k in p.images] for p in c.positions if p.image}
        shown = {im.key for ims in placed.values() for im in ims}
        urls = {k: image_url(im) for k, im in images.items() if k in shown}
        blocks: list[dict[str, Any]] = [{"type": "heading", "level": 1, "text": c.title}] if c.title else []
        for i, s in enumerate(c.sections):
            if s.heading and not (s.level == 1 and s.heading == c.title):
                blocks.append({"type": "heading", "level": max(2, s.level), "text": s.heading})
            if s.text.strip():
                blocks.append({"type": "text", "text": s.text.strip()})
            for j, im in enumerate(placed.get(i + 1, ())):  # a position may hold several (capacity > 1)
                rel = next((p.relevance for p in c.positions if p.index == i + 1), None) if j == 0 else None
                blocks.append({"type": "image", "key": im.key, "image_id": im.id, "doc_id": im.doc_id,
                               "caption": im.caption, "image_url": urls[im.key], "score": rel})
        d = c.to_dict()
        for im in d["images"]:
            im.pop("path", None)
            im["image_url"] = urls.get(im["key"])
        return {"query": c.query, "title": c.title, "markdown": c.markdown, "blocks": blocks, "images": d["images"],
                "positions": d["positions"], "sources": d["sources"], "generator": c.generator}

    @router.post("/compose", summary="Answer a question from the indexed documents, with their images in place")
    async def compose_answer(body: ComposeRequest):
        from mmrag.serve.rag import check_generator

        gen = check_generator(state.config, body.generator or "extractive")
        opts = dict(state.config.generator_options.get(gen, {}))
        if gen == "openai" and not opts.get("base_url"):
            raise UnavailableError("the openai generator needs --generator-opt openai.base_url=http://HOST:PORT/v1")
        docs = await asyncio.to_thread(documents)

        def go():
            try:
                return compose(body.query, documents=docs,
                               config=ComposeConfig(generator=gen, generator_options=opts))
            except ComposeError as e:
                raise BadRequestError(str(e)) from None
            except KeyError as e:  # unknown generator name
                raise BadRequestError(str(e).strip("'\"")) from None

        c = await asyncio.to_thread(go)
        return to_json(c)

    @router.get("/compose/images/{token}", summary="A document image of an earlier composition (by token)")
    async def compose_image(token: str):
        with files_lock:
            path = files.get(token)
        if path is None or not Path(path).is_file():
            raise NotFoundError("no such composed image (tokens are valid for recent compositions only)")
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if media not in ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"):
            media = "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "script-src 'none'"}
        return FileResponse(path, media_type=media, headers=headers)

    return router
