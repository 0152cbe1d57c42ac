"""committer: the one place that decides what of a mapped batch enters an index, and commits it.

Rules (the same for the local path and for indexing from embedding shards):

* a file that cannot be read is skipped with the reason;
* an image whose bytes (sha256) are already indexed, or met earlier in this run, is a duplicate
  of the first id that had them, skipped;
* an image the encoder cannot decode is skipped with the reason (and its bytes are forgotten,
  so a later copy is judged on its own);
* captions are committed before their images: the image rows are the batch's commit mark, so
  a run killed at any point resumes with at most one batch done again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mmrag.embedding.mapper import MappedBatch
from mmrag.index.collection import Collection, caption_id


@dataclass
class IndexReport:
    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    captions_added: int = 0
    total_images: int = 0
    total_captions: int = 0

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "already_indexed": self.already_indexed,
            "duplicates": self.duplicates,
            "skipped": len(self.skipped),
            "skipped_reasons": [{"source": s, "reason": r} for s, r in self.skipped],
            "captions_added": self.captions_added,
            "total_images": self.total_images,
            "total_captions": self.total_captions,
        }


def indexed_hashes(col: Collection) -> dict[str, str]:
    """sha256 -> id of the images already in ``col`` (so identical images are stored once)."""
    known: dict[str, str] = {}
    existing = set(col.images.ids())
    if existing:
        for id_, meta in zip(existing, col.images.get(list(existing))):
            if meta and meta.get("sha256"):
                known[meta["sha256"]] = id_
    return known


class Committer:
    """Applies the rules above to mapped batches, writing into ``col`` and tallying ``report``.

    ``known``: sha256 -> image id of what is indexed (updated as images are admitted).
    """

    def __init__(self, col: Collection, report: IndexReport, known: dict[str, str]):
        self.col, self.report, self.known = col, report, known

    def skip(self, source: str, reason: str) -> None:
        self.report.skipped.append((source, reason))
        self.col.record_skipped(source, reason)

    def admit(self, rows: list[dict], sha: list[str], errors: list[str]) -> list[int]:
        """Positions that may enter the index: unreadable files and duplicates are skipped here
        (the local path calls this before embedding, so duplicates are never embedded)."""
        keep = []
        for i, r in enumerate(rows):
            if not sha[i]:
                self.skip(r["source"], errors[i])
                continue
            if sha[i] in self.known:
                self.report.duplicates += 1
                self.skip(r["source"], f"duplicate of {self.known[sha[i]]} (same bytes)")
                continue
            self.known[sha[i]] = r["id"]
            keep.append(i)
        return keep

    def commit(self, batch: MappedBatch, admitted: list[int]) -> None:
        """Commit the ``admitted`` rows of ``batch``: decode failures skipped, then captions, then images."""
        good = []
        for i in admitted:
            if batch.errors[i]:
                self.known.pop(batch.sha256[i], None)
                self.skip(batch.rows[i]["source"], batch.errors[i])
            else:
                good.append(i)
        if not good:
            return
        offsets = np.concatenate([[0], np.cumsum(batch.n_captions)]).astype(np.int64)
        cap_ids, cap_meta, cap_rows = [], [], []
        for i in good:
            r = batch.rows[i]
            split = r["split"] or None
            n, prior = batch.n_captions[i], batch.caption_prior[i] if batch.caption_prior else []
            for k, text in enumerate(json.loads(r["captions"])[:n]):
                cap_ids.append(caption_id(r["id"], k))
                m = {"image_id": r["id"], "text": text, "split": split}
                if prior:  # hubness prior for image->caption search (see Bridge.caption_prior)
                    m["prior"] = round(float(prior[k]), 6)
                cap_meta.append(m)
            cap_rows.extend(range(offsets[i], offsets[i] + n))
        if cap_ids:
            self.col.captions.add(cap_ids, np.asarray(batch.text_emb[cap_rows]), cap_meta)
            self.report.captions_added += len(cap_ids)
        meta = [
            {"path": batch.rows[i]["path"], "captions": json.loads(batch.rows[i]["captions"]),
             "split": batch.rows[i]["split"] or None, "sha256": batch.sha256[i],
             **json.loads(batch.rows[i]["metadata"])}
            for i in good
        ]
        self.col.images.add([batch.rows[i]["id"] for i in good], np.asarray(batch.img_emb[good]), meta)
        self.report.added += len(good)

    def add(self, batch: MappedBatch) -> None:
        """Admit and commit a batch that was embedded without admission (from shards)."""
        self.commit(batch, self.admit(batch.rows, batch.sha256, batch.errors))
