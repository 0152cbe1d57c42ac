"""Networks exported to ONNX once and cached, and the CPU sessions that run them.

Used by the EfficientNet-Lite0 image features and the MiniLM text model: both export a torch
network on first use, keep the file under ``mmrag.paths.cache_dir()`` keyed by what it depends
on, and run it with ONNX Runtime on CPU.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

from mmrag.paths import cache_dir

_EXPORT_LOCK = threading.Lock()


def file_stamp(path: str | Path) -> str:
    """Size and modification time of a file: a cheap key part that changes when the file does."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def cached_onnx(stem: str, key_source: str, export: Callable[[Path], None]) -> Path:
    """``cache_dir()/<stem>-<hash of key_source>.onnx``, written by ``export(tmp_path)`` if absent.

    The file is written under a temporary name and renamed into place (atomic): a concurrent
    first run in another process never sees a half-written graph. ``key_source`` should name
    everything the graph depends on (weights, config, export code version).
    """
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    out = cache_dir() / f"{stem}-{key}.onnx"
    if out.exists():
        return out
    with _EXPORT_LOCK:  # threads of one process export once
        if not out.exists():
            tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
            try:
                export(tmp)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
    return out


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def cpu_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: cores, at most 8)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
