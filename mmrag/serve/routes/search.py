"""Search: ``/api/search`` (JSON, multipart upload, GET) and clip-retrieval's ``/knn-service``.

clip-retrieval compatibility (``clip-retrieval-front`` and its Python ``ClipClient``):
``POST /knn-service`` takes ``text`` | ``image`` (base64) | ``image_url`` | ``embedding_input``,
``modality`` (``"image"``: search images, ``"text"``: search captions), ``num_images`` and
``deduplicate``, and answers a list of ``{"id", "similarity", "caption", "url", ...}``;
``GET /indices-list`` and ``POST /metadata`` complete the set the front end calls. Image URLs are
only fetched when the server allows it (``allow_url_fetch``, off by default).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query as Q, Request, UploadFile

from mmrag.serve.app import ServeState, get_state
from mmrag.serve.schemas import (
    FILTER_HELP,
    MODE_HELP,
    SAFE_HELP,
    KnnRequest,
    MetadataRequest,
    SearchRequest,
    SearchResponse,
    decode_base64_image,
    hit_to_dict,
    image_links,
)
from mmrag.serve.service import BadRequestError, NotFoundError, Query, public_metadata

router = APIRouter()

# clip-retrieval's de-duplication: drop a result whose embedding has cosine >= this with a
# better-ranked one (its clip_back uses the same 0.94 threshold).
DEDUP_THRESHOLD = 0.94


async def read_upload(state: ServeState, upload: UploadFile | None) -> Any:
    """Decoded image of a multipart upload, or None (decoding runs off the event loop)."""
    if upload is None:
        return None
    data = await upload.read()
    return await asyncio.to_thread(state.service.decode_upload, data)


async def run_search(state: ServeState, q: Query) -> dict[str, Any]:
    t = time.perf_counter()
    hits = await state.service.search(q)
    return {"results": [hit_to_dict(h, q.target) for h in hits], "k": q.k, "target": q.target, "mode": q.mode,
            "took_ms": round(1000 * (time.perf_counter() - t), 2)}


def _k(state: ServeState, k: Optional[int]) -> int:
    return state.config.default_k if k is None else k


@router.post("/api/search", response_model=SearchResponse, tags=["search"],
             summary="Search by text, image (base64 or image_id), or both")
async def search_json(body: SearchRequest, state: ServeState = Depends(get_state)):
    image = None
    if body.image:
        data = decode_base64_image(body.image)
        image = await asyncio.to_thread(state.service.decode_upload, data)
    q = Query(text=body.text, image=image, image_id=body.image_id, weight=body.weight, k=_k(state, body.k),
              target=body.target, filter=body.filter, mode=body.mode, safe=body.safe)
    return await run_search(state, q)


@router.post("/api/search/upload", response_model=SearchResponse, tags=["search"],
             summary="Search with an uploaded image file (multipart), optionally with text")
async def search_upload(
    image: Optional[UploadFile] = File(None, description="Image file (JPEG, PNG, ...)."),
    text: Optional[str] = Form(None, max_length=2000),
    weight: float = Form(0.5, ge=0.0, le=1.0),
    k: Optional[int] = Form(None, ge=1),
    target: str = Form("images"),
    filter: Optional[str] = Form(None, description="JSON object. " + FILTER_HELP),
    mode: str = Form("auto", description=MODE_HELP),
    safe: bool = Form(False, description=SAFE_HELP),
    state: ServeState = Depends(get_state),
):
    flt = _parse_filter(filter)
    img = await read_upload(state, image)
    q = Query(text=text, image=img, weight=weight, k=_k(state, k), target=target, filter=flt, mode=mode, safe=safe)
    return await run_search(state, q)


@router.get("/api/search", response_model=SearchResponse, tags=["search"], summary="Text search (GET)")
async def search_get(
    q: str = Q(..., min_length=1, max_length=2000, description="Text query."),
    k: Optional[int] = Q(None, ge=1),
    target: str = Q("images"),
    filter: Optional[str] = Q(None, description="JSON object. " + FILTER_HELP),
    mode: str = Q("auto", description=MODE_HELP),
    safe: bool = Q(False, description=SAFE_HELP),
    state: ServeState = Depends(get_state),
):
    return await run_search(state, Query(text=q, k=_k(state, k), target=target, filter=_parse_filter(filter),
                                         mode=mode, safe=safe))


def _parse_filter(raw: Optional[str]) -> Optional[dict]:
    if raw is None or not raw.strip():
        return None
    try:
        flt = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequestError(f"filter is not valid JSON ({e.msg})") from None
    if not isinstance(flt, dict):
        raise BadRequestError('filter must be a JSON object such as {"split": "test"}')
    return flt


# ---------------------------------------------------------------------- clip-retrieval


async def fetch_image_url(state: ServeState, url: str) -> bytes:
    if not state.config.allow_url_fetch:
        raise BadRequestError("image_url is disabled on this server (start it with --allow-url-fetch); "
                              "send the image as base64 in 'image' instead")
    import httpx

    if not url.startswith(("http://", "https://")):
        raise BadRequestError("image_url must be an http(s) URL")
    limit = state.config.max_upload_bytes
    try:
        async with httpx.AsyncClient(timeout=state.config.url_fetch_timeout_s, follow_redirects=True) as client:
            async with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise BadRequestError(f"image_url answered HTTP {resp.status_code}")
                chunks, n = [], 0
                async for chunk in resp.aiter_bytes():
                    n += len(chunk)
                    if n > limit:
                        raise BadRequestError(f"image_url is larger than {limit} bytes")
                    chunks.append(chunk)
    except httpx.HTTPError as e:
        raise BadRequestError(f"cannot fetch image_url ({type(e).__name__}: {e})") from None
    return b"".join(chunks)


def _deduplicate(state: ServeState, hits, target: str):
    if len(hits) < 2:
        return hits
    x = state.service.searcher.vectors([h.id for h in hits], target)
    keep: list[int] = []
    for i in range(len(hits)):
        if not keep or float(np.max(x[keep] @ x[i])) < DEDUP_THRESHOLD:
            keep.append(i)
    return [hits[i] for i in keep]


@router.post("/knn-service", tags=["clip-retrieval"], summary="clip-retrieval compatible k-NN search")
async def knn_service(body: KnnRequest, request: Request, state: ServeState = Depends(get_state)) -> list[dict]:
    target = "images" if body.modality == "image" else "captions"
    image = None
    raw = None
    if body.image:
        raw = decode_base64_image(body.image)
    elif body.image_url:
        raw = await fetch_image_url(state, body.image_url)
    if raw is not None:
        image = await asyncio.to_thread(state.service.decode_upload, raw)
    vector = None
    if body.embedding_input is not None:
        vector = np.asarray(body.embedding_input, np.float32)
        if vector.shape != (state.service.searcher.dim,):
            raise BadRequestError(f"embedding_input must have {state.service.searcher.dim} numbers, "
                                  f"got {vector.shape[0]}")
    if body.text is None and image is None and vector is None:
        raise BadRequestError("give one of text, image, image_url or embedding_input")
    # a ready embedding wins; otherwise text and/or image (equal weights when both are given)
    q = Query(vector=vector, k=1, target=target) if vector is not None else \
        Query(text=body.text, image=image, k=1, target=target)
    q.safe = body.use_safety_model  # refused (400) when the index has no safety scores
    if (body.model_extra or {}).get("use_violence_detector"):
        raise BadRequestError("use_violence_detector is not supported: this server has no violence model "
                              "(use_safety_model filters by the open_nsfw score when the index has one)")
    want = min(max(body.num_images, body.num_result_ids or 0), state.config.max_k)
    q.k = min(state.config.max_k, want * 2) if body.deduplicate else want
    hits = await state.service.search(q)
    if body.deduplicate:
        hits = (await asyncio.to_thread(_deduplicate, state, hits, target))
    hits = hits[: body.num_images]
    base = str(request.base_url).rstrip("/")
    out = []
    for h in hits:
        d = hit_to_dict(h, target)
        out.append({"id": d["id"], "similarity": d["score"], "caption": d["caption"] or "",
                    "url": base + d["image_url"], "image_id": d["image_id"]})
    return out


@router.get("/indices-list", tags=["clip-retrieval"], summary="The one index this server holds")
def indices_list(state: ServeState = Depends(get_state)) -> list[str]:
    return [state.service.index_dir.name]


@router.post("/metadata", tags=["clip-retrieval"], summary="Metadata of images by id")
def metadata(body: MetadataRequest, request: Request, state: ServeState = Depends(get_state)) -> dict:
    base = str(request.base_url).rstrip("/")
    metas = state.service.searcher.metadata(body.ids)
    out = {}
    for i, m in zip(body.ids, metas):
        if m is None:
            continue
        pub = public_metadata(m)
        caps = pub.get("captions") or []
        url, _ = image_links(i)
        out[i] = {"metadata": {**pub, "caption": caps[0] if caps else "", "url": base + url}}
    return {"metadatas": out}


__all__ = ["router", "read_upload", "run_search", "NotFoundError"]
