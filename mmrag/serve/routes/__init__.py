"""The HTTP endpoints, one module per area: :mod:`.search` (search and clip-retrieval's
``/knn-service``), :mod:`.images` (images by id), :mod:`.caption` (captions), :mod:`.openai`
(``/v1/chat/completions``), and the tasks' :mod:`.chat` (sessions), :mod:`.ask` (RIR) and
:mod:`.compose` (ImageRef). :func:`include_routers` mounts them all on an app."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the route modules import the app module, which imports this one lazily
    from mmrag.serve.app import ServeState

__all__ = ["include_routers", "mount_tasks"]

log = logging.getLogger("mmrag.serve")


def mount_tasks(app, state: "ServeState") -> dict[str, bool]:
    """Include the task routers whose task packages import; return ``{feature: available}``."""
    from mmrag.serve.routes.ask import ask_router
    from mmrag.serve.routes.chat import chat_router
    from mmrag.serve.routes.compose import compose_router, is_document_index

    feats: dict[str, bool] = {}
    for name, build in (("chat", chat_router), ("ask", ask_router), ("compose", compose_router)):
        try:
            app.include_router(build(state))
            feats[name] = True
        except ImportError as e:  # that task is not part of this build
            log.warning("%s endpoints unavailable: %s", name, e)
            feats[name] = False
    if feats["compose"]:  # composing needs documents in the index
        feats["compose"] = is_document_index(state.service.index_dir)
    return feats


def include_routers(app, state: "ServeState") -> dict[str, bool]:
    """Every area's router on ``app``; returns the task features (see :func:`mount_tasks`)."""
    from mmrag.serve.routes import caption, images, openai, search

    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(caption.router)
    app.include_router(openai.router)
    return mount_tasks(app, state)
