"""The bridge: a linear map from image features into the text embedding space.

Fitted in closed form on image–caption pairs (the mRAG-gim mapping): features and targets are
mean-centred, then ``W = argmin ||X W - Y||² + λ||W||²`` (ridge), or the orthogonal Procrustes
solution ``W = U Vᵀ`` from the SVD of ``XᵀY``. Targets are the mean of an image's normalised
caption embeddings, which gives the same least-squares solution as one row per caption.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmrag.encoders.base import l2_normalize

# what reading a corrupt, truncated or foreign .npz raises (numpy, zipfile, json)
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

FORMAT_VERSION = 1


@dataclass
class BridgeConfig:
    method: str = "ridge"  # "ridge" | "procrustes" (closed form) | "infonce" (ridge refined, contrastive.py)
    lam: float = 100.0  # ridge strength, relative to the mean feature variance times n
    # How raw image features become the design matrix (see ImageFeatureRecipe in effnet_minilm).
    recipe: dict = field(default_factory=dict)
    text_whitening: float = 0.5  # power of the caption-space whitening; 0 = off
    # True when W maps straight into the whitened space (a map trained there, e.g. InfoNCE);
    # False: the closed-form map predicts centred text vectors and the whitening follows.
    whitened_output: bool = False
    # Weight of the zero-shot channel fused into image vectors (effnet_minilm); 0 = off.
    zeroshot_weight: float = 0.0


class Bridge:
    def __init__(self, W: np.ndarray, x_mean: np.ndarray, y_mean: np.ndarray, config: BridgeConfig,
                 info: dict | None = None, extras: dict[str, np.ndarray] | None = None):
        self.W = W.astype(np.float32)
        self.x_mean = x_mean.astype(np.float32)
        self.y_mean = y_mean.astype(np.float32)
        self.config = config
        self.info = info or {}
        # Arrays that travel with the map: e.g. "hub_bank" (mapped training images, for the
        # hubness prior of captions) and "class_text" (class-name embeddings of the recipe).
        self.extras = {k: np.asarray(v, np.float32) for k, v in (extras or {}).items()}

    @property
    def in_dim(self) -> int:
        return self.W.shape[0]

    @property
    def out_dim(self) -> int:
        return self.W.shape[1]

    @classmethod
    def fit(cls, X: np.ndarray, Y: np.ndarray, config: BridgeConfig | None = None, info: dict | None = None,
            extras: dict[str, np.ndarray] | None = None) -> "Bridge":
        """X: [n, d_in] image features; Y: [n, d_out] text targets (one row per image)."""
        config = config or BridgeConfig()
        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        if X.shape[0] != Y.shape[0] or X.shape[0] < 2:
            raise ValueError(f"need >= 2 paired rows, got X {X.shape} and Y {Y.shape}")
        x_mean, y_mean = X.mean(0), Y.mean(0)
        Xc, Yc = X - x_mean, Y - y_mean
        if config.method == "ridge":
            # λ is scaled by the average feature energy so one value works across feature recipes.
            scale = (Xc**2).sum() / Xc.shape[1]
            G = Xc.T @ Xc + config.lam * scale / Xc.shape[0] * np.eye(Xc.shape[1])
            W = np.linalg.solve(G, Xc.T @ Yc)
        elif config.method == "procrustes":
            U, _, Vt = np.linalg.svd(Xc.T @ Yc, full_matrices=False)
            W = U @ Vt
        else:
            raise ValueError(f"unknown bridge method {config.method!r}: ridge or procrustes")
        return cls(W, x_mean, y_mean, config, info, extras)

    def whiten_text_space(self, T: np.ndarray, power: float = 0.5) -> None:
        """Whiten the shared (centred text) space with the covariance of the caption embeddings T.

        Both sides are multiplied by ``V·diag(s^-power)`` (V, s from the SVD of the centred
        captions), so the few dominant directions of the caption space weigh less in the cosine.
        power 1 is full PCA whitening (every direction's variance equal: it amplifies noise and
        collapses retrieval); power 0.5 takes a direction's variance from s² to s, half-way. On
        Flickr8k dev, 0.5 raised t2i R@1 21.7 -> 24.8 and i2t (with the hubness prior) 27 -> 32.5.
        """
        Tc = np.asarray(T, np.float64) - self.y_mean
        _, s, Vt = np.linalg.svd(Tc, full_matrices=False)
        if len(s) < Tc.shape[1]:
            # Fewer captions than dimensions: the reduced SVD spans only the sample, which would
            # make the map (and every vector) lower-dimensional. Complete the basis; directions the
            # sample does not vary in get its smallest real variance (the 1e-6 floor would blow
            # them up 1000x). The full-rank case (e.g. the shipped 30,000-caption fit) is unchanged.
            r = max(int((s > s[0] * 1e-6).sum()), 1)
            Vt = np.linalg.svd(Tc, full_matrices=True)[2]
            s = np.concatenate([s[:r], np.full(Tc.shape[1] - r, s[r - 1])])
        s = np.maximum(s, s[0] * 1e-6)
        self.extras["text_whitening"] = (Vt.T * (s / s[0]) ** -power).astype(np.float32)

    def _whiten(self, Z: np.ndarray) -> np.ndarray:
        M = self.extras.get("text_whitening")
        return Z if M is None else Z @ M

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map image features into the (centred, whitened) text space, L2-normalised."""
        Z = (np.asarray(X, np.float32) - self.x_mean) @ self.W
        return l2_normalize(Z if self.config.whitened_output else self._whiten(Z))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The fitted affine least-squares prediction ``(X - x_mean) W + y_mean`` (no whitening),
        L2-normalised: for maps whose targets are vectors of an existing space."""
        if self.config.whitened_output:
            raise ValueError("predict() needs a closed-form map (this bridge maps into the whitened space)")
        return l2_normalize((np.asarray(X, np.float32) - self.x_mean) @ self.W + self.y_mean)

    def center_text(self, T: np.ndarray) -> np.ndarray:
        """Text embeddings centred like the fit targets (and whitened), L2-normalised."""
        return l2_normalize(self._whiten(np.asarray(T, np.float32) - self.y_mean))

    HUB_BETA = 20.0  # inverse temperature of the hubness prior, chosen on Flickr8k dev

    def caption_prior(self, T: np.ndarray) -> np.ndarray | None:
        """Hubness prior of text vectors T (already centred): (1/β)·logsumexp(β·T·bankᵀ).

        Some captions are near every image ("hubs") and would be retrieved for any image.
        Scoring image->caption as ``cos - prior`` is the inverted softmax of Smith et al. (2017)
        with a fixed bank of training images, so it can be computed once per caption at indexing
        time. Returns None when the bridge has no bank.
        """
        bank = self.extras.get("hub_bank")
        if bank is None or len(T) == 0:
            return None if bank is None else np.zeros(0, np.float32)
        z = self.HUB_BETA * (np.asarray(T, np.float32) @ bank.T)
        m = z.max(1, keepdims=True)
        return ((m[:, 0] + np.log(np.exp(z - m).sum(1))) / self.HUB_BETA).astype(np.float32)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        meta = {"format": FORMAT_VERSION, "config": asdict(self.config), "info": self.info}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                W=self.W.astype(np.float16),
                x_mean=self.x_mean,
                y_mean=self.y_mean,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                **{f"extra_{k}": v.astype(np.float16) for k, v in self.extras.items()},
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Bridge":
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported bridge format {meta.get('format')}")
            extras = {k[len("extra_"):]: z[k].astype(np.float32) for k in z.files if k.startswith("extra_")}
            return cls(z["W"].astype(np.float32), z["x_mean"], z["y_mean"], BridgeConfig(**meta["config"]),
                       meta["info"], extras)
