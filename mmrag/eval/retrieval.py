"""The standard image–text retrieval protocol.

Every caption queries the image set (t2i: is its own image in the top K?) and every image
queries the caption set (i2t: is any of its captions in the top K?). Percentages.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mmrag.corpus.items import Corpus
from mmrag.encoders.base import Encoder
from mmrag.eval.metrics import recall_at_k
from mmrag.errors import CorpusError


def retrieval_scores(image_vecs: np.ndarray, caption_vecs: np.ndarray, owner: np.ndarray,
                     caption_prior: np.ndarray | None = None, image_prior: np.ndarray | None = None,
                     image_prior_gate: float | None = None) -> dict[str, Any]:
    """Recall@K both ways from unit vectors; ``owner[j]`` is the image of caption j.

    ``caption_prior``: per-caption hubness prior subtracted in the image->caption direction
    (computed from training data only, so it is not fitted on what is evaluated);
    ``image_prior``: the same per image, subtracted in the text->image direction, for the
    captions whose best image by cosine has a prior above ``image_prior_gate`` (None: all; see
    :func:`mmrag.encoders.image_prior.rerank_rows`)."""
    from mmrag.encoders.image_prior import rerank_rows

    S = caption_vecs @ image_vecs.T  # [n_captions, n_images]
    n_cap = S.shape[0]
    Sq = S if image_prior is None else rerank_rows(S, image_prior, image_prior_gate)
    own = Sq[np.arange(n_cap), owner]
    # ties count against the target: a wrong image scoring the same ranks above it
    t2i_ranks = (Sq >= own[:, None]).sum(1) - 1
    St = S.T if caption_prior is None else (S - caption_prior[:, None]).T
    i2t_ranks = np.empty(St.shape[0], np.int64)
    for i in range(St.shape[0]):
        mine = owner == i
        best = St[i, mine].max()
        i2t_ranks[i] = int((St[i, ~mine] >= best).sum())
    return {
        "t2i": recall_at_k(t2i_ranks),
        "i2t": recall_at_k(i2t_ranks),
        "t2i_median_rank": float(np.median(t2i_ranks) + 1),
        "i2t_median_rank": float(np.median(i2t_ranks) + 1),
    }


def evaluate_retrieval(corpus: Corpus, encoder: Encoder, batch_size: int = 32, progress: bool = True,
                       hubness: bool = True, image_prior: bool = True) -> dict[str, Any]:
    """``hubness``: the captions' prior in image->caption; ``image_prior``: the images' prior
    in text->image (each when the encoder has one), as search applies them."""
    items = [it for it in corpus.items if it.captions]
    if not items:
        raise CorpusError(f"corpus {corpus.name!r} has no captioned images to evaluate on")
    t0 = time.perf_counter()
    img, errors = encoder.embed_images_safe([it.path for it in items], batch_size=batch_size, progress=progress)
    t1 = time.perf_counter()
    keep = [i for i in range(len(items)) if i not in errors]
    items = [items[i] for i in keep]
    img = img[keep]
    caps = [c for it in items for c in it.captions]
    owner = np.repeat(np.arange(len(items)), [len(it.captions) for it in items])
    txt = encoder.embed_texts(caps, progress=progress)
    prior = encoder.caption_prior(txt) if hubness else None
    iprior = encoder.image_prior(img) if image_prior else None
    t2 = time.perf_counter()
    out = {
        "encoder": encoder.name,
        "dataset": corpus.name,
        "n_images": len(items),
        "n_captions": len(caps),
        "skipped_images": len(errors),
        "i2t_hubness_prior": prior is not None,
        "t2i_image_prior": iprior is not None,
        **retrieval_scores(img, txt, owner, prior, iprior, encoder.image_prior_gate() if iprior is not None else None),
        "seconds": {"images": round(t1 - t0, 2), "texts": round(t2 - t1, 2)},
    }
    return out
