"""``POST /api/caption``: caption an uploaded image (or an indexed one) by retrieval-augmented
generation (:mod:`mmrag.tasks.captioning`), with the retrieved captions as evidence.

The caption datastore is, by default, the index's own captions: their vectors and hubness priors
are already in the index, so nothing is embedded at start-up. ``--caption-datastore flickr8k`` or
a saved datastore file replace it. An indexed image captioned by id never retrieves its own
captions (they are excluded, as in the captioning evaluation).
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile

from mmrag.serve.app import ServeState, get_state
from mmrag.serve.schemas import CaptionResponse
from mmrag.serve.service import BadRequestError, UnavailableError

router = APIRouter(tags=["caption"])


def index_caption_datastore(searcher):
    """A CaptionDatastore over an index's caption store (texts, vectors, priors from the index)."""
    from mmrag.retrieval import CaptionDatastore

    if searcher.count("captions") == 0:
        raise UnavailableError("this index has no captions to caption with: start the server with "
                               "--caption-datastore flickr8k (or a saved datastore file)")
    return CaptionDatastore.from_searcher(searcher)


def load_caption_datastore(state: ServeState):
    spec = state.config.caption_datastore
    enc = state.service.encoder
    if spec is None or spec == "index":
        return index_caption_datastore(state.service.searcher)
    from mmrag.tasks.captioning import CaptionDatastore, default_datastore

    if spec == "flickr8k":
        return default_datastore(enc)
    return CaptionDatastore.load(spec)


def get_captioner(state: ServeState, generator: str):
    from mmrag.tasks.captioning import DEFAULT_K, MRagCaptioner

    ds = state.lazy("caption_datastore", lambda: load_caption_datastore(state))
    opts = dict(state.config.generator_options.get(generator, {}))
    k = state.config.caption_k or DEFAULT_K
    return state.lazy(f"captioner:{generator}",
                      lambda: MRagCaptioner(state.service.encoder, ds, generator, k=k, generator_options=opts))


@router.post("/api/caption", response_model=CaptionResponse,
             summary="Caption an uploaded image, or an indexed image by id, with its evidence")
async def caption(
    image: Optional[UploadFile] = File(None, description="Image file to caption."),
    image_id: Optional[str] = Form(None, description="Or: the id of an indexed image."),
    generator: Optional[str] = Form(None, description="consensus (default), local or openai."),
    state: ServeState = Depends(get_state),
):
    t = time.perf_counter()
    gen = generator or state.config.generator
    from mmrag.serve.rag import check_generator

    check_generator(state.config, gen)
    svc = state.service
    raw, vec = await svc.upload_or_stored_vector(image, image_id)
    captioner = await asyncio.to_thread(get_captioner, state, gen)
    res = (await asyncio.to_thread(captioner.caption_vectors, vec[None], [image_id],
                                   [raw] if raw is not None else None))[0]
    if res.error:
        if res.error.startswith("generator failed"):
            raise UnavailableError(f"generator {gen!r} could not caption: {res.error}")
        raise BadRequestError(f"could not caption the image: {res.error}")
    return {"caption": res.caption, "generator": res.generator or gen, "image_id": image_id,
            "evidence": [{"text": h.text, "score": round(float(h.score), 5), "image_id": h.image_id}
                         for h in res.evidence[:20]],
            "took_ms": round(1000 * (time.perf_counter() - t), 2)}
