"""``mmrag serve``: the HTTP service and web page for one index (routes in :mod:`mmrag.serve.routes`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from mmrag.cli.common import err, fail, parse_generator_options


def serve(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index directory to serve (from `mmrag index`)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    batching: bool = typer.Option(True, help="Micro-batch concurrent queries into one model call."),
    max_batch: int = typer.Option(64, help="Most queries per micro-batch."),
    max_wait_ms: float = typer.Option(2.0, help="How long a query waits for company before its batch runs."),
    text_workers: int = typer.Option(2, help="Threads embedding text batches in parallel (about one per core)."),
    model_threads: int = typer.Option(1, help="Model intra-op threads: text ONNX session and torch (0: defaults)."),
    image_threads: int = typer.Option(1, help="Image network intra-op threads (0: all cores). One keeps a core free "
                                              "for text queries while images are embedded."),
    max_upload_mb: float = typer.Option(10.0, help="Largest request body (uploads) in MiB; larger get 413."),
    max_k: int = typer.Option(200, help="Largest number of results a query may ask for."),
    allow_url_fetch: bool = typer.Option(False, help="Let clients name http(s) image URLs for the server to "
                                                     "download (off: the server never fetches URLs)."),
    allow_private_urls: bool = typer.Option(False, help="With --allow-url-fetch: let those URLs reach loopback and "
                                                        "private addresses (off: public addresses only)."),
    generator: str = typer.Option("consensus", help="Default generator for captions and /v1/chat/completions: "
                                                    "consensus, local or openai."),
    generator_opt: list[str] = typer.Option([], "--generator-opt",
                                            help="Generator option GENERATOR.KEY=VALUE (repeatable), e.g. "
                                                 "openai.base_url=http://127.0.0.1:8080/v1"),
    caption_datastore: Optional[str] = typer.Option(
        None, help="Captions to caption with: the index's own (default), 'flickr8k', or a saved datastore file."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow browser pages from this origin "
                                                                    "(repeatable), e.g. a clip-retrieval front end."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
    access_log: bool = typer.Option(False, help="Log every request (costs throughput under load)."),
):
    """Serve an index over HTTP: search API, clip-retrieval /knn-service, captions, chat
    sessions, OpenAI-compatible /v1/chat/completions, Prometheus /metrics and a web page at /."""
    # Several threads call OpenMP code here (text model, FAISS). OpenMP's default active wait
    # makes idle worker threads spin after each call and starve the others: on 2 cores one text
    # embedding went from 20 ms to 500 ms. Must be set before torch/faiss load their runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import uvicorn

        from mmrag.serve.app import create_app
    except ModuleNotFoundError as e:
        fail(f"`mmrag serve` needs {e.name}, which is not installed: "
             "pip install fastapi uvicorn python-multipart prometheus-client")
    from mmrag.serve.config import MIB, ServeConfig

    if not 0 <= port <= 65535:
        fail(f"--port must be within [0, 65535], got {port}")
    if not 0 < max_upload_mb < float("inf"):  # also False for NaN
        fail(f"--max-upload-mb must be a finite number > 0, got {max_upload_mb}")
    try:
        config = ServeConfig(batching=batching, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             text_workers=text_workers, model_threads=model_threads or None,
                             image_threads=image_threads or None,
                             max_upload_bytes=int(max_upload_mb * MIB), max_k=max_k, allow_url_fetch=allow_url_fetch,
                             url_fetch_private=allow_private_urls,
                             generator=generator, generator_options=parse_generator_options(generator_opt),
                             caption_datastore=caption_datastore, cors_origins=list(cors_origin))
    except ValueError as e:  # the config's own checks, reported like any other bad option
        fail(str(e))
    err.print(f"loading {index_dir} ...")
    app = create_app(index_dir, config)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    err.print(f"[bold]mmrag[/] serving {index_dir} at http://{shown}:{port}/  (API docs: /docs)")
    # one worker: the model and index are loaded once; concurrency comes from micro-batching
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, access_log=access_log)
