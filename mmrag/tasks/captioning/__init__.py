"""Retrieval-augmented captioning (mRAG-gim): caption datastore, captioner, refinement."""

from mmrag.tasks.captioning.captioner import (
    DEFAULT_K,
    DEFAULT_SIMILARITY,
    MAX_K,
    CaptionResult,
    MRagCaptioner,
    build_prompt,
    evaluate_captioner,
)
from mmrag.retrieval.datastore import (
    CaptionDatastore,
    CaptionHit,
    DatastoreError,
    default_datastore,
)
from mmrag.tasks.captioning.refine import RefineReport, refine_datastore

__all__ = [
    "DEFAULT_K",
    "DEFAULT_SIMILARITY",
    "MAX_K",
    "CaptionDatastore",
    "CaptionHit",
    "CaptionResult",
    "DatastoreError",
    "MRagCaptioner",
    "RefineReport",
    "build_prompt",
    "default_datastore",
    "evaluate_captioner",
    "refine_datastore",
]
