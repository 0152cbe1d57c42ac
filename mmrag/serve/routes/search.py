"""Search: ``/api/search`` (JSON, multipart upload, GET) and clip-retrieval's ``/knn-service``.

clip-retrieval compatibility (its Python ``ClipClient`` and ``clip-retrieval-front``; checked with
the real client in tests/serve/test_clients.py): ``POST /knn-service`` takes every field the client sends
(see :class:`~mmrag.serve.schemas.KnnRequest`): ``text`` | ``image`` (base64) | ``image_url`` |
``embedding_input``, ``modality`` (``"image"``: search images, ``"text"``: search captions),
``num_images``, ``num_result_ids``, ``deduplicate``, ``indice_name``, and answers a list of
``{"id", "similarity", "caption", "url", ...}``. Fields accepted but not applied here (safety and
violence filters, mclip, aesthetic bias) are named in the ``X-Mmrag-Ignored`` response header.
``GET /indices-list`` and ``POST /metadata`` (a list of ``{"id", "metadata"}``, as clip_back)
complete the set. Bodies are JSON whatever their Content-Type, as clip_back reads them. Image URLs
are only fetched when the server allows it (``allow_url_fetch``, off by default).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query as Q, Request, Response, UploadFile

from mmrag.serve.app import ServeState, get_state
from mmrag.serve.schemas import (
    CLARIFY_HELP,
    FILTER_HELP,
    MODE_HELP,
    SAFE_HELP,
    KnnRequest,
    MetadataRequest,
    SearchRequest,
    SearchResponse,
    any_json_body,
    decode_base64_image,
    hit_to_dict,
    image_links,
    json_body_openapi,
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


async def run_search(state: ServeState, q: Query, clarify: bool = False) -> dict[str, Any]:
    t = time.perf_counter()
    has_image = q.image is not None or q.image_id is not None or q.vector is not None
    ask = clarify and q.text is not None and not has_image and q.target == "images"
    k = q.k
    config = _clarify_config() if ask else None
    ask = config is not None
    if ask:  # the closeness rule reads the first config.top hits (it was chosen on that many)
        q.k = min(max(k, config.top), state.config.max_k)
    pool = await state.service.search(q)
    q.k = k
    hits = pool[:k]
    sr = state.service.searcher
    rel = sr.add_relevance(hits, q.text, True if has_image else None, q.target, q.mode)
    question = await asyncio.to_thread(_clarification, state, config, q.text, pool, len(hits)) if ask else None
    return {"results": [hit_to_dict(h, q.target) for h in hits], "k": q.k, "target": q.target, "mode": q.mode,
            "took_ms": round(1000 * (time.perf_counter() - t), 2),
            "no_good_match": sr.no_good_match(hits) if rel else None,
            "clarify": question.to_dict() if question else None}


def _clarify_config():
    """The clarifying questions' settings (mmrag.tasks.chat.clarify), None without the chat task."""
    try:
        from mmrag.tasks.chat.clarify import ClarifyConfig
    except ImportError:
        return None
    return ClarifyConfig()


def _clarification(state: ServeState, config, text: str, pool, shown: int):
    """The clarifying question over the results, or None: not unsure or no caption source."""
    from mmrag.serve.routes.chat import chat_features
    from mmrag.tasks.chat.clarify import clarifying_question

    return clarifying_question(state.service.searcher, text, pool, chat_features(state), config, shown=shown)


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
    return await run_search(state, q, clarify=body.clarify)


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
    clarify: bool = Form(False, description=CLARIFY_HELP),
    state: ServeState = Depends(get_state),
):
    flt = _parse_filter(filter)
    img = await read_upload(state, image)
    q = Query(text=text, image=img, weight=weight, k=_k(state, k), target=target, filter=flt, mode=mode, safe=safe)
    return await run_search(state, q, clarify=clarify)


@router.get("/api/search", response_model=SearchResponse, tags=["search"], summary="Text search (GET)")
async def search_get(
    q: str = Q(..., min_length=1, max_length=2000, description="Text query."),
    k: Optional[int] = Q(None, ge=1),
    target: str = Q("images"),
    filter: Optional[str] = Q(None, description="JSON object. " + FILTER_HELP),
    mode: str = Q("auto", description=MODE_HELP),
    safe: bool = Q(False, description=SAFE_HELP),
    clarify: bool = Q(False, description=CLARIFY_HELP),
    state: ServeState = Depends(get_state),
):
    return await run_search(state, Query(text=q, k=_k(state, k), target=target, filter=_parse_filter(filter),
                                         mode=mode, safe=safe), clarify=clarify)


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

    limit = state.config.max_upload_bytes
    try:
        async with httpx.AsyncClient(timeout=state.config.url_fetch_timeout_s, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):  # redirects followed by hand: each hop is checked
                await _check_fetchable(url, state.config.url_fetch_private)
                async with client.stream("GET", url) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        url = str(resp.url.join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise BadRequestError(f"image_url answered HTTP {resp.status_code}")
                    chunks, n = [], 0
                    async for chunk in resp.aiter_bytes():
                        n += len(chunk)
                        if n > limit:
                            raise BadRequestError(f"image_url is larger than {limit} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
    except httpx.HTTPError as e:
        raise BadRequestError(f"cannot fetch image_url ({type(e).__name__}: {e})") from None
    raise BadRequestError(f"image_url redirected more than {MAX_REDIRECTS} times")


MAX_REDIRECTS = 5


async def _check_fetchable(url: str, allow_private: bool) -> None:
    """Refuse what a client must not make the server fetch: non-http(s) schemes and, unless
    ``allow_private``, hosts that resolve to loopback, private, link-local or other non-public
    addresses (every address the name resolves to is checked)."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    if not url.startswith(("http://", "https://")):
        raise BadRequestError("image_url must be an http(s) URL")
    host = urlsplit(url).hostname
    if not host:
        raise BadRequestError("image_url has no host")
    if allow_private:
        return
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise BadRequestError(f"cannot resolve the image_url host {host!r} ({e})") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not ip.is_global:
            raise BadRequestError(f"image_url host {host!r} is a non-public address ({ip}): refused "
                                  "(a server started with --allow-private-urls may fetch from its own network)")


def _deduplicate(state: ServeState, hits, target: str):
    if len(hits) < 2:
        return hits
    x = state.service.searcher.vectors([h.id for h in hits], target)
    keep: list[int] = []
    for i in range(len(hits)):
        if not keep or float(np.max(x[keep] @ x[i])) < DEDUP_THRESHOLD:
            keep.append(i)
    return [hits[i] for i in keep]


IGNORED_HEADER = "X-Mmrag-Ignored"


def _check_indice(state: ServeState, name: Optional[str]) -> None:
    served = state.service.index_dir.name
    if name not in (None, "", served):
        raise NotFoundError(f"unknown indice_name {name!r}; this server holds {served!r} (see /indices-list)")


@router.post("/knn-service", tags=["clip-retrieval"], summary="clip-retrieval compatible k-NN search",
             openapi_extra=json_body_openapi(KnnRequest),
             description="The body is read as JSON whatever its Content-Type (clip-retrieval's ClipClient "
                         "sends none). Fields this server accepts but does not apply are named in the "
                         "response header " + IGNORED_HEADER + ".")
async def knn_service(request: Request, response: Response, state: ServeState = Depends(get_state),
                      body: KnnRequest = Depends(any_json_body(KnnRequest))) -> list[dict]:
    _check_indice(state, body.indice_name)
    # the safety filter runs where the index has scores (mmrag index --safety); elsewhere, like the
    # fields this server cannot apply, it is accepted (clip-retrieval's client sends it by default)
    # and named in the response header, never silently dropped
    safe = body.use_safety_model and state.service.searcher.has_safety_scores()
    ignored = [f for f in body.ignored() if not (f == "use_safety_model" and safe)]
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)
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
                                  f"got {vector.shape[0] if vector.ndim == 1 else vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise BadRequestError("embedding_input must hold finite numbers (no NaN or Infinity)")
    if body.text is None and image is None and vector is None:
        raise BadRequestError("give one of text, image, image_url or embedding_input")
    # a ready embedding wins; otherwise text and/or image (equal weights when both are given)
    q = Query(vector=vector, k=1, target=target) if vector is not None else \
        Query(text=body.text, image=image, k=1, target=target)
    q.safe = safe
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


@router.post("/metadata", tags=["clip-retrieval"], summary="Metadata of images by id",
             openapi_extra=json_body_openapi(MetadataRequest),
             description="clip-retrieval's shape: a list of {id, metadata} for the ids found (unknown ids "
                         "are left out). The body is read as JSON whatever its Content-Type.")
def metadata(request: Request, state: ServeState = Depends(get_state),
             body: MetadataRequest = Depends(any_json_body(MetadataRequest))) -> list[dict]:
    _check_indice(state, body.indice_name)
    base = str(request.base_url).rstrip("/")
    metas = state.service.searcher.metadata(body.ids) if body.ids else []
    out = []
    for i, m in zip(body.ids, metas):
        if m is None:
            continue
        pub = public_metadata(m)
        caps = pub.get("captions") or []
        url, _ = image_links(i)
        out.append({"id": i, "metadata": {**pub, "caption": caps[0] if caps else "", "url": base + url}})
    return out


__all__ = ["router", "read_upload", "run_search", "NotFoundError"]
