"""HTTP service and web page: ``create_app(index_dir)`` and ``mmrag serve``."""

from mmrag.serve.app import create_app
from mmrag.serve.config import ServeConfig

__all__ = ["create_app", "ServeConfig"]
