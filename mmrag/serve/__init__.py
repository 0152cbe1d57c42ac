"""HTTP service and web page: ``create_app(index_dir)`` and ``mmrag serve``.

Imported lazily, so ``mmrag`` (and its CLI) still starts where the web stack is not installed;
``mmrag serve`` then says what is missing.
"""

from __future__ import annotations

__all__ = ["create_app", "ServeConfig"]


def __getattr__(name: str):
    if name == "create_app":
        from mmrag.serve.app import create_app

        return create_app
    if name == "ServeConfig":
        from mmrag.serve.config import ServeConfig

        return ServeConfig
    raise AttributeError(f"module 'mmrag.serve' has no attribute {name!r}")
