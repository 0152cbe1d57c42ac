"""The FAISS store's crash-safe cache files: the index file and the ``index.json`` marker.

``index-<gen>-<rand>.faiss`` holds a FAISS index keyed by SQLite row ids; ``index.json`` names
the current one and the SQLite state it reflects (uuid, dim, metric, generation, row count,
tombstones, index kind, training size, nlist). :func:`write_cache` writes the index to a *new*
file (fsync), then atomically replaces the marker (temp file + fsync + ``os.replace`` + directory
fsync) -- that rename is the single commit point. :func:`cleanup_files` then deletes every other
index file and leftover temp file. A ``kill -9`` at any moment therefore leaves either the old or
the new marker, each pointing at a complete file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import faiss

from mmrag.index.sqlite_meta import FORMAT_VERSION

__all__ = ["MARKER_NAME", "cleanup_files", "fsync_dir", "load_index", "read_marker", "write_cache"]

MARKER_NAME = "index.json"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_marker(path: Path, store_uuid: str, dim: int, metric: str) -> dict[str, Any] | None:
    """The marker of the store in ``path``, or None when missing, unreadable, of another format
    or of another store (uuid, dim or metric differ)."""
    try:
        marker = json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT_VERSION:
        return None
    if marker.get("uuid") != store_uuid or marker.get("dim") != dim or marker.get("metric") != metric:
        return None
    return marker


def load_index(path: Path, marker: dict[str, Any], dim: int) -> faiss.Index:
    """The index file the marker names; raises when it is missing, unreadable or of another dim."""
    index = faiss.read_index(str(path / marker["file"]))
    if index.d != dim:
        raise ValueError("dimension mismatch")
    return index


def write_cache(path: Path, index: faiss.Index, *, store_uuid: str, kind: str, dim: int, metric: str,
                generation: int, count: int, dead: int, trained_n: int, nlist: int | None) -> str:
    """Write ``index`` to a new file and commit a marker naming it; returns the file name.
    (The caller then removes the old files with :func:`cleanup_files`.)"""
    name = f"index-{generation:012d}-{uuid.uuid4().hex[:8]}.faiss"
    tmp = path / (name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path / name)
    marker = {
        "format": FORMAT_VERSION,
        "uuid": store_uuid,
        "file": name,
        "kind": kind,
        "dim": dim,
        "metric": metric,
        "generation": generation,
        "count": count,
        "dead": dead,
        "trained_n": trained_n,
        "nlist": nlist,
    }
    mtmp = path / (MARKER_NAME + ".tmp")
    with open(mtmp, "w") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path)  # the new index file's name is durable before the marker names it
    os.replace(mtmp, path / MARKER_NAME)  # the commit point
    fsync_dir(path)
    return name


def cleanup_files(path: Path, keep: str | None) -> None:
    """Delete index files other than ``keep`` and leftover temp files."""
    for p in path.iterdir():
        if p.name == keep:
            continue
        if (p.name.startswith("index-") and (p.suffix in (".faiss", ".tmp"))) or p.name == MARKER_NAME + ".tmp":
            try:
                p.unlink()
            except OSError:
                pass
