"""Contrastive (InfoNCE) refinement of the bridge, trained for ranking on frozen features.

The closed-form ridge bridge minimises squared error to the mean caption embedding; retrieval
ranks. Starting from the ridge solution (so a zero-epoch fit *is* the ridge bridge), a linear
map from the image design vector into the shared (centred, whitened) text space is trained
with the symmetric InfoNCE loss of CLIP/LiT: the text tower stays frozen, so the caption
vectors are computed once. Augmentation: each step picks one caption of each image at random
and one view of its features (centre crop, mirror or their mean). An L2 pull towards the ridge
map (``anchor``) keeps the map from drifting off the captions' broad vocabulary.

Deterministic for a given seed and thread count: fixed torch/numpy seeds, one explicit
generator for the batches, ``torch.set_num_threads``; two fits with the same inputs are
identical bit for bit (tests/encoders/test_effnet_minilm.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ContrastiveConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.05  # fixed: a learned one drifts on 6,000 images
    anchor: float = 0.0  # weight of ||W - W_ridge||^2 / ||W_ridge||^2 in the loss
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 2

    def as_dict(self) -> dict:
        return asdict(self)


def train_contrastive(X_views: np.ndarray, T: np.ndarray, owner: np.ndarray, W0: np.ndarray,
                      config: ContrastiveConfig | None = None, log=None) -> np.ndarray:
    """Refine a linear map ``W0`` [d, k] with InfoNCE.

    X_views: [n, v, d] centred design vectors of n training images in v views (the mean of the
    views is used as one more view); T: [m, k] unit caption vectors in the target space;
    owner[j]: the image of caption j. Returns the refined W [d, k] (float32).
    """
    import torch

    cfg = config or ContrastiveConfig()
    if cfg.epochs < 0 or cfg.batch_size < 2 or cfg.temperature <= 0 or cfg.lr <= 0:
        raise ValueError(f"bad contrastive config {cfg}")
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    Xv = np.asarray(X_views, np.float32)
    if Xv.ndim == 2:
        Xv = Xv[:, None]
    if Xv.shape[1] > 1:
        Xv = np.concatenate([Xv, Xv.mean(1, keepdims=True)], axis=1)
    X = torch.from_numpy(np.ascontiguousarray(Xv))
    Tt = torch.from_numpy(np.ascontiguousarray(T, np.float32))
    owner = np.asarray(owner)
    n, nv = X.shape[0], X.shape[1]
    # caption rows of each image, padded with repeats so one can be drawn per step by index
    counts = np.bincount(owner, minlength=n)
    if (counts == 0).any():
        raise ValueError("every training image needs at least one caption")
    order = np.argsort(owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order_t, starts_t, counts_t = (torch.from_numpy(a.astype(np.int64)) for a in (order, starts, counts))

    W_init = torch.from_numpy(np.asarray(W0, np.float32).copy())
    W = torch.nn.Parameter(W_init.clone())
    opt = torch.optim.AdamW([W], lr=cfg.lr, weight_decay=cfg.weight_decay)
    ref = (W_init**2).sum()
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, total) / max(total, 1))))
    labels = torch.arange(cfg.batch_size)
    for ep in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            view = torch.randint(nv, (len(idx),), generator=g)
            pick = (torch.rand(len(idx), generator=g) * counts_t[idx]).long()
            cap = order_t[starts_t[idx] + pick]
            img = torch.nn.functional.normalize(X[idx, view] @ W, dim=1)
            logits = img @ Tt[cap].T / cfg.temperature
            lab = labels[: len(idx)]
            loss = 0.5 * (torch.nn.functional.cross_entropy(logits, lab)
                          + torch.nn.functional.cross_entropy(logits.T, lab))
            if cfg.anchor:
                loss = loss + cfg.anchor * ((W - W_init) ** 2).sum() / ref
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        if log is not None:
            log(f"epoch {ep + 1}/{cfg.epochs}: loss {tot / steps_per_epoch:.4f}")
    return W.detach().numpy().astype(np.float32)
