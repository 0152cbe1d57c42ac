"""OpenAI-compatible facade: ``GET /v1/models``, ``POST /v1/chat/completions`` (also streamed).

Chat front ends (Open WebUI, the OpenAI SDKs, mmrag's own ``openai`` generator) can use mmrag as
if it were a model: every answer is retrieval-augmented over the served index (see
:mod:`mmrag.serve.rag`). The model name picks the generator: ``mmrag`` = the server's default,
``mmrag-consensus`` / ``mmrag-local`` / ``mmrag-openai`` (or the bare generator names). Answers
carry the retrieved evidence in an extra ``mmrag`` field. Errors use OpenAI's shape
``{"error": {"message", "type", "code"}}``. ``usage`` counts whitespace-separated words unless
the generator reports real token counts.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional, Union

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mmrag.errors import ImageError, MmragError, ModelUnavailableError
from mmrag.serve.app import ServeState, get_state, image_error_message
from mmrag.serve.rag import RagPipeline, split_content
from mmrag.serve.service import BadRequestError, NotFoundError, UnavailableError

router = APIRouter(prefix="/v1", tags=["openai"])

MODEL_PREFIX = "mmrag"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send many optional keys
    model: str = MODEL_PREFIX
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=4096)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1)
    k: Optional[int] = Field(None, ge=1, le=100, description="mmrag: images to retrieve.")


def generator_for_model(model: str, config) -> str:
    from mmrag.serve.rag import servable_generators

    names = servable_generators(config)
    if model in (MODEL_PREFIX, ""):
        return config.generator
    name = model[len(MODEL_PREFIX) + 1:] if model.startswith(MODEL_PREFIX + "-") else model
    if name not in names:
        raise NotFoundError(f"unknown model {model!r}; available: "
                            + ", ".join([MODEL_PREFIX] + [f"{MODEL_PREFIX}-{n}" for n in names]))
    return name


def _openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


@router.get("/models", summary="Models (= generators) this server answers with")
def models() -> dict:
    from mmrag.generators import GENERATORS

    now = int(time.time())
    ids = [MODEL_PREFIX] + [f"{MODEL_PREFIX}-{n}" for n in GENERATORS.names()]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "mmrag"} for i in ids]}


def _words(text: str) -> int:
    return len(text.split())


@router.post("/chat/completions", summary="OpenAI-compatible chat completion, retrieval-augmented")
async def chat_completions(body: ChatCompletionRequest, state: ServeState = Depends(get_state)):
    messages = [{"role": m.role, "content": m.content if m.content is not None else ""} for m in body.messages]
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    try:
        gen = generator_for_model(body.model, state.config)
        ans = await RagPipeline(state).answer(messages, gen, k=body.k,
                                              max_tokens=body.max_tokens or body.max_completion_tokens or 256,
                                              temperature=body.temperature, stop=stop)
    except NotFoundError as e:
        return _openai_error(404, str(e), "invalid_request_error", "model_not_found")
    except ImageError as e:
        return _openai_error(400, image_error_message(e), "invalid_request_error")
    except BadRequestError as e:
        return _openai_error(400, str(e), "invalid_request_error")
    except (UnavailableError, ModelUnavailableError) as e:
        return _openai_error(503, str(e), "server_error", "model_unavailable")
    except MmragError as e:  # generator / upstream failures
        return _openai_error(502, f"generation failed: {e}", "server_error")
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    prompt_words = sum(_words(split_content(m["content"])[0]) for m in messages)
    usage = ans.usage or {"prompt_tokens": prompt_words, "completion_tokens": _words(ans.text),
                          "total_tokens": prompt_words + _words(ans.text)}
    extra = {"generator": ans.generator,
             "evidence": [{"id": e["id"], "score": e["score"], "caption": e["caption"], "image_url": e["image_url"]}
                          for e in ans.evidence]}
    if not body.stream:
        return {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": ans.finish_reason, "logprobs": None}],
                "usage": usage, "mmrag": extra}

    def chunk(delta: dict, finish: str | None = None) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"

    def events():
        # the answer is complete before the first byte: streamed in word groups for clients that
        # only speak the streaming protocol (Open WebUI's default)
        yield chunk({"role": "assistant", "content": ""})
        words = ans.text.split(" ")
        for i in range(0, len(words), 8):
            piece = " ".join(words[i:i + 8])
            yield chunk({"content": piece if i == 0 else " " + piece})
        last = json.loads(chunk({}, ans.finish_reason)[6:])
        last["mmrag"] = extra
        yield "data: " + json.dumps(last, ensure_ascii=False) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
