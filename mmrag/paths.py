"""Where mmrag keeps files of its own (caches, exported models, sample data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MMRAG_CACHE``, else ``$XDG_CACHE_HOME/mmrag``, else ``~/.cache/mmrag``; created on use."""
    root = os.environ.get("MMRAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmrag"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def repo_data_dir() -> Path | None:
    """The shared data folder beside a clone (``../shared/data``) or ``$MMRAG_DATA``; None if absent."""
    env = os.environ.get("MMRAG_DATA")
    if env:
        return Path(env) if Path(env).exists() else None
    p = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return p if p.exists() else None


def write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """Write ``data`` as UTF-8 JSON atomically (temp file + rename: never a half-written file)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path
