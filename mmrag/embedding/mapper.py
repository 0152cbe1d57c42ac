"""mapper: rows -> content hashes, image embeddings and caption embeddings (one encoder, loaded once)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmrag.embedding.enrich import create_enrichers, enrich_rows
from mmrag.encoders.base import Encoder, create_encoder

# (rows, sha256, errors) -> positions worth embedding; see EmbeddingMapper.__call__
Admit = Callable[[list[dict], list[str], list[str]], list[int]]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class MappedBatch:
    rows: list[dict]                # the input rows, in order
    img_emb: np.ndarray             # [n, dim]; zero rows for images not embedded
    sha256: list[str]               # "" where the file could not be read
    errors: list[str]               # "" for readable files, else why the image was left out
    text_emb: np.ndarray            # [m, dim]: captions of the embedded images, row order
    n_captions: list[int]           # per row (0 where the image was not embedded)
    caption_prior: list[list[float]] = field(default_factory=list)  # per row, empty without a prior
    admitted: list[int] | None = None  # positions the writer's admit chose (None: every readable one)
    image_prior: list[float | None] = field(default_factory=list)  # per row; None (or empty list): no prior


class EmbeddingMapper:
    """Embeds rows of :func:`mmrag.embedding.reader.item_records` with one encoder.

    Failures are per image, never per batch: an unreadable file gets a reason, and its captions
    are not embedded.
    """

    def __init__(self, encoder: Encoder | None = None, encoder_name: str = "effnet-minilm",
                 encoder_options: dict[str, Any] | None = None, embed_batch_size: int = 32,
                 on_rows: Callable[[int], None] | None = None, enrichers: Sequence[str] = ()):
        self.encoder = encoder or create_encoder(encoder_name, **(encoder_options or {}))
        self.embed_batch_size = embed_batch_size
        self.on_rows = on_rows  # called with how many rows were just done (a progress bar's update)
        self.enrichers = create_enrichers(enrichers)  # by name: Ray actors build their own

    def __call__(self, rows: list[dict], admit: Admit | None = None) -> MappedBatch:
        """Hash every file, then embed the readable ones -- or only those ``admit`` returns
        (the local writer drops duplicates of indexed images there, so they are never embedded)."""
        dim = self.encoder.dim
        sha, errors = [""] * len(rows), [""] * len(rows)
        for i, r in enumerate(rows):
            try:
                sha[i] = file_sha256(Path(r["source"]))
            except OSError as e:
                errors[i] = f"cannot read file ({e.strerror or e})"
        keep = admit(rows, sha, errors) if admit is not None else [i for i in range(len(rows)) if not errors[i]]
        img = np.zeros((len(rows), dim), np.float32)
        if self.on_rows is not None and len(rows) > len(keep):
            self.on_rows(len(rows) - len(keep))  # not embedded: done
        # One call for the whole batch, so the encoder decodes ahead across its mini-batches (a
        # call per mini-batch drained that pipeline at each boundary: ~6 % slower indexing); the
        # progress callback still moves the bar per mini-batch.
        reported = 0

        def on_done(done: int) -> None:
            nonlocal reported
            if self.on_rows is not None and done > reported:
                self.on_rows(done - reported)
                reported = done

        if keep:
            vecs, errs = self.encoder.embed_images_safe([Path(rows[i]["source"]) for i in keep],
                                                        batch_size=max(1, self.embed_batch_size), progress=on_done)
            img[keep] = vecs
            for j, reason in errs.items():
                errors[keep[j]] = reason
                img[keep[j]] = 0.0
        on_done(len(keep))  # what the encoder did not count (e.g. images it could not open)
        enrich_rows(self.enrichers, rows, [i for i in keep if not errors[i]])
        texts, n_caps = [], [0] * len(rows)
        for i in keep:
            if not errors[i]:
                caps = json.loads(rows[i]["captions"])
                texts.extend(caps)
                n_caps[i] = len(caps)
        text = self.encoder.embed_texts(texts) if texts else np.zeros((0, dim), np.float32)
        prior = self.encoder.caption_prior(text) if len(texts) else None
        priors: list[list[float]] = []
        off = 0
        for n in n_caps:
            priors.append([] if prior is None else [float(p) for p in prior[off : off + n]])
            off += n
        # the text->image hubness prior of each embedded image (see Encoder.image_prior)
        good = [i for i in keep if not errors[i]]
        ip = self.encoder.image_prior(img[good]) if good else None
        image_prior: list[float | None] = [None] * len(rows)
        if ip is not None:
            for i, p in zip(good, ip):
                image_prior[i] = float(p)
        return MappedBatch(rows, img, sha, errors, np.asarray(text, np.float32), n_caps, priors,
                           None if admit is None else keep, image_prior)
