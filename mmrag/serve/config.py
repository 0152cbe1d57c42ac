"""Server settings as one plain dataclass (the CLI's options map onto its fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass
class ServeConfig:
    """How ``mmrag serve`` behaves. Defaults suit one user on a laptop and a small team server.

    Batching: ``batching`` groups concurrent queries into one model call and one FAISS call
    (see :mod:`mmrag.serve.batching`); ``max_batch``/``max_wait_ms`` bound a batch.
    Threads: ``text_workers`` threads embed text batches in parallel (one per core suits a
    CPU-bound model); ``model_threads`` is the intra-op thread count of the text model's ONNX
    Runtime session and of torch for the whole process (1: parallelism comes from concurrent
    requests, and no OpenMP barrier waits for a core that another process holds -- on a busy
    2-core machine 2 threads made one text embedding 20x slower); None leaves the defaults.
    ``image_threads``: the image network's intra-op threads (1: an image search, ~70 ms of CPU,
    leaves the other core to text queries, which is what keeps text latency low under mixed load;
    None: all cores, faster single images on an idle server).
    Limits: request bodies above ``max_upload_bytes`` get 413; images above
    ``max_image_pixels`` (decompression bombs) get 400 before they are decoded; ``k`` is capped
    at ``max_k``. ``allow_url_fetch``: whether ``/knn-service`` and ``/v1/chat/completions`` may
    download ``http(s)`` image URLs (off: the server never makes outbound requests for a client);
    ``url_fetch_private``: whether those URLs (and their redirects) may reach loopback, private,
    link-local or other non-public addresses (off: only public ones -- a client must not make the
    server probe its own network; on: e.g. an intranet image server).
    Generation: ``generator`` is the default for ``/v1/chat/completions`` and captions;
    ``generator_options`` holds per-generator keyword arguments, e.g.
    ``{"openai": {"base_url": "http://127.0.0.1:8080/v1"}}``. ``caption_datastore``: ``None``
    uses the index's own captions (no embedding needed), ``"flickr8k"`` the Flickr8k train
    captions, or a path to a saved :class:`~mmrag.tasks.captioning.CaptionDatastore`.
    """

    batching: bool = True
    max_batch: int = 64
    max_wait_ms: float = 2.0
    text_workers: int = 2
    model_threads: int | None = 1
    image_threads: int | None = 1
    max_upload_bytes: int = 10 * MIB
    max_image_pixels: int = 40_000_000
    max_k: int = 200
    default_k: int = 20
    allow_url_fetch: bool = False
    url_fetch_private: bool = False
    url_fetch_timeout_s: float = 10.0
    generator: str = "consensus"
    generator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    caption_datastore: str | None = None
    caption_k: int | None = None
    rag_k: int = 10
    thumbnail_px: int = 256
    thumbnail_cache: int = 2048
    chat_max_sessions: int = 200
    chat_session_ttl_s: float = 1800.0
    cors_origins: list[str] = field(default_factory=list)
    page: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if not 0 <= self.max_wait_ms < float("inf"):  # also False for NaN
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        if self.text_workers < 1:
            raise ValueError(f"text_workers must be >= 1, got {self.text_workers}")
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes must be at least 1 KiB")
        if self.max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {self.max_k}")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError("default_k must be within [1, max_k]")
        for name in ("model_threads", "image_threads"):
            n = getattr(self, name)
            if n is not None and n < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the runtime's default), got {n}")
        from mmrag.errors import UnknownNameError
        from mmrag.generators import GENERATORS

        try:  # (the operator's own MODULE:NAME is imported here, once, not by a request)
            GENERATORS.factory(self.generator)
        except UnknownNameError as e:  # it served, and failed every request that generates
            raise ValueError(str(e)) from None
