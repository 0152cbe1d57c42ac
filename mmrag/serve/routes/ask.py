"""``POST /api/ask``: answer a question about an image with reverse image retrieval
(:mod:`mmrag.tasks.rir`) over the served index, searched with its own encoder."""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, File, Form, UploadFile

from mmrag.serve.app import ServeState
from mmrag.serve.schemas import image_links
from mmrag.serve.service import BadRequestError, UnavailableError

__all__ = ["ask_router"]



def ask_router(state: ServeState) -> APIRouter:
    from mmrag.tasks.rir import AnswererError, RIRPipeline, create_provider

    router = APIRouter(prefix="/api", tags=["ask"])

    def pipeline(answerer: str):
        def build():
            provider = create_provider("index", searcher=state.service.searcher)
            if answerer in ("knn", "captions", "auto"):
                return RIRPipeline(provider, answerer=answerer)
            from mmrag.serve.rag import RagPipeline

            gen = RagPipeline(state).generator(answerer)  # shared instance, server's options
            if not gen.reads_messages:
                raise BadRequestError(f"the {gen.name} generator picks among retrieved texts and cannot answer questions: "
                                      "use answerer=knn on an index with QA pairs, or a language-model "
                                      "generator (local, openai)")
            return RIRPipeline(provider, answerer="generator", generator=gen)

        return state.lazy(f"rir:{answerer}", build)

    def default_answerer() -> str:
        """What works on this index without a language model: knn with QA pairs, else the
        neighbours' captions (:func:`mmrag.tasks.rir.auto_answerer`); its error says why not."""
        try:
            return pipeline("auto").answerer.name
        except AnswererError as e:
            raise UnavailableError(str(e)) from None

    @router.post("/ask", summary="Answer a question about an image, with similar images as evidence")
    async def ask(
        question: str = Form(..., min_length=1, max_length=1000),
        image: Optional[UploadFile] = File(None, description="The image the question is about."),
        image_id: Optional[str] = Form(None, description="Or: an indexed image (treated as unseen)."),
        answerer: Optional[str] = Form(None, description="knn (needs QA pairs in the index), captions (needs captions) or a generator name; default: what the index has."),
        rir: bool = Form(True, description="Use reverse image retrieval (false: the no-RIR baseline)."),
        k: Optional[int] = Form(None, ge=1, le=50),
    ):
        svc = state.service
        raw, vec = await svc.upload_or_stored_vector(image, image_id)
        qvec = await svc.text_vector(question)
        name = answerer or await asyncio.to_thread(default_answerer)

        def go():
            try:
                pipe = pipeline(name)
                return pipe.ask(raw, question, rir=rir, k=k, image_vector=vec, question_vector=qvec,
                                exclude_ids=[image_id] if image_id else (), exclude_same_image=raw is not None)
            except KeyError as e:
                raise BadRequestError(str(e).strip("'\"")) from None
            except AnswererError as e:
                raise UnavailableError(str(e)) from None
            except ValueError as e:
                raise BadRequestError(str(e)) from None

        ans = await asyncio.to_thread(go)
        d = ans.to_dict()
        for e in d["evidence"]:
            e.pop("path", None)
            e["image_url"], e["thumbnail_url"] = image_links(e["id"])
        return d

    return router
