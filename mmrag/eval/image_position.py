"""Image-position metrics of ImageRef-VL (Image Position Prediction), as its ``ipp_eval.py`` defines them.

A *sample* is one answer with insertion positions. Its **labels** map every candidate position
(``"<Position 1>"``, ... or any hashable key, in document order) to graded acceptable images::

    {"<Position 1>": {"3": ["a.jpg"], "2": [], "1": ["b.jpg"]}, "<Position 2>": {...}, ...}

Grades are 3 (best fit), 2, 1; a position with nothing acceptable has empty lists. List *every*
position, as the reference labels do: a prediction at a position missing from the labels is
ignored by precision and score. The **results** map a position to the one image inserted there
(``None``/absent = "Not Insert"); each image appears at most once (see :func:`results_from_predictions`,
which applies the reference's rules to a raw prediction list).

Per sample (the reference's functions in brackets):

* ``R_lenient`` [``recall_1``]: positions whose predicted image has any grade, divided by the size
  of a maximum bipartite matching between positions and their acceptable images (1 if that is 0);
* ``R_strict`` [``recall_3``]: the same with grade-3 images only;
* ``P`` [``precion``]: among labelled positions with a prediction, the share whose image has any
  grade (1 when there are no predictions);
* ``score`` [``score``]: +3/+2/+1 by the image's grade at that position, -1 for an ungraded image,
  divided by the maximum achievable score (1 if that is 0).

Over a dataset each is the mean over samples, and ``F1 = 2·P·R_strict / (P + R_strict)`` from the
averaged P and R_strict (the reference computes F1 from the means, not per sample).

The matching sizes use scipy's exact ``maximum_bipartite_matching`` (the reference uses Kuhn's
augmenting-path algorithm, which is also exact). The score's denominator is ambiguous in the
reference: its ``maxBPM_score`` runs Kuhn's algorithm for a maximum-*cardinality* matching and
sums, per position, the best grade it was ever matched with, which can exceed the true
maximum-weight matching (and depends on set iteration order there). ``score_denominator="reference"``
(default) reproduces that computation deterministically (positions in label order, images in order
of first appearance, grades 3, 2, 1); ``"optimal"`` uses the true maximum-weight assignment
(``scipy.optimize.linear_sum_assignment``). The two agree whenever every acceptable image has the
same grade, e.g. in the d2l figure-position benchmark (grade 3 only).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = [
    "GRADES",
    "NOT_INSERT",
    "evaluate_positions",
    "max_matching_size",
    "position_score",
    "precision",
    "recall_lenient",
    "recall_strict",
    "results_from_predictions",
    "sample_metrics",
]

GRADES = ("3", "2", "1")
NOT_INSERT = "Not Insert"
Labels = Mapping[Hashable, Mapping[str, Sequence[Hashable]]]
Results = Mapping[Hashable, Hashable | None]


def _graded(label: Mapping[str, Sequence[Hashable]], grades: Iterable[str] = GRADES) -> list[Hashable]:
    out: list[Hashable] = []
    for g in grades:
        for img in label.get(g, ()) or ():
            if img not in out:
                out.append(img)
    return out


def max_matching_size(acceptable: Sequence[Sequence[Hashable]]) -> int:
    """Size of a maximum bipartite matching between positions (rows) and the images each accepts."""
    index: dict[Hashable, int] = {}
    rows, cols = [], []
    for r, imgs in enumerate(acceptable):
        for img in imgs:
            rows.append(r)
            cols.append(index.setdefault(img, len(index)))
    if not rows:
        return 0
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(acceptable), len(index)))
    match = maximum_bipartite_matching(graph, perm_type="column")
    return int((match >= 0).sum())


def _recall(labels: Labels, results: Results, grades: tuple[str, ...]) -> float:
    denominator = max_matching_size([_graded(labels[p], grades) for p in labels])
    hits = sum(1 for p in labels if results.get(p) is not None and results[p] in _graded(labels[p], grades))
    return 1.0 if denominator == 0 else hits / denominator


def recall_strict(labels: Labels, results: Results) -> float:
    """R_strict (``recall_3``): correct grade-3 placements over the grade-3 maximum matching."""
    return _recall(labels, results, ("3",))


def recall_lenient(labels: Labels, results: Results) -> float:
    """R_lenient (``recall_1``): placements with any grade over the any-grade maximum matching."""
    return _recall(labels, results, GRADES)


def precision(labels: Labels, results: Results) -> float:
    """P (``precion``): among labelled positions with a prediction, the share with a graded image."""
    n = hits = 0
    for p, img in results.items():
        if img is not None and img != "" and p in labels:
            n += 1
            hits += img in _graded(labels[p])
    return 1.0 if n == 0 else hits / n


def _reference_max_score(labels: Labels) -> int:
    """The reference's ``maxBPM_score``: Kuhn's algorithm, each position keeping the best grade it
    was ever matched with (see the module docstring)."""
    positions = list(labels)
    images: dict[Hashable, int] = {}
    for p in positions:
        for img in _graded(labels[p]):
            images.setdefault(img, len(images))
    weight = [[0] * len(images) for _ in positions]
    for u, p in enumerate(positions):
        for g, imgs in labels[p].items():  # the label's own grade order; a later grade overwrites
            for img in imgs or ():
                weight[u][images[img]] = int(g)
    match_of_image = [-1] * len(images)
    best = [0] * len(positions)

    def augment(u: int, seen: list[bool]) -> bool:
        for v in range(len(images)):
            if not seen[v] and weight[u][v]:
                seen[v] = True
                if match_of_image[v] == -1 or augment(match_of_image[v], seen):
                    match_of_image[v] = u
                    best[u] = max(best[u], weight[u][v])
                    return True
        return False

    for u in range(len(positions)):
        augment(u, [False] * len(images))
    return sum(best)


def _optimal_max_score(labels: Labels) -> int:
    positions = list(labels)
    images: dict[Hashable, int] = {}
    for p in positions:
        for img in _graded(labels[p]):
            images.setdefault(img, len(images))
    if not images:
        return 0
    w = np.zeros((len(positions), len(images)))
    for u, p in enumerate(positions):
        for img in _graded(labels[p]):
            w[u, images[img]] = _grade_of(labels[p], img)
    r, c = linear_sum_assignment(w, maximize=True)
    return int(w[r, c].sum())


def _grade_of(label: Mapping[str, Sequence[Hashable]], img: Hashable) -> int:
    for g in GRADES:
        if img in (label.get(g) or ()):
            return int(g)
    return 0


def position_score(labels: Labels, results: Results, score_denominator: str = "reference") -> float:
    """Score (``score``): +3/+2/+1 by grade, -1 for an ungraded image, over the maximum achievable."""
    if score_denominator == "reference":
        best = _reference_max_score(labels)
    elif score_denominator == "optimal":
        best = _optimal_max_score(labels)
    else:
        raise ValueError("score_denominator must be 'reference' or 'optimal'")
    total = 0
    for p, img in results.items():
        if img is not None and img != "" and p in labels:
            g = _grade_of(labels[p], img)
            total += g if g else -1
    return 1.0 if best == 0 else total / best


def sample_metrics(labels: Labels, results: Results, score_denominator: str = "reference") -> dict[str, float]:
    """All four per-sample metrics."""
    return {
        "R_lenient": recall_lenient(labels, results),
        "R_strict": recall_strict(labels, results),
        "P": precision(labels, results),
        "score": position_score(labels, results, score_denominator),
    }


def evaluate_positions(samples: Iterable[tuple[Labels, Results]], score_denominator: str = "reference") -> dict[str, Any]:
    """Dataset metrics: means of the per-sample metrics and F1 from the mean P and R_strict.

    Returns ``{"n", "R_lenient", "R_strict", "P", "F1", "score"}`` (fractions in [0, 1]; score
    may be negative). An empty dataset is a :class:`ValueError`."""
    per = [sample_metrics(lab, res, score_denominator) for lab, res in samples]
    if not per:
        raise ValueError("no samples to evaluate")
    out: dict[str, Any] = {"n": len(per)}
    for key in ("R_lenient", "R_strict", "P", "score"):
        out[key] = float(np.mean([m[key] for m in per]))
    p, r = out["P"], out["R_strict"]
    out["F1"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return out


_IMAGE_KEY = re.compile(r"IMAGE_(\d+)")


def results_from_predictions(predictions: Sequence[Mapping[str, Any]], images: Sequence[Hashable]) -> dict[Hashable, Hashable]:
    """The reference's ``load_result``: ``[{"position", "image": "IMAGE_k" | "Not Insert"}, ...]``
    -> ``{position: images[k-1]}``. An image already inserted earlier is ignored (each image at
    most once); a reference outside ``images`` raises :class:`ValueError` (the reference would
    crash or silently wrap around on a negative index)."""
    out: dict[Hashable, Hashable] = {}
    used: set[str] = set()
    for pred in predictions:
        image = str(pred.get("image", NOT_INSERT))
        if image == NOT_INSERT:
            continue
        if image in used:
            continue
        used.add(image)
        m = _IMAGE_KEY.search(image)
        if not m or not 1 <= int(m.group(1)) <= len(images):
            raise ValueError(f"prediction {pred!r} refers to no candidate image (1..{len(images)})")
        out[pred["position"]] = images[int(m.group(1)) - 1]
    return out

