"""Images by id only: ``/images/{id}`` (the file), ``/thumbnails/{id}`` (JPEG, small side
``thumbnail_px``), ``/api/images/{id}`` (metadata). The id is looked up in the index; the file
path comes from the index's metadata, never from the request, so ``../`` tricks find nothing (404).
"""

from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response

from mmrag.serve.app import ServeState, get_state
from mmrag.serve.schemas import image_links

router = APIRouter(tags=["images"])

_CACHE = {"Cache-Control": "public, max-age=3600"}


@router.get("/images/{image_id:path}", summary="An indexed image's file, by id",
            responses={404: {"description": "No such image id"}})
async def image_file(image_id: str, state: ServeState = Depends(get_state)):
    path = await asyncio.to_thread(state.service.image_path, image_id)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not media.startswith("image/"):
        media = "application/octet-stream"
    # no filename from the client; nosniff so a mislabelled file is never run as HTML
    return FileResponse(path, media_type=media, headers={**_CACHE, "X-Content-Type-Options": "nosniff"})


@router.get("/thumbnails/{image_id:path}", summary="A small JPEG of an indexed image, by id",
            responses={404: {"description": "No such image id"}})
async def thumbnail(image_id: str, state: ServeState = Depends(get_state)):
    data = await asyncio.to_thread(state.service.thumbnail, image_id)
    return Response(data, media_type="image/jpeg", headers={**_CACHE, "X-Content-Type-Options": "nosniff"})


@router.get("/api/images/{image_id:path}", summary="An indexed image's metadata (captions, split, ...)")
async def image_info(image_id: str, state: ServeState = Depends(get_state)) -> dict:
    meta = await asyncio.to_thread(state.service.image_metadata, image_id)
    url, thumb = image_links(image_id)
    return {"id": image_id, "image_url": url, "thumbnail_url": thumb, "metadata": meta}
