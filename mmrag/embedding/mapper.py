"""mapper: rows -> content hashes, image embeddings and caption embeddings (one encoder, loaded once)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.encoders.base import Encoder, create_encoder


@dataclass
class MappedBatch:
    rows: list[dict]                # the input rows, in order
    img_emb: np.ndarray             # [n, dim]; zero rows where ``errors`` has an entry
    sha256: list[str]               # "" where the file could not be read
    errors: list[str]               # "" for embedded images, else the reason it was left out
    text_emb: np.ndarray            # [m, dim]: captions of the embedded images, row order
    n_captions: list[int]           # per row (0 where the image failed)
    caption_prior: list[list[float]] = field(default_factory=list)  # per row, empty without a prior


class EmbeddingMapper:
    """Embeds rows of :func:`mmrag.inference.reader.item_records` with one encoder.

    Failures are per image, never per batch: an unreadable file gets the same reason the
    sequential indexer gives, and its captions are not embedded.
    """

    def __init__(self, encoder: Encoder | None = None, encoder_name: str = "effnet-minilm",
                 encoder_options: dict[str, Any] | None = None, embed_batch_size: int = 32):
        self.encoder = encoder or create_encoder(encoder_name, **(encoder_options or {}))
        self.embed_batch_size = embed_batch_size

    def __call__(self, rows: list[dict]) -> MappedBatch:
        from mmrag.indexer import _embed_images, file_sha256

        dim = self.encoder.dim
        sha, errors = [""] * len(rows), [""] * len(rows)
        readable = []
        for i, r in enumerate(rows):
            try:
                sha[i] = file_sha256(Path(r["path"]))
                readable.append(i)
            except OSError as e:
                errors[i] = f"cannot read file ({e.strerror or e})"
        img = np.zeros((len(rows), dim), np.float32)
        if readable:
            vecs, errs = _embed_images(self.encoder, [Path(rows[i]["path"]) for i in readable], self.embed_batch_size)
            img[readable] = vecs
            for j, reason in errs.items():
                errors[readable[j]] = reason
                img[readable[j]] = 0.0
        texts, n_caps = [], []
        for i, r in enumerate(rows):
            caps = json.loads(r["captions"]) if not errors[i] else []
            texts.extend(caps)
            n_caps.append(len(caps))
        text = self.encoder.embed_texts(texts) if texts else np.zeros((0, dim), np.float32)
        prior = self.encoder.caption_prior(text) if len(texts) else None
        priors: list[list[float]] = []
        off = 0
        for n in n_caps:
            priors.append([] if prior is None else [float(p) for p in prior[off : off + n]])
            off += n
        return MappedBatch(rows, img, sha, errors, np.asarray(text, np.float32), n_caps, priors)
