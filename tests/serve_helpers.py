"""Shared by the service tests: a small real index and a real uvicorn server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

N_PER_SPLIT = 10  # 10 dev + 10 test Flickr8k images: enough to rank, quick to embed


def build_serve_index(flickr8k_dir: Path, out_dir: Path, encoder) -> tuple[Path, list]:
    """Index the first Flickr8k dev and test images (with their 5 captions each)."""
    from mmrag.corpus.items import Corpus
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    items = []
    for split in ("dev", "test"):
        items += read_corpus("flickr8k", flickr8k_dir, split=split, limit=N_PER_SPLIT).items
    corpus = Corpus("flickr8k-serve-test", Path(flickr8k_dir), items)
    build_index(corpus, out_dir, encoder, IndexConfig(progress=False))
    return out_dir, items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, timeout: float = 60.0):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)
