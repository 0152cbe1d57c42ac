"""Chat-retrieval sessions over the served index (:mod:`mmrag.tasks.chat`), as resources::

    POST   /api/chat/sessions               {"description", "k"?}   -> 201 turn (ranking + question)
    POST   /api/chat/sessions/{id}/answer   {"answer"}              -> next turn
    GET    /api/chat/sessions/{id}                                  -> the whole dialog
    DELETE /api/chat/sessions/{id}                                  -> 204

At most ``chat_max_sessions`` live at once (429 beyond, after expired ones are dropped); a session
unused for ``chat_session_ttl_s`` expires (404 afterwards). Sessions search with the served
index's encoder. Task calls run in worker threads so the event loop keeps serving searches.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Optional

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from mmrag.serve.app import ServeState
from mmrag.serve.schemas import image_links
from mmrag.serve.service import BadRequestError, NotFoundError, public_metadata

__all__ = ["chat_router", "ChatSessions", "chat_features"]


def chat_features(state: ServeState):
    """The caption words chat sessions and search's clarifying questions share (built once, on
    first use): the index's captions, else the caption datastore, else None."""
    from mmrag.tasks.chat.session import caption_features

    return state.lazy("chat_features", lambda: caption_features(state.service.searcher, "auto"))


def _hit_json(hit_id: str, score: float, metadata: dict | None, rank: int | None = None) -> dict[str, Any]:
    meta = public_metadata(metadata)
    caps = [c for c in (meta.get("captions") or []) if isinstance(c, str)]
    url, thumb = image_links(hit_id)
    d = {"id": hit_id, "image_id": hit_id, "score": round(float(score), 6), "caption": caps[0] if caps else None,
         "captions": caps, "image_url": url, "thumbnail_url": thumb, "metadata": meta}
    if rank is not None:
        d["rank"] = rank
    return d




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

    router = APIRouter(prefix="/api/chat", tags=["chat"])
    sessions = ChatSessions(state.config.chat_max_sessions, state.config.chat_session_ttl_s,
                            on_change=state.metrics.chat_sessions.set)
    state.extras["chat_sessions"] = sessions
    searcher = state.service.searcher

    def features():
        return chat_features(state)

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
