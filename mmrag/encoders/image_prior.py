"""A per-image hubness prior for text->image search (issue 15), the mirror image of the
captions' prior (:meth:`mmrag.encoders.bridge.Bridge.caption_prior`).

Some images sit near many captions ("hubs") and come up for any query. Each image gets a prior
``alpha * (1/beta) * logsumexp(beta * cos(image, bank))`` against a fixed bank of training
captions (in the shared space), computed once at indexing time; text->image search ranks by
``cos - prior``. Applied to every query, that costs one-word concept queries ("broccoli"),
which are themselves hub queries, so the correction is *gated* like QB-Norm's dynamic inverted
softmax (Bogolin et al., CVPR 2022): a query is corrected only when its raw top-1 image is a hub,
here gallery-free: its prior is above ``gate``, the ``gate_quantile`` of the priors of the
bridge's bank of training images. Chosen on Flickr8k dev + COCO dev (docs/benchmarks.md,
"Hubness correction that spares concept queries").

The prior does not change any vector, so it is not part of the encoder's fingerprint. It lives
in a small sidecar file next to its bridge (``image_prior_<bridge stem>.npz`` for a shipped
bridge, ``<bridge stem>.image_prior.npz`` for a user's), written by ``mmrag bridge image-prior``,
and is used only with the bridge it was fitted for (:func:`bridge_id`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmrag.encoders.bridge import UNREADABLE
from mmrag.errors import ModelUnavailableError

FORMAT_VERSION = 1


@dataclass
class ImagePriorConfig:
    alpha: float = 0.5          # weight of the prior in cos - alpha * lse
    beta: float = 20.0          # inverse temperature of the logsumexp
    gate_quantile: float = 0.6  # of the training bank images' priors: above it a top-1 is a hub
    bank_size: int = 5000       # training captions in the bank
    seed: int = 1               # which captions (numpy default_rng)


def bridge_id(bridge) -> str:
    """What identifies the bridge a prior was fitted for (its text centring and image bank)."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(bridge.y_mean, np.float32).tobytes())
    bank = bridge.extras.get("hub_bank")
    if bank is not None:
        h.update(np.ascontiguousarray(bank[:64], np.float32).tobytes())
    return h.hexdigest()[:16]


def logsumexp_prior(vectors: np.ndarray, bank: np.ndarray, beta: float) -> np.ndarray:
    """(1/beta) * logsumexp(beta * vectors @ bank.T), row by row, in float32 chunks."""
    v = np.asarray(vectors, np.float32)
    out = np.empty(len(v), np.float32)
    for a in range(0, len(v), 1024):
        z = beta * (v[a:a + 1024] @ bank.T)
        m = z.max(1, keepdims=True)
        out[a:a + 1024] = (m[:, 0] + np.log(np.exp(z - m).sum(1))) / beta
    return out


class ImagePrior:
    """The caption bank and settings; ``prior(vectors)`` is what the index stores per image."""

    def __init__(self, bank: np.ndarray, config: ImagePriorConfig, gate: float, for_bridge: str,
                 info: dict | None = None):
        self.bank = np.asarray(bank, np.float32)
        self.config = config
        self.gate = float(gate)
        self.for_bridge = for_bridge
        self.info = info or {}

    def prior(self, vectors: np.ndarray) -> np.ndarray:
        """alpha * (1/beta) logsumexp(beta * cos(image, bank)) per image vector (unit, shared space)."""
        if len(vectors) == 0:
            return np.zeros(0, np.float32)
        return (self.config.alpha * logsumexp_prior(vectors, self.bank, self.config.beta)).astype(np.float32)

    @classmethod
    def fit(cls, bridge, bank: np.ndarray, config: ImagePriorConfig | None = None,
            info: dict | None = None) -> "ImagePrior":
        """From ``bank`` (training captions already in the shared space, ``bridge.center_text``;
        :func:`bank_rows` picks them) and the gate from the bridge's bank of mapped training images."""
        config = config or ImagePriorConfig()
        images = bridge.extras.get("hub_bank")
        if images is None:
            raise ValueError("the bridge has no bank of training images (hub_bank) to set the gate from")
        if len(bank) == 0:
            raise ValueError("no training captions to make a bank of")
        p = cls(bank, config, 0.0, bridge_id(bridge), info)
        p.gate = float(np.quantile(p.prior(images), config.gate_quantile))
        return p

    def save(self, path: str | Path) -> None:
        path = Path(path)
        meta = {"format": FORMAT_VERSION, "config": asdict(self.config), "gate": self.gate,
                "for_bridge": self.for_bridge, "info": self.info}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, bank=self.bank.astype(np.float16),
                                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "ImagePrior":
        with np.load(Path(path)) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            bank = z["bank"].astype(np.float32)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: image prior format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        return cls(bank, ImagePriorConfig(**meta["config"]), meta["gate"], meta["for_bridge"], meta.get("info"))


def bank_rows(n_captions: int, config: ImagePriorConfig) -> np.ndarray:
    """Which of ``n_captions`` training captions (in corpus order) make the bank (seeded)."""
    k = min(config.bank_size, n_captions)
    return np.sort(np.random.default_rng(config.seed).choice(n_captions, k, replace=False))


def fit_image_prior(corpus, encoder, config: ImagePriorConfig | None = None) -> ImagePrior:
    """The ``mmrag bridge image-prior`` job: a bank of ``corpus``'s captions (every caption of
    every item, in order, then :func:`bank_rows`) embedded by ``encoder`` (an effnet-minilm with
    the bridge the prior is for)."""
    from mmrag.errors import CorpusError

    config = config or ImagePriorConfig()
    caps = [c for it in corpus.items for c in it.captions]
    if not caps:
        raise CorpusError(f"corpus {corpus.name!r} has no captions to make a bank of")
    rows = bank_rows(len(caps), config)
    bank = encoder.embed_texts([caps[r] for r in rows])
    info = {"corpus": corpus.name, "root": str(corpus.root), "n_captions": len(caps), "bank": int(len(rows))}
    return ImagePrior.fit(encoder.bridge, bank, config, info)


def sidecar_path(bridge_path: str | Path, shipped: bool) -> Path:
    """Where the image prior of the bridge at ``bridge_path`` lives."""
    p = Path(bridge_path)
    stem = p.stem[len("bridge_"):] if shipped and p.stem.startswith("bridge_") else p.stem
    return p.with_name(f"image_prior_{stem}.npz") if shipped else p.with_name(f"{stem}.image_prior.npz")


def load_for_bridge(bridge_path: str | Path | None, bridge, shipped: bool) -> ImagePrior | None:
    """The sidecar prior of a bridge file when there is one fitted for that bridge, else None."""
    if bridge_path is None or bridge is None:
        return None
    p = sidecar_path(bridge_path, shipped)
    if not p.exists():
        return None
    try:
        prior = ImagePrior.load(p)
    except UNREADABLE as e:
        raise ModelUnavailableError(f"image prior {str(p)!r} (beside its bridge) is unreadable "
                                    f"({type(e).__name__}: {e}); re-make it with `mmrag bridge image-prior` "
                                    "or remove it") from None
    return prior if prior.for_bridge == bridge_id(bridge) else None


def gate_admits(top_prior, gate: float | None):
    """Whether a query whose raw top-1 image has prior ``top_prior`` (a float, or an array of
    them) is ranked by ``cos - prior``: above ``gate``; every query when ``gate`` is None."""
    if gate is None:
        return np.ones(np.shape(top_prior), bool) if np.ndim(top_prior) else True
    return np.asarray(top_prior) > gate if np.ndim(top_prior) else float(top_prior) > gate


def rerank_rows(S: np.ndarray, prior: np.ndarray, gate: float | None) -> np.ndarray:
    """Text->image scores [queries, images] with the prior: ``S - prior`` for the queries whose
    raw top-1 image has a prior above ``gate`` (None: every query), ``S`` for the others."""
    S = np.asarray(S, np.float32)
    prior = np.asarray(prior, np.float32)
    if S.size == 0:
        return S
    if gate is None:
        return S - prior[None]
    on = gate_admits(prior[S.argmax(1)], gate)
    return np.where(on[:, None], S - prior[None], S)
