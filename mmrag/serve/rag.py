"""Retrieval-augmented answering over the served index, for ``/v1/chat/completions``.

The last user message (its text, and its image when it has one) queries the index; the top
``k`` images and their captions are the evidence; a generator chosen by name writes the answer:

* ``consensus`` (no language model): the evidence caption that agrees most with the others
  (CIDEr-D consensus) -- i.e. "what the retrieved images show";
* ``local`` / ``openai``: a system message listing the evidence, then the conversation; the user's
  image is passed on to ``openai`` endpoints (vision models) and ignored by the text-only
  ``local`` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrag.generators.base import GenerationRequest, check_messages, create_generator
from mmrag.serve.schemas import decode_base64_image, hit_to_dict
from mmrag.serve.service import BadRequestError, Query, UnavailableError

__all__ = ["RagAnswer", "RagPipeline", "RAG_SYSTEM", "split_content"]

RAG_SYSTEM = (
    "You answer questions about an image collection. Use only the retrieved images below, cited as "
    "[n]; if they do not answer the question, say so briefly.\n\nRetrieved images:\n{context}"
)


@dataclass
class RagAnswer:
    text: str
    generator: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str = "stop"


def split_content(content: Any) -> tuple[str, list[str]]:
    """(text, image URLs) of an OpenAI message ``content`` (a string or a list of parts)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequestError("message content must be a string or a list of content parts")
    texts, images = [], []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequestError("content parts must be objects with a 'type'")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise BadRequestError("image_url parts need an image_url.url")
            images.append(url)
        else:
            raise BadRequestError(f"unsupported content part type {kind!r} (use 'text' or 'image_url')")
    return "\n".join(t for t in texts if t), images


def servable_generators(config) -> list[str]:
    """The generators a request may name: the registered and installed ones, and the server's
    own ``--generator`` (which the operator may have named by ``MODULE:NAME``). A request never
    brings an import path of its own: resolving it would import any module on the server."""
    from mmrag.generators import GENERATORS

    names = GENERATORS.names()
    return names if config.generator in names else names + [config.generator]


def check_generator(config, name: str) -> str:
    """``name`` if a request may use it (:func:`servable_generators`), else a 400."""
    names = servable_generators(config)
    if name not in names:
        raise BadRequestError(f"unknown generator {name!r}; available: {', '.join(names)}")
    return name


class RagPipeline:
    """Retrieve from ``state``'s index, then generate. Generators are built once per name."""

    def __init__(self, state):
        self.state = state

    def generator(self, name: str):
        check_generator(self.state.config, name)
        opts = dict(self.state.config.generator_options.get(name, {}))
        if name == "openai" and not opts.get("base_url"):
            # never default to 127.0.0.1:8000 -- that may be this very server, calling itself
            raise UnavailableError("the openai generator needs an upstream endpoint: start the server with "
                                   "--generator-opt openai.base_url=http://HOST:PORT/v1")
        if name == "consensus":
            opts.setdefault("similarity", "cider")
        return self.state.lazy(f"generator:{name}", lambda: create_generator(name, **opts))

    async def _image_bytes(self, url: str) -> bytes:
        if url.startswith("data:"):
            return decode_base64_image(url)
        if url.startswith(("http://", "https://")):
            from mmrag.serve.routes.search import fetch_image_url

            return await fetch_image_url(self.state, url)
        raise BadRequestError("image_url must be a data: URL (or http(s) when the server allows URL fetching)")

    async def answer(self, messages: list[dict[str, Any]], generator: str, k: int | None = None,
                     max_tokens: int = 256, temperature: float = 0.0, stop: list[str] | None = None) -> RagAnswer:
        import asyncio

        if not messages:
            raise BadRequestError("messages is empty")
        try:
            check_messages(messages)
        except Exception as e:
            raise BadRequestError(str(e)) from None
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise BadRequestError("there is no user message to answer")
        text, urls = split_content(users[-1]["content"])
        raw = await self._image_bytes(urls[-1]) if urls else None
        image = await asyncio.to_thread(self.state.service.decode_upload, raw) if raw is not None else None
        if not text.strip() and image is None:
            raise BadRequestError("the last user message has neither text nor an image")
        gen = self.generator(generator)
        k = k or self.state.config.rag_k
        hits = await self.state.service.search(Query(text=text or None, image=image, k=k))
        evidence = [hit_to_dict(h, "images") for h in hits]
        if not evidence:
            raise BadRequestError("the index returned nothing to answer from")
        if gen.reads_evidence:
            caps, scores = [], []
            for e in evidence:
                for c in e["captions"]:
                    caps.append(c)
                    scores.append(e["score"])
            if not caps:
                raise BadRequestError("the retrieved images have no captions; the consensus generator needs "
                                      "captions (choose a language-model generator)")
            req = GenerationRequest(evidence=caps, evidence_scores=scores, max_tokens=max_tokens)
        else:
            context = "\n".join(
                f"[{i}] {e['image_id']} (similarity {e['score']:.2f}): " + (" / ".join(e["captions"][:3]) or "(no caption)")
                for i, e in enumerate(evidence, 1))
            convo = []
            for m in messages:
                if m["role"] == "system":
                    continue
                t, _ = split_content(m["content"])
                convo.append({"role": m["role"], "content": t})
            req = GenerationRequest(messages=[{"role": "system", "content": RAG_SYSTEM.format(context=context)}, *convo],
                                    images=[raw] if raw is not None else [], max_tokens=max_tokens,
                                    temperature=temperature, stop=stop)
        res = await asyncio.to_thread(gen.generate, req)
        return RagAnswer(text=res.text, generator=gen.name, evidence=evidence,
                         usage=res.usage if isinstance(res.usage, dict) else None,
                         finish_reason=getattr(res, "finish_reason", None) or "stop")
