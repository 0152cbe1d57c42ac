"""Task endpoints over the tasks' own packages: chat-retrieval sessions (:mod:`mmrag.tasks.chat`),
ask with reverse image retrieval (:mod:`mmrag.tasks.rir`), compose (:mod:`mmrag.tasks.imageref`,
on an index with documents ingested by ``mmrag compose --ingest``).

Each router is mounted only when its package imports, and :func:`mount` reports which ones are
there (the web page hides the others). Task calls are synchronous Python; they run in worker
threads so the event loop keeps serving searches meanwhile.

Chat sessions are resources::

    POST   /api/chat/sessions               {"description", "k"?}   -> 201 turn (ranking + question)
    POST   /api/chat/sessions/{id}/answer   {"answer"}              -> next turn
    GET    /api/chat/sessions/{id}                                  -> the whole dialog
    DELETE /api/chat/sessions/{id}                                  -> 204

At most ``chat_max_sessions`` live at once (429 beyond, after expired ones are dropped); a session
unused for ``chat_session_ttl_s`` expires (404 afterwards).
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mmrag.serve.app import ServeState, get_state
from mmrag.serve.schemas import image_links
from mmrag.serve.service import BadRequestError, NotFoundError, UnavailableError, public_metadata

__all__ = ["mount", "ChatSessions"]


def _hit_json(hit_id: str, score: float, metadata: dict | None, rank: int | None = None) -> dict[str, Any]:
    meta = public_metadata(metadata)
    caps = [c for c in (meta.get("captions") or []) if isinstance(c, str)]
    url, thumb = image_links(hit_id)
    d = {"id": hit_id, "image_id": hit_id, "score": round(float(score), 6), "caption": caps[0] if caps else None,
         "captions": caps, "image_url": url, "thumbnail_url": thumb, "metadata": meta}
    if rank is not None:
        d["rank"] = rank
    return d


# ---------------------------------------------------------------------- chat


class ChatSessions:
    """Live chat sessions by id, bounded in number and idle time (LRU order = last use)."""

    def __init__(self, max_sessions: int, ttl_s: float, on_change=None):
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self._items: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._on_change = on_change

    def _expire(self, now: float) -> None:
        while self._items:
            sid, (_, last) = next(iter(self._items.items()))
            if now - last <= self.ttl_s:
                break
            self._items.popitem(last=False)

    def _changed(self) -> None:
        if self._on_change:
            self._on_change(len(self._items))

    def add(self, session: Any) -> str:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if len(self._items) >= self.max_sessions:
                raise HTTPException(429, f"too many open chat sessions ({self.max_sessions}); finish one "
                                         "(DELETE /api/chat/sessions/ID) or try again later")
            sid = uuid.uuid4().hex
            self._items[sid] = (session, now)
            self._changed()
            return sid

    def get(self, sid: str) -> Any:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            item = self._items.get(sid)
            if item is None:
                raise NotFoundError(f"no chat session {sid!r} (it may have expired after "
                                    f"{self.ttl_s:g} s without use)")
            self._items[sid] = (item[0], now)
            self._items.move_to_end(sid)
            self._changed()
            return item[0]

    def delete(self, sid: str) -> None:
        with self._lock:
            if self._items.pop(sid, None) is None:
                raise NotFoundError(f"no chat session {sid!r}")
            self._changed()

    def __len__(self) -> int:
        return len(self._items)


class ChatStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(..., min_length=1, max_length=2000, description="What the wanted image shows.")
    k: Optional[int] = Field(None, ge=1, le=100, description="Images in each ranking.")
    questioner: Optional[str] = Field(None, description="split (default), bank or llm.")


class ChatAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: str = Field(..., min_length=1, max_length=1000)


def _turn_json(sid: str, turn, state: ServeState) -> dict[str, Any]:
    return {"session_id": sid, "round": turn.round, "query": turn.query,
            "hits": [_hit_json(h.id, h.score, h.metadata, h.rank) for h in turn.hits],
            "question": turn.question.text if turn.question else None,
            "question_topic": turn.question.topic if turn.question else None,
            "question_options": (turn.question.info.get("options") if turn.question else None),
            "expires_after_s": state.config.chat_session_ttl_s}


def chat_router(state: ServeState) -> APIRouter:
    from mmrag.tasks.chat import ChatSession, DialogError, QuestionerError
    from mmrag.tasks.chat.session import caption_features

    router = APIRouter(prefix="/api/chat", tags=["chat"])
    sessions = ChatSessions(state.config.chat_max_sessions, state.config.chat_session_ttl_s,
                            on_change=state.metrics.chat_sessions.set)
    state.extras["chat_sessions"] = sessions
    searcher = state.service.searcher

    def features():  # the caption words all sessions share (built once, on first use)
        return state.lazy("chat_features", lambda: caption_features(searcher, "auto"))

    def run(fn, *args):
        try:
            return fn(*args)
        except (DialogError, QuestionerError, ValueError) as e:
            raise BadRequestError(str(e)) from None

    @router.post("/sessions", status_code=201, summary="Start a chat: description -> ranking + first question")
    async def start(body: ChatStart):
        def make():
            s = ChatSession(searcher, questioner=body.questioner or "split", k=body.k or 10, features=features())
            return s, s.start(body.description)

        try:
            session, turn = await asyncio.to_thread(run, make)
        except KeyError as e:  # unknown questioner name
            raise BadRequestError(str(e).strip("'\"")) from None
        sid = sessions.add(session)
        return _turn_json(sid, turn, state)

    @router.post("/sessions/{session_id}/answer", summary="Answer the pending question -> new ranking + next question")
    async def answer(session_id: str, body: ChatAnswer):
        session = sessions.get(session_id)
        turn = await asyncio.to_thread(run, session.answer, body.answer)
        return _turn_json(session_id, turn, state)

    @router.get("/sessions/{session_id}", summary="The whole dialog so far")
    async def show(session_id: str):
        session = sessions.get(session_id)
        d = await asyncio.to_thread(session.to_dict)
        for t in d.get("turns", []):
            t["hits"] = [_hit_json(h["id"], h["score"], h.get("metadata"), h.get("rank")) for h in t["hits"]]
        return {"session_id": session_id, **d}

    @router.delete("/sessions/{session_id}", status_code=204, summary="End a chat")
    async def end(session_id: str):
        sessions.delete(session_id)
        return Response(status_code=204)

    return router


# ---------------------------------------------------------------------- ask (RIR)


def ask_router(state: ServeState) -> APIRouter:
    from mmrag.tasks.rir import AnswererError, RIRPipeline, create_provider

    router = APIRouter(prefix="/api", tags=["ask"])

    def pipeline(answerer: str):
        def build():
            provider = create_provider("index", searcher=state.service.searcher)
            if answerer == "knn":
                return RIRPipeline(provider, answerer="knn")
            from mmrag.serve.rag import RagPipeline

            gen = RagPipeline(state).generator(answerer)  # shared instance, server's options
            if not gen.reads_messages:
                raise BadRequestError(f"the {gen.name} generator picks among retrieved texts and cannot answer questions: "
                                      "use answerer=knn on an index with QA pairs, or a language-model "
                                      "generator (local, openai)")
            return RIRPipeline(provider, answerer="generator", generator=gen)

        return state.lazy(f"rir:{answerer}", build)

    def default_answerer() -> str:
        """knn when the index has QA pairs, else the server's generator."""
        if "rir_has_qa" not in state.extras:
            try:
                p = pipeline("knn")
                state.extras["rir_has_qa"] = p.bank is not None and len(p.bank) > 0
            except AnswererError:
                state.extras["rir_has_qa"] = False
        return "knn" if state.extras["rir_has_qa"] else state.config.generator

    @router.post("/ask", summary="Answer a question about an image, with similar images as evidence")
    async def ask(
        question: str = Form(..., min_length=1, max_length=1000),
        image: Optional[UploadFile] = File(None, description="The image the question is about."),
        image_id: Optional[str] = Form(None, description="Or: an indexed image (treated as unseen)."),
        answerer: Optional[str] = Form(None, description="knn (needs QA pairs in the index) or a generator name."),
        rir: bool = Form(True, description="Use reverse image retrieval (false: the no-RIR baseline)."),
        k: Optional[int] = Form(None, ge=1, le=50),
    ):
        svc = state.service
        if (image is None) == (image_id is None):
            raise BadRequestError("give an image file or an image_id (one of them)")
        raw = None
        if image is not None:
            raw = await image.read()
            decoded = await asyncio.to_thread(svc.decode_upload, raw)
            vec = await svc.image_vector(decoded)
        else:
            vec = await asyncio.to_thread(svc.stored_vector, image_id)
        qvec = await svc.text_vector(question)
        name = answerer or await asyncio.to_thread(default_answerer)

        def go():
            try:
                pipe = pipeline(name)
                return pipe.ask(raw, question, rir=rir, k=k, image_vector=vec, question_vector=qvec,
                                exclude_ids=[image_id] if image_id else (), exclude_same_image=raw is not None)
            except KeyError as e:
                raise BadRequestError(str(e).strip("'\"")) from None
            except ValueError as e:
                raise BadRequestError(str(e)) from None

        ans = await asyncio.to_thread(go)
        d = ans.to_dict()
        for e in d["evidence"]:
            e.pop("path", None)
            e["image_url"], e["thumbnail_url"] = image_links(e["id"])
        return d

    return router


# ---------------------------------------------------------------------- compose (ImageRef)


class ComposeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=2000, description="The question to answer with images.")
    generator: Optional[str] = Field(None, description="extractive (default, offline) or a generator name.")


def _is_document_index(root) -> bool:
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
            if not _is_document_index(state.service.index_dir):
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
        placed = {p.index: images[p.image] for p in c.positions if p.image}
        urls = {k: image_url(im) for k, im in images.items() if im in placed.values()}
        blocks: list[dict[str, Any]] = [{"type": "heading", "level": 1, "text": c.title}] if c.title else []
        for i, s in enumerate(c.sections):
            if s.heading and not (s.level == 1 and s.heading == c.title):
                blocks.append({"type": "heading", "level": max(2, s.level), "text": s.heading})
            if s.text.strip():
                blocks.append({"type": "text", "text": s.text.strip()})
            if i + 1 in placed:
                im = placed[i + 1]
                rel = next((p.relevance for p in c.positions if p.index == i + 1), None)
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
        gen = body.generator or "extractive"
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


# ---------------------------------------------------------------------- mounting


def mount(app, state: ServeState) -> dict[str, bool]:
    """Include the routers whose task packages import; return ``{feature: available}``."""
    import logging

    log = logging.getLogger("mmrag.serve")
    feats: dict[str, bool] = {}
    for name, build in (("chat", chat_router), ("ask", ask_router), ("compose", compose_router)):
        try:
            app.include_router(build(state))
            feats[name] = True
        except ImportError as e:  # that task is not part of this build
            log.warning("%s endpoints unavailable: %s", name, e)
            feats[name] = False
    if feats["compose"]:  # composing needs documents in the index
        feats["compose"] = _is_document_index(state.service.index_dir)
    return feats
