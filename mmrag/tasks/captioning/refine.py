"""Continuous refinement of the caption datastore (the paper's Algorithm 2).

1. ``t`` = mean CIDEr-D of the captioner on dev.
2. Caption the train images (each image's own captions, human and synthetic, excluded).
3. Keep the synthetic captions whose per-image CIDEr-D against that image's references is >= ``t``
   (and that the image does not already have).
4. Add them to the datastore (flagged ``synthetic``, owned by the image they describe), call the
   query map refit (optional), measure dev again.
5. Repeat while dev improves, at most ``max_iterations`` times. An iteration that does not
   improve dev is rolled back and ends the loop.

The paper also refits the image->text map on the grown pair set. ``refit_map=True`` does that
with a task-specific map on top of the encoder: a ridge least-squares map from image vectors to
caption vectors (:meth:`CaptionDatastore.fit_query_map`), fitted on the datastore's pairs whose
image was embedded here (human captions before the first measurement, then human + kept synthetic
ones after every iteration; a rollback restores the previous map). The map is saved with the datastore
and applied to every query. The encoder's own bridge stays fixed (its hubness bank and the
datastore's vectors are tied to it). Every iteration is logged (kept count, dev score, datastore
size, seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mmrag.tasks.captioning.captioner import MRagCaptioner

__all__ = ["RefineReport", "refine_datastore"]


@dataclass
class RefineReport:
    initial_dev: float
    best_dev: float
    iterations: list[dict] = field(default_factory=list)
    added_total: int = 0
    saved_to: str | None = None
    map_refit: bool = False

    def as_dict(self) -> dict:
        return {"initial_dev_CIDEr-D": self.initial_dev, "best_dev_CIDEr-D": self.best_dev,
                "added_total": self.added_total, "iterations": self.iterations,
                "saved_to": self.saved_to, "map_refit": self.map_refit}


def _dev_cider(captioner, dev_items, dev_vecs, java) -> float:
    from mmrag.eval.caption_metrics import caption_scores

    res = captioner.caption_vectors(dev_vecs, [it.id for it in dev_items])
    preds = {r.image_id: r.caption for r in res if r.caption is not None}
    return float(caption_scores(preds, {it.id: it.captions for it in dev_items}, metrics=["CIDEr"],
                                java=java)["CIDEr-D"])


def _embed(encoder, items, progress):
    vecs, errors = encoder.embed_images_safe([it.path for it in items], progress=progress)
    keep = [i for i in range(len(items)) if i not in errors]
    return [items[i] for i in keep], vecs[keep]


def refine_datastore(captioner: MRagCaptioner, train_corpus, dev_corpus, max_iterations: int = 3,
                     save_to: str | Path | None = None, log: Callable[[str], None] = print,
                     refit_map: bool = False, map_lam: float = 1.0, java: str | None = "auto",
                     progress: bool = False, train_vectors: np.ndarray | None = None,
                     dev_vectors: np.ndarray | None = None, min_gain: float = 0.0) -> RefineReport:
    """Grow ``captioner.datastore`` with synthetic train captions while dev CIDEr-D improves.

    ``refit_map``: fit the datastore's query map on the train pairs first and refit it after every
    change (``map_lam``: its ridge strength). ``train_vectors`` / ``dev_vectors``: the corpora's
    images already embedded (rows aligned with the captioned items), to skip the image encoder.
    Returns a :class:`RefineReport`; the grown datastore is saved to ``save_to`` when given.
    """
    from mmrag.eval.caption_metrics import cider_d_per_image

    ds = captioner.datastore
    dev_items = [it for it in dev_corpus.items if it.captions]
    train_items = [it for it in train_corpus.items if it.captions]
    if dev_vectors is None:
        dev_items, dev_vectors = _embed(captioner.encoder, dev_items, progress)
    if train_vectors is None:
        train_items, train_vectors = _embed(captioner.encoder, train_items, progress)
    image_vectors = {it.id: v for it, v in zip(train_items, train_vectors)}

    def refit():
        n = ds.fit_query_map(image_vectors, lam=map_lam)
        log(f"refine: query map fitted on {n} pairs ({ds.info['query_map']['synthetic_pairs']} synthetic)")

    if refit_map:
        refit()
    t = _dev_cider(captioner, dev_items, dev_vectors, java)
    log(f"refine: initial dev CIDEr-D {t:.2f} (datastore {len(ds)} captions, {ds.n_synthetic} synthetic); "
        f"{'query map refit every iteration' if refit_map else 'no query map refit'}")
    report = RefineReport(initial_dev=t, best_dev=t, map_refit=refit_map)
    refs = {it.id: it.captions for it in train_items}
    for it_no in range(1, max_iterations + 1):
        t0 = time.perf_counter()
        res = captioner.caption_vectors(train_vectors, [it.id for it in train_items])
        preds = {r.image_id: r.caption for r in res if r.caption is not None}
        per = cider_d_per_image(preds, refs, java=java)
        have = {}
        for text, iid in zip(ds.texts, ds.image_ids):
            have.setdefault(iid, set()).add(text.strip().lower())
        keep = [(preds[i], i) for i, s in per.items()
                if s >= t and preds[i].strip().lower() not in have.get(i, set())]
        n_before, map_before = len(ds), (ds.query_map, ds.info.get("query_map"))
        ds.add([c for c, _ in keep], [i for _, i in keep], encoder=captioner.encoder, synthetic=True)
        if refit_map:
            refit()
        dev = _dev_cider(captioner, dev_items, dev_vectors, java)
        improved = dev > report.best_dev + min_gain
        entry = {"iteration": it_no, "threshold": round(t, 3), "captioned": len(preds),
                 "mean_train_CIDEr-D": round(float(np.mean(list(per.values()))) if per else 0.0, 3),
                 "kept": len(keep), "datastore_size": len(ds), "dev_CIDEr-D": round(dev, 3),
                 "improved": improved, "seconds": round(time.perf_counter() - t0, 1)}
        log(f"refine: iteration {it_no}: threshold {t:.2f}, kept {len(keep)} of {len(preds)} synthetic captions, "
            f"dev CIDEr-D {dev:.2f} ({'improved' if improved else 'no gain, rolled back'}), "
            f"datastore {len(ds)}")
        if not improved:
            _truncate(ds, n_before)
            if refit_map:  # the map fitted on the rolled-back pairs, as it was (no need to refit)
                ds.query_map, ds.info["query_map"] = map_before
            entry["rolled_back"] = True
            report.iterations.append(entry)
            break
        report.iterations.append(entry)
        report.added_total += len(keep)
        report.best_dev = t = dev
        if not keep:
            break
    if save_to is not None:
        ds.info["refinement"] = report.as_dict()
        report.saved_to = str(ds.save(save_to))
        log(f"refine: saved datastore ({len(ds)} captions, {ds.n_synthetic} synthetic) to {report.saved_to}")
    return report


def _truncate(ds, n: int) -> None:
    """Drop the rows appended after ``n`` (an iteration's rollback)."""
    ds.texts = ds.texts[:n]
    ds.vectors = ds.vectors[:n]
    ds.priors = ds.priors[:n]
    ds.image_ids = ds.image_ids[:n]
    ds.synthetic = ds.synthetic[:n]
    ds._rows_by_image = None
