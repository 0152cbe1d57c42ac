"""Request and response bodies of the HTTP API (pydantic models; they make the OpenAPI schema)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal, Optional, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmrag.index.base import Hit
from mmrag.serve.service import BadRequestError, public_metadata

Scalar = Union[str, int, float, bool, None]
FilterSpec = dict[str, Union[Scalar, list[Scalar]]]

MODE_HELP = ("vector: embeddings; keyword: BM25 over each image's text (captions, text in the image, file "
             "name, metadata); hybrid: both, score-fused (score = w * BM25/best + (1 - w) * min-max cosine, metadata "
             "vector_score/keyword_score); auto: hybrid for a text query when the index has text, else vector.")
SAFE_HELP = "Drop images the safety model (open_nsfw) flagged; needs an index built with --safety."
CLARIFY_HELP = ("Text queries: when the top results are close together, return in 'clarify' the question that "
                "best separates them and, per answer, the results in their new order (off by default).")
FILTER_HELP = ('Metadata filter: {"key": value} or {"key": [v1, v2]} (any of); several keys must all '
               'match. Values match by JSON type: 1 does not match "1".')


class SearchRequest(BaseModel):
    """Search by text, by image (base64 or an indexed image's id), or both (weighted)."""

    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, max_length=2000, description="Text query.")
    image: Optional[str] = Field(None, description="Image query: base64 bytes or a data: URL.")
    image_id: Optional[str] = Field(None, max_length=1000, description="Use an indexed image as the query.")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="With text and image: the text's weight.")
    k: Optional[int] = Field(None, ge=1, description="Number of results (default: the server's default_k).")
    target: Literal["images", "captions"] = Field("images", description="Search images or captions.")
    filter: Optional[FilterSpec] = Field(None, description=FILTER_HELP)
    mode: Literal["auto", "vector", "keyword", "hybrid"] = Field("auto", description=MODE_HELP)
    safe: bool = Field(False, description=SAFE_HELP)
    clarify: bool = Field(False, description=CLARIFY_HELP)


class SearchHit(BaseModel):
    id: str
    score: float
    caption: Optional[str] = Field(None, description="Images: the first caption; captions: the text.")
    captions: list[str] = Field(default_factory=list)
    image_id: str = Field(..., description="The image this hit shows (for captions: the owning image).")
    image_url: str
    thumbnail_url: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    relevance: Optional[float] = Field(
        None, description="Text->image: calibrated probability that this image matches the text "
                          "(Platt scaling fitted on Flickr8k dev pairs for the index's encoder).")


class ClarifyOption(BaseModel):
    answer: str = Field(..., description="What the user may answer: a choice word, 'neither', or yes / no.")
    hit_ids: list[str] = Field(..., description="The results' ids in their order after this answer.")
    kept_ids: list[str] = Field(..., description="The results consistent with this answer (in the same order).")


class Clarify(BaseModel):
    """A question that separates close top results (ChatIR's split questioner over them)."""

    question: str
    topic: Optional[str] = Field(None, description="The word a yes/no question asks about (null for a choice).")
    options: list[ClarifyOption]
    signal: str = Field(..., description="What measured how close the top results are.")
    closeness: float = Field(..., description="Its value (0 = one clear best result, 1 = all alike).")
    threshold: float = Field(..., description="A question is offered at or above this closeness.")
    gain_bits: Optional[float] = Field(None, description="Expected information gain of the answer.")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    k: int
    target: str
    mode: str = Field("vector", description="The mode that ran (auto resolved).")
    took_ms: float
    no_good_match: Optional[bool] = Field(
        None, description="True when every hit's relevance is below the threshold (0.5) and none matched "
                          "a query word; null when relevance is not available (image queries, keyword "
                          "mode, an encoder without a fit).")
    clarify: Optional[Clarify] = Field(
        None, description="Only when the request asked for it (clarify: true) and the top results are close: "
                          "the question and how each answer re-orders the results; null otherwise (also "
                          "for image queries and indexes with no caption source).")


class CaptionEvidence(BaseModel):
    text: str
    score: float
    image_id: str


class CaptionResponse(BaseModel):
    caption: str
    generator: str
    image_id: Optional[str] = None
    evidence: list[CaptionEvidence]
    took_ms: float


class KnnRequest(BaseModel):
    """clip-retrieval's ``/knn-service`` body: every field its ``ClipClient`` sends.

    Honoured: ``text`` | ``image`` | ``image_url`` | ``embedding_input``, ``modality``,
    ``num_images``, ``num_result_ids`` (candidates searched before de-duplication), ``deduplicate``,
    ``indice_name`` (the one index served, see ``/indices-list``), and ``use_safety_model`` when the
    index has safety scores (``mmrag index --safety``: images the model flagged are dropped).
    Accepted but not applied on this server -- named in the response header ``X-Mmrag-Ignored``
    whenever a request asks for them: ``use_safety_model`` on an index without safety scores,
    ``use_violence_detector`` (no violence model here), ``use_mclip`` (the index's own text encoder
    is used), ``aesthetic_score``/``aesthetic_weight`` (no aesthetic embeddings; clip-retrieval's
    back end skips them likewise when it has none). Its client sends the two filters by default,
    so refusing them would break every call."""

    model_config = ConfigDict(extra="allow")
    text: Optional[str] = Field(None, max_length=2000)
    image: Optional[str] = Field(None, description="Image query: base64 bytes or a data: URL.")
    image_url: Optional[str] = None
    embedding_input: Optional[list[float]] = None
    modality: Literal["image", "text"] = Field("image", description='"image": search images, "text": captions.')
    num_images: int = Field(40, ge=1)
    num_result_ids: Optional[int] = Field(None, ge=1)
    indice_name: Optional[str] = None
    deduplicate: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    use_mclip: bool = False
    # clip-retrieval's back end reads "" as unset, like None
    aesthetic_score: Union[int, Literal[""], None] = None
    aesthetic_weight: Union[float, Literal[""], None] = None

    def ignored(self) -> list[str]:
        """The fields this request sets that this server does not apply."""
        out = [k for k in ("use_safety_model", "use_violence_detector", "use_mclip") if getattr(self, k)]
        out += [k for k in ("aesthetic_score", "aesthetic_weight") if getattr(self, k) not in (None, "")]
        return out


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    ids: list[str] = Field(..., max_length=1000)
    indice_name: Optional[str] = None


def any_json_body(model: type[BaseModel]):
    """A dependency parsing the request body as JSON whatever its Content-Type, as
    clip-retrieval's back end does (``get_json(force=True)``): its ``ClipClient`` posts
    ``data=json.dumps(...)`` with no JSON content type. Invalid bodies get the usual 422."""
    async def parse(request: Request) -> BaseModel:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "input": None,
                                           "msg": f"the body is not valid JSON ({e})"}]) from None
        try:
            return model.model_validate(data)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            for err in errors:
                err["loc"] = ("body", *err["loc"])
            raise RequestValidationError(errors, body=data) from None

    return parse


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body read by :func:`any_json_body`."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def decode_base64_image(data: str) -> bytes:
    """Bytes of a base64 string or a ``data:image/...;base64,`` URL."""
    s = data.strip()
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise BadRequestError("data: URLs must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("the image is not valid base64") from None


def image_links(image_id: str) -> tuple[str, str]:
    from urllib.parse import quote

    q = quote(image_id, safe="")
    return f"/images/{q}", f"/thumbnails/{q}"


def hit_to_dict(h: Hit, target: str) -> dict[str, Any]:
    meta = public_metadata(h.metadata)
    if target == "captions":
        image_id = str(meta.get("image_id") or h.id.split("#", 1)[0])
        caption, captions = meta.get("text"), [meta["text"]] if meta.get("text") else []
    else:
        image_id = h.id
        captions = [c for c in (meta.get("captions") or []) if isinstance(c, str)]
        caption = captions[0] if captions else None
    url, thumb = image_links(image_id)
    return {"id": h.id, "score": round(float(h.score), 6), "caption": caption, "captions": captions,
            "image_id": image_id, "image_url": url, "thumbnail_url": thumb, "metadata": meta,
            "relevance": meta.get("relevance")}
