"""The FastAPI app: ``create_app(index_dir)`` -> an ASGI app serving one index.

Areas, one router module each under :mod:`mmrag.serve.routes`: search and clip-retrieval's
``/knn-service`` (``search``), images by id (``images``), captions (``caption``), the
OpenAI-compatible ``/v1/chat/completions`` facade (``openai``), and the tasks built by their own
packages -- chat-retrieval sessions (``chat``), ask/RIR (``ask``), compose/ImageRef (``compose``),
mounted when their packages import. Plus ``/healthz``, ``/metrics`` (Prometheus), the web page at ``/`` and
the OpenAPI schema at ``/openapi.json`` (``/docs`` for a browser).

Errors are JSON ``{"detail": message}``: 400 unreadable input (bad image, bad base64, decompression
bomb), 404 unknown ids, 413 bodies over ``max_upload_bytes``, 422 malformed JSON or invalid
fields, 502 an upstream generator failed, 503 a model or task is not available here.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrag import __version__
from mmrag.encoders.base import Encoder
from mmrag.errors import ImageError, MmragError, ModelUnavailableError
from mmrag.serve.config import ServeConfig
from mmrag.serve.metrics import CONTENT_TYPE_LATEST, MetricsMiddleware, ServeMetrics
from mmrag.serve.service import BadRequestError, NotFoundError, SearchService, UnavailableError

__all__ = ["create_app", "ServeState", "get_state"]

log = logging.getLogger("mmrag.serve")


@dataclass
class ServeState:
    """Everything a request handler needs; one per app (``app.state.mmrag``)."""

    config: ServeConfig
    service: SearchService
    metrics: ServeMetrics
    extras: dict[str, Any] = field(default_factory=dict)  # lazily built parts (captioner, generators)
    lock: threading.RLock = field(default_factory=threading.RLock)  # lazy builds may nest

    def lazy(self, key: str, build):
        """``extras[key]``, built once by ``build()`` (thread-safe, may nest; a failed build is retried)."""
        if key in self.extras:
            return self.extras[key]
        with self.lock:
            if key not in self.extras:
                self.extras[key] = build()
            return self.extras[key]


def get_state(request: Request) -> ServeState:
    return request.app.state.mmrag


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``: at once from Content-Length, or as soon as a
    streamed (chunked) body passes the limit -- before anything is parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        mib = self.max_bytes / (1024 * 1024)
        return f"request body larger than the server's limit of {mib:g} MiB (max_upload_bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing: the client gets this 413.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _json_safe(x: Any) -> Any:
    """``x`` with what JSON cannot hold made readable: NaN/Infinity (which Python's JSON parser
    accepts in request bodies) as the strings "NaN"/"Infinity", bytes and other objects as text."""
    import math

    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bytes, bytearray)):
        return bytes(x[:200]).decode("utf-8", "replace")
    return str(x)


def image_error_message(e: ImageError) -> str:
    """What a client reads for an image it sent that cannot be decoded. The reader names
    in-memory images "<bytes>"/"<image>": to the client it is the file it sent."""
    msg = str(e)
    for placeholder in ("<bytes>: ", "<image>: "):
        if msg.startswith(placeholder):
            msg = "the uploaded file: " + msg[len(placeholder):]
    return f"unreadable image: {msg}"


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable line for a list of pydantic errors: ``k: Input should be a finite number``."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        parts.append((".".join(loc) + ": " if loc else "") + str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError

    from mmrag.generators.base import EndpointError, GeneratorError

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        # FastAPI's own handler echoes the input and fails (HTTP 500) on NaN/Infinity
        errors = [{k: _json_safe(v) for k, v in err.items() if k != "url"} for err in e.errors()]
        message = validation_message(errors)
        if request.url.path.startswith("/v1/"):  # OpenAI's error shape, which its SDKs read
            param = next((".".join(str(p) for p in err.get("loc", ())[1:]) for err in errors), None)
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                           "param": param or None, "code": None}, "detail": errors},
                                status_code=422)
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, e: NotFoundError):
        return _error(404, str(e))

    @app.exception_handler(ImageError)
    async def _bad_image(_: Request, e: ImageError):
        return _error(400, image_error_message(e))

    @app.exception_handler(BadRequestError)
    async def _bad_request(_: Request, e: BadRequestError):
        return _error(400, str(e))

    @app.exception_handler(UnavailableError)
    async def _unavailable(_: Request, e: UnavailableError):
        return _error(503, str(e))

    @app.exception_handler(ModelUnavailableError)
    async def _no_model(_: Request, e: ModelUnavailableError):
        return _error(503, f"model unavailable: {e}")

    @app.exception_handler(EndpointError)
    async def _upstream(_: Request, e: EndpointError):
        return _error(502, f"upstream generator failed: {e}")

    @app.exception_handler(GeneratorError)
    async def _generator(_: Request, e: GeneratorError):
        return _error(400, f"generation failed: {e}")

    @app.exception_handler(MmragError)
    async def _mmrag(_: Request, e: MmragError):
        return _error(400, str(e))

    @app.exception_handler(NotImplementedError)
    async def _unsupported(_: Request, e: NotImplementedError):  # e.g. an image-only encoder, asked a text
        return _error(501, f"not supported by this server's encoder, store or generator: {e or 'NotImplementedError'}")


def static_dir() -> Path:
    return Path(str(resources.files("mmrag.serve").joinpath("static")))


def create_app(index_dir: str | Path, config: ServeConfig | None = None, encoder: Encoder | None = None) -> FastAPI:
    """The app serving ``index_dir``. Loads the index and its encoder now (seconds), so a bad
    index fails here and not on the first request. ``encoder`` shares an already-loaded model."""
    config = config or ServeConfig()
    metrics = ServeMetrics()
    service = SearchService(index_dir, config, encoder=encoder, on_batch=metrics.observe_batch)
    state = ServeState(config=config, service=service, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            closers = [v for v in state.extras.values() if hasattr(v, "close")]
            for c in closers:
                try:
                    c.close()
                except Exception:  # pragma: no cover - best effort at shutdown
                    log.exception("closing %r", c)
            service.close()

    app = FastAPI(
        title="mmrag",
        version=__version__,
        description="Multimodal retrieval-augmented generation over an image collection: search, "
                    "captions, chat retrieval, ask, compose; OpenAI-compatible chat completions.",
        lifespan=lifespan,
    )
    app.state.mmrag = state
    _install_error_handlers(app)

    from mmrag.serve.routes import include_routers

    state.extras["task_features"] = include_routers(app, state)

    @app.get("/healthz", tags=["service"], summary="Liveness and what this server offers")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **service.info(),
                "features": features(state)}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", include_in_schema=True)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if config.page:
        static = static_dir()
        app.mount("/static", StaticFiles(directory=static), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def index_knowledge(state: ServeState) -> dict[str, int]:
    """How many indexed images carry captions and QA pairs (one metadata scan, then cached):
    what decides whether ask and chat completions can work here."""

    def scan() -> dict[str, int]:
        s = state.service.searcher
        ids = list(s.ids())
        n_cap = n_qa = 0
        for start in range(0, len(ids), 1024):
            for m in s.metadata(ids[start:start + 1024]):
                m = m or {}
                n_cap += bool(m.get("captions"))
                n_qa += bool(m.get("qa"))
        return {"captioned_images": n_cap, "qa_images": n_qa}

    return state.lazy("index_knowledge", scan)


def features(state: ServeState) -> dict[str, Any]:
    """What the web page may show: search always; the rest when it can work on this server and
    index. ``unavailable`` says, for each feature that is off, why."""
    svc = state.service
    know = index_knowledge(state)
    unavailable: dict[str, str] = {}
    caption = svc.searcher.count("captions") > 0 or state.config.caption_datastore is not None
    if not caption:
        unavailable["caption"] = "the index has no captions and the server no caption datastore (--caption-datastore)"
    # consensus/extractive pick among the retrieved captions: nothing to pick on an uncaptioned index
    chat_completions = know["captioned_images"] > 0 or state.config.generator not in ("consensus", "extractive")
    if not chat_completions:
        unavailable["chat_completions"] = (f"the {state.config.generator} generator answers from the retrieved "
                                           "images' captions and this index has none; caption it or serve "
                                           "with a language-model generator (--generator local)")
    f = {"search": True, "image_search": True, "caption": caption, "chat_completions": chat_completions,
         "url_fetch": state.config.allow_url_fetch, "max_upload_bytes": state.config.max_upload_bytes,
         "max_k": state.config.max_k, "default_k": state.config.default_k}
    f.update(state.extras.get("task_features", {}))
    if f.get("ask") and not (know["qa_images"] or know["captioned_images"]):
        f["ask"] = False
        unavailable["ask"] = ("this index has neither QA pairs nor captions to answer from; caption it "
                              "(`mmrag caption`) or index a VQA dataset")
    if "compose" in f and not f["compose"]:
        unavailable.setdefault("compose", "the index holds no documents to compose answers from")
    f["unavailable"] = unavailable
    return f
