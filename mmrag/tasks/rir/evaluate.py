"""With/without-RIR evaluation on a VQA set, with 95 % bootstrap intervals.

Metrics (see :mod:`mmrag.tasks.rir.normalize` for the normalisation):

* ``closed_acc``: normalised exact match on CLOSED questions (yes/no, either/or);
* ``open_recall``: answer-in-prediction on OPEN questions (the RIR paper's lenient metric);
* ``open_exact``: normalised exact match on OPEN questions (strict, for reference);
* ``overall``: the mean over all questions of exact match (CLOSED) / answer-in-prediction (OPEN).

All in %. Intervals: percentile bootstrap over questions (``n_boot`` resamples); the RIR gain's
interval is paired (the same resample for both arms).

Settings: the knowledge index holds the train images with their train QA pairs. VQA-RAD test
questions are asked about images that are also in train, so two settings are reported:

* ``query_image_excluded`` (headline): the query image is removed from the neighbours *and* its
  QA pairs from the knn answerer's memory, in both arms — the answerer sees only *other*,
  similar images, as for a new image.
* ``query_image_included``: the index is used as is; the nearest neighbour is usually the query
  image itself, with its train QA pairs (never the test answers).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag.tasks.rir.normalize import answer_in_prediction, exact_match
from mmrag.tasks.rir.vqa import VQADataset, VQAQuestion

__all__ = ["SETTINGS", "score_question", "summarize", "bootstrap_ci", "evaluate_vqa", "compare",
           "vqa_index_dir", "EvalRecord"]

SETTINGS = ("query_image_excluded", "query_image_included")
HEADLINE = "query_image_excluded"


@dataclass
class EvalRecord:
    qid: str
    image_id: str
    question: str
    answers: list[str]
    answer_type: str
    question_type: str
    prediction: str
    exact: bool
    in_prediction: bool
    evidence_ids: list[str]

    @property
    def score(self) -> float:
        """Exact match for CLOSED questions, answer-in-prediction for OPEN ones."""
        return float(self.exact if self.answer_type == "CLOSED" else self.in_prediction)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "score": self.score}


def score_question(q: VQAQuestion, prediction: str, evidence_ids: Sequence[str] = ()) -> EvalRecord:
    return EvalRecord(qid=q.qid, image_id=q.image_id, question=q.question, answers=list(q.answers),
                      answer_type=q.answer_type, question_type=q.question_type, prediction=prediction,
                      exact=exact_match(prediction, q.answers), in_prediction=answer_in_prediction(prediction, q.answers),
                      evidence_ids=list(evidence_ids))


def _metric_arrays(records: Sequence[EvalRecord]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (values, mask of questions it applies to)."""
    closed = np.array([r.answer_type == "CLOSED" for r in records], bool)
    exact = np.array([r.exact for r in records], float)
    inpred = np.array([r.in_prediction for r in records], float)
    score = np.array([r.score for r in records], float)
    return {"closed_acc": (exact, closed), "open_recall": (inpred, ~closed), "open_exact": (exact, ~closed),
            "overall": (score, np.ones(len(records), bool))}


def bootstrap_ci(values: np.ndarray, mask: np.ndarray, n_boot: int = 2000, seed: int = 0,
                 paired: np.ndarray | None = None) -> list[float] | None:
    """95 % percentile interval (in %) of the mean of ``values[mask]``; with ``paired`` (values of
    a second arm on the same questions), of the difference ``mean(values) - mean(paired)``."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(idx), size=(n_boot, len(idx)))
    a = values[idx][samples].mean(axis=1)
    if paired is not None:
        a = a - paired[idx][samples].mean(axis=1)
    lo, hi = np.percentile(a, [2.5, 97.5])
    return [round(100 * float(lo), 2), round(100 * float(hi), 2)]


def summarize(records: Sequence[EvalRecord], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Metrics (in %) with bootstrap intervals, overall and per question type."""
    arrays = _metric_arrays(records)
    out: dict[str, Any] = {"n": len(records), "n_closed": int(arrays["closed_acc"][1].sum()),
                           "n_open": int(arrays["open_recall"][1].sum())}
    for name, (vals, mask) in arrays.items():
        out[name] = round(100 * float(vals[mask].mean()), 2) if mask.any() else None
        out[name + "_ci95"] = bootstrap_ci(vals, mask, n_boot, seed)
    per_type: dict[str, Any] = {}
    for qt in sorted({r.question_type for r in records}):
        sub = [r for r in records if r.question_type == qt]
        arr = _metric_arrays(sub)
        per_type[qt] = {"n": len(sub), **{m: (round(100 * float(v[k].mean()), 2) if k.any() else None)
                                          for m, (v, k) in arr.items() if m != "open_exact"}}
    out["per_question_type"] = per_type
    return out


def compare(rir: Sequence[EvalRecord], no_rir: Sequence[EvalRecord], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Both arms' summaries and the paired gain (RIR - no RIR, points) with its interval."""
    a, b = _metric_arrays(rir), _metric_arrays(no_rir)
    gain = {}
    for name, (va, mask) in a.items():
        if mask.any():
            d = 100 * float(va[mask].mean() - b[name][0][mask].mean())
            gain[name] = {"points": round(d, 2), "ci95": bootstrap_ci(va, mask, n_boot, seed, paired=b[name][0])}
    return {"rir": summarize(rir, n_boot, seed), "no_rir": summarize(no_rir, n_boot, seed), "gain": gain}


def vqa_index_dir(train: VQADataset, encoder) -> Path:
    """Where the knowledge index of ``train`` lives in the mmrag cache (keyed by the QA pairs, the
    image files and the encoder)."""
    from mmrag.paths import cache_dir

    h = hashlib.sha1(encoder.fingerprint().encode())
    for q in train.questions:
        h.update(json.dumps([q.image_id, str(q.image), q.question, q.answers], ensure_ascii=False).encode())
    return cache_dir() / "rir" / f"index_{train.name}_{h.hexdigest()[:12]}"


def evaluate_vqa(pipeline, test: VQADataset, settings: Sequence[str] = SETTINGS, k: int | None = None,
                 n_boot: int = 2000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Answer every question of ``test`` with and without RIR in each setting; metrics with
    intervals. ``pipeline``: an :class:`~mmrag.tasks.rir.pipeline.RIRPipeline` whose index must
    not hold ``test``'s answers. Returns ``{"settings": {name: compare(...)}, "records": ...}``."""
    from mmrag.tasks.rir.providers import image_sha256

    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"unknown setting {s!r}; choose from {SETTINGS}")
    qs = test.questions
    t0 = time.perf_counter()
    images = list(dict.fromkeys(q.image for q in qs))
    enc = pipeline.encoder
    img_vecs = dict(zip(images, enc.embed_images(images, progress=progress)))
    q_vecs = pipeline.question_vectors([q.question for q in qs])
    # The index rows with the same bytes as each query image (its "self" in the index).
    self_ids: dict[Path, set[str]] = {}
    sha_to_ids: dict[str, set[str]] = {}
    for i, m in pipeline.provider.all_metadata():
        if m.get("sha256"):
            sha_to_ids.setdefault(m["sha256"], set()).add(i)
    for p in images:
        self_ids[p] = sha_to_ids.get(image_sha256(p), set())
    embed_s = time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(qs) * 2 * len(settings), desc="answering", unit="q", file=sys.stderr)
    result: dict[str, Any] = {"settings": {}, "records": {}}
    timing: dict[str, float] = {}
    for s in settings:
        arms = {}
        for rir in (True, False):
            t = time.perf_counter()
            recs = []
            for q, qv in zip(qs, q_vecs):
                excl = (self_ids[q.image] | {q.image_id}) if s == "query_image_excluded" else set()
                a = pipeline.ask(q.image, q.question, rir=rir, k=k, exclude_ids=sorted(excl),
                                 image_vector=img_vecs[q.image], question_vector=qv)
                recs.append(score_question(q, a.answer, [e.id for e in a.evidence]))
                if bar is not None:
                    bar.update(1)
            arm = "rir" if rir else "no_rir"
            timing[f"{s}/{arm}_s_per_question"] = round((time.perf_counter() - t) / max(1, len(qs)), 5)
            arms[arm] = recs
        result["settings"][s] = compare(arms["rir"], arms["no_rir"], n_boot, seed)
        result["records"][s] = {arm: [r.to_dict() for r in recs] for arm, recs in arms.items()}
    if bar is not None:
        bar.close()
    timing["embed_s"] = round(embed_s, 2)
    result["timing"] = timing
    return result
