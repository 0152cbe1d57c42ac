"""committer: the one place that decides what of a mapped batch enters an index, and commits it.

Rules (the same for the local path and for indexing from embedding shards):

* a file that cannot be read is skipped with the reason;
* an image whose bytes (sha256) are already indexed, or met earlier in this run, is a duplicate
  of the first id that had them, skipped;
* an image the encoder cannot decode is skipped with the reason (and its bytes are forgotten,
  so a later copy is judged on its own);
* captions are committed before their images: the image rows are the batch's commit mark, so
  a run killed at any point resumes with at most one batch done again;
* an image being *replaced* (its file changed since it was indexed) keeps its old vector until
  the new one is committed over it (same id: one atomic replace); if the new file is unreadable
  or a duplicate, the old entry is removed, since it no longer describes the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mmrag.embedding.mapper import MappedBatch
from mmrag.index.collection import Collection, caption_id


@dataclass
class IndexReport:
    added: int = 0             # new images committed
    updated: int = 0           # indexed images whose file changed, re-embedded
    removed: int = 0           # indexed images whose file is gone (or no longer usable), removed
    already_indexed: int = 0   # unchanged since the last run
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, "duplicate of ID ...")
    skipped: list[tuple[str, str]] = field(default_factory=list)     # not indexed: (source, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)    # indexed, with a problem
    captions_added: int = 0
    total_images: int = 0
    total_captions: int = 0

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "already_indexed": self.already_indexed,
            "duplicates": len(self.duplicates),
            "skipped": len(self.skipped),
            "warnings": len(self.warnings),
            "duplicate_reasons": [{"source": s, "reason": r} for s, r in self.duplicates],
            "skipped_reasons": [{"source": s, "reason": r} for s, r in self.skipped],
            "warning_reasons": [{"source": s, "reason": r} for s, r in self.warnings],
            "captions_added": self.captions_added,
            "total_images": self.total_images,
            "total_captions": self.total_captions,
        }


def indexed_metadata(col: Collection) -> dict[str, dict]:
    """id -> stored metadata of every image in ``col`` (one read of the metadata table)."""
    ids = col.images.ids()
    return {i: m for i, m in zip(ids, col.images.get(ids)) if m is not None} if ids else {}


def indexed_hashes(col: Collection, metas: dict[str, dict] | None = None) -> dict[str, str]:
    """sha256 -> id of the images already in ``col`` (so identical images are stored once)."""
    metas = indexed_metadata(col) if metas is None else metas
    return {m["sha256"]: i for i, m in metas.items() if m.get("sha256")}


class Committer:
    """Applies the rules above to mapped batches, writing into ``col`` and tallying ``report``.

    ``known``: sha256 -> image id of what is indexed (updated as images are admitted).
    ``replacing``: id -> stored metadata of the indexed images this run re-embeds (changed files).
    """

    def __init__(self, col: Collection, report: IndexReport, known: dict[str, str],
                 replacing: dict[str, dict] | None = None):
        self.col, self.report, self.known = col, report, known
        self.replacing = replacing or {}

    def skip(self, source: str, reason: str, kind: str = "skipped") -> None:
        # image errors start with the file name; the report names the source already
        reason = reason[len(source) + 2:] if reason.startswith(f"{source}: ") else reason
        {"skipped": self.report.skipped, "duplicate": self.report.duplicates,
         "warning": self.report.warnings}[kind].append((source, reason))
        self.col.record_skipped(source, reason, kind)

    def _drop_stale(self, id_: str) -> None:
        """A changed file that can no longer be indexed: its old entry goes."""
        if self.replacing.pop(id_, None) is not None:
            self.col.remove([id_])
            self.report.removed += 1

    def admit(self, rows: list[dict], sha: list[str], errors: list[str]) -> list[int]:
        """Positions that may enter the index: unreadable files and duplicates are skipped here
        (the local path calls this before embedding, so duplicates are never embedded)."""
        keep = []
        for i, r in enumerate(rows):
            if not sha[i]:
                self.skip(r["source"], errors[i])
                self._drop_stale(r["id"])
                continue
            if sha[i] in self.known and self.known[sha[i]] != r["id"]:
                self.skip(r["source"], f"duplicate of {self.known[sha[i]]} (same bytes)", "duplicate")
                self._drop_stale(r["id"])
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
                self._drop_stale(batch.rows[i]["id"])
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
        # a changed file with fewer captions than before: its extra old captions go (before the
        # image commit, so a crash here leaves the old image, which the rerun replaces again)
        stale = [caption_id(batch.rows[i]["id"], k) for i in good if batch.rows[i]["id"] in self.replacing
                 for k in range(batch.n_captions[i], len(self.replacing[batch.rows[i]["id"]].get("captions") or []))]
        if stale:
            self.col.captions.delete(stale)
        meta = [
            {"path": batch.rows[i]["path"], "captions": json.loads(batch.rows[i]["captions"]),
             "split": batch.rows[i]["split"] or None, "sha256": batch.sha256[i],
             **json.loads(batch.rows[i]["metadata"])}
            for i in good
        ]
        if batch.image_prior:  # hubness prior for text->image search (see Encoder.image_prior)
            for m, i in zip(meta, good):
                if batch.image_prior[i] is not None:
                    m["prior"] = round(float(batch.image_prior[i]), 6)
        self.col.images.add([batch.rows[i]["id"] for i in good], np.asarray(batch.img_emb[good]), meta)
        n_replaced = sum(1 for i in good if self.replacing.pop(batch.rows[i]["id"], None) is not None)
        self.report.updated += n_replaced
        self.report.added += len(good) - n_replaced

    def add(self, batch: MappedBatch) -> None:
        """Admit and commit a batch that was embedded without admission (from shards)."""
        self.commit(batch, self.admit(batch.rows, batch.sha256, batch.errors))
