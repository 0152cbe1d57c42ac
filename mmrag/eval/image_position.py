"""Image-position metrics of ImageRef-VL (Image Position Prediction), as its ``ipp_eval.py`` computes them.

A *sample* is one answer with insertion positions. Its **labels** map every candidate position
to graded acceptable images::

    {"<Position 1>": {"3": ["a.jpg"], "2": [], "1": ["b.jpg"]}, "<Position 2>": {...}, ...}

Position keys are the reference's ``"<Position N>"`` strings or plain ints ``N`` (mmrag's own
tasks); other hashable keys are accepted too (then label order stands for document order, see
the score). Grades are 3 (best fit), 2, 1; a position with nothing acceptable has empty lists.
List *every* position, as the reference labels do: a prediction at a position missing from the
labels is ignored by precision and score. The **results** map a position to the one image
inserted there (``None``/absent = "Not Insert"); see :func:`results_from_predictions`, which
applies the reference's ``load_result`` to a raw prediction list.

Per sample, exactly what the reference computes (its functions in brackets). An image counts as
*placed* when it is truthy (the reference tests ``if results[p]``: ``None``, ``""`` and the
integer ``0`` are not placed):

* ``R_lenient`` [``recall_1``]: the number of labelled positions whose result (placed or not, so
  a falsy image id such as ``0`` counts) is among the position's graded images, divided by the
  size of a maximum bipartite matching between positions and their graded images (1 if that
  size is 0). Not capped: the same image placed at two positions that both accept it counts
  twice, so values above 1 occur;
* ``R_strict`` [``recall_3``]: the same with grade-3 images only;
* ``P`` [``precion``]: among labelled positions with a *placed* image, the share whose image is
  graded there (1 when there is none);
* ``score`` [``score``]: the sum over labelled positions with a *placed* image of +3/+2/+1 by
  the image's grade there (the first of 3, 2, 1 that lists it) and -1 for an ungraded image,
  divided by the reference's ``maxBPM_score`` denominator (1 if that is 0), described next.

The score's denominator is **not** the maximum achievable score. The reference builds a weight
matrix with one row per position, row ``N - 1`` for ``"<Position N>"`` (the *number* in the key,
not the label order), and one column per image, columns numbered in order of first appearance
over the positions in label order; the weight of (position, image) is the grade under which the
label lists the image *last* in the label's own key order (``{"3": [x], "2": [x]}`` gives 2). It
then runs Kuhn's augmenting-path algorithm for a maximum-*cardinality* matching (rows in order,
columns in order) and sums, per position, the largest weight of any image the position was ever
matched to during the run (a position re-matched to a lesser image keeps its earlier weight).
This can exceed the best assignment (``{1: {"3": [x], "1": [y]}, 2: {"1": [x]}}``: 3 + 1 = 4,
the best assignment scores 3) and fall below it (``{1: {"1": [x]}, 2: {"3": [x]}}``: position 1
takes x first and keeps it, denominator 1, the best is 3; or the last-listed-grade rule above),
so per-sample scores above 1 occur. ``score_denominator="optimal"`` (not the default) divides by
the true maximum-weight assignment (``scipy.optimize.linear_sum_assignment``, each image at its
best grade) instead. The two agree whenever every acceptable image has one grade, e.g. in the
d2l figure-position benchmark (grade 3 only).

Where the reference's result depends on Python's hash seed (it numbers the columns in the
iteration order of ``list(set(...))`` of each position's images, which matters for the score
when grades are mixed), mmrag uses the order of first appearance (grades 3, 2, 1, list order),
so it is deterministic and equal to the reference wherever the reference is seed-independent.

Over a dataset (:func:`evaluate_positions`, :func:`evaluate_predictions`) each metric is the
mean over the scored samples, and ``F1 = 2·P·R_strict / (P + R_strict)`` from the averaged P
and R_strict (the reference computes F1 from the means, not per sample). A sample whose raw
predictions the reference cannot read (its ``load_result`` raises and it skips the sample) is
left out of every mean in the same way; :func:`evaluate_predictions` counts and lists those.

Deliberate deviations from the reference (docs/metrics.md lists them all):

* ``F1`` is 0 when ``P = R_strict = 0`` (the reference divides 0 by 0 and prints NaN);
* ``position_score`` raises :class:`ValueError` when the position numbers are not exactly
  1..n (the reference crashes with an ``IndexError`` on a gap, and on ``"<Position 0>"`` it
  silently uses the last row);
* a prediction ``"IMAGE_0"`` is malformed (the reference's ``image_paths[-1]`` silently takes
  the last image);
* an empty dataset (or one whose every sample was dropped) raises :class:`ValueError` (the
  reference prints NaN means).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = [
    "GRADES",
    "NOT_INSERT",
    "MalformedPredictionError",
    "evaluate_positions",
    "evaluate_predictions",
    "max_matching_size",
    "position_rows",
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


class MalformedPredictionError(ValueError):
    """A raw prediction the reference's ``load_result`` cannot read (the sample is dropped)."""


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
    hits = sum(1 for p in labels if p in results and results[p] in _graded(labels[p], grades))
    return 1.0 if denominator == 0 else hits / denominator


def recall_strict(labels: Labels, results: Results) -> float:
    """R_strict (``recall_3``): positions holding one of their grade-3 images over the size of the
    grade-3 maximum matching (module docstring)."""
    return _recall(labels, results, ("3",))


def recall_lenient(labels: Labels, results: Results) -> float:
    """R_lenient (``recall_1``): positions holding one of their graded images over the size of the
    any-grade maximum matching (module docstring)."""
    return _recall(labels, results, GRADES)


def precision(labels: Labels, results: Results) -> float:
    """P (``precion``): among labelled positions with a placed (truthy) image, the share with a
    graded image; 1 when there is none."""
    n = hits = 0
    for p, img in results.items():
        if img and p in labels:
            n += 1
            hits += img in _graded(labels[p])
    return 1.0 if n == 0 else hits / n


_POSITION_KEY = re.compile(r"<Position (\d+)>")


def _position_number(key: Hashable) -> int | None:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str):
        m = _POSITION_KEY.search(key)
        return int(m.group(1)) if m else None
    return None


def position_rows(labels: Labels) -> list[Hashable]:
    """The label keys in the order of the score's weight-matrix rows: by position number
    (``"<Position N>"`` or an int ``N``), or in label order when no key carries a number.

    :class:`ValueError` when the numbers are not exactly 1..n (the reference crashes on a gap
    with an ``IndexError``) or only some keys carry one."""
    keys = list(labels)
    numbers = [_position_number(p) for p in keys]
    if all(n is None for n in numbers):
        return keys
    if any(n is None for n in numbers):
        bad = [p for p, n in zip(keys, numbers) if n is None][:3]
        raise ValueError(f"position keys mix numbered ('<Position N>' or int) and other keys: {bad!r}")
    if sorted(numbers) != list(range(1, len(keys) + 1)):  # type: ignore[type-var]
        raise ValueError(
            f"position numbers must be exactly 1..{len(keys)} for the score (got {sorted(numbers)}); "  # type: ignore[type-var]
            "the reference ipp_eval.py uses <Position N> as row N-1 of a matrix with one row per "
            "position and crashes on a gap")
    return [p for _, p in sorted(zip(numbers, keys), key=lambda t: t[0])]  # type: ignore[arg-type,return-value]


def _image_columns(labels: Labels) -> dict[Hashable, int]:
    images: dict[Hashable, int] = {}
    for p in labels:  # label order, as the reference's item_to_index
        for img in _graded(labels[p]):
            images.setdefault(img, len(images))
    return images


def _reference_max_score(labels: Labels) -> int:
    """The reference's ``max_items_score``/``maxBPM_score`` (module docstring)."""
    rows = position_rows(labels)
    images = _image_columns(labels)
    weight = [[0] * len(images) for _ in rows]
    for u, p in enumerate(rows):
        for g, imgs in labels[p].items():  # the label's own key order: a later grade overwrites
            for img in imgs or ():
                if img in images:
                    weight[u][images[img]] = int(g)
    match_of_image = [-1] * len(images)
    best = [0] * len(rows)

    def augment(u: int, seen: list[bool]) -> bool:
        for v in range(len(images)):
            if not seen[v] and weight[u][v]:
                seen[v] = True
                if match_of_image[v] == -1 or augment(match_of_image[v], seen):
                    match_of_image[v] = u
                    best[u] = max(best[u], weight[u][v])
                    return True
        return False

    for u in range(len(rows)):
        augment(u, [False] * len(images))
    return sum(best)


def _grade_of(label: Mapping[str, Sequence[Hashable]], img: Hashable) -> int:
    for g in GRADES:
        if img in (label.get(g) or ()):
            return int(g)
    return 0


def _optimal_max_score(labels: Labels) -> int:
    positions = list(labels)
    images = _image_columns(labels)
    if not images:
        return 0
    w = np.zeros((len(positions), len(images)))
    for u, p in enumerate(positions):
        for img in _graded(labels[p]):
            w[u, images[img]] = _grade_of(labels[p], img)
    r, c = linear_sum_assignment(w, maximize=True)
    return int(w[r, c].sum())


def position_score(labels: Labels, results: Results, score_denominator: str = "reference") -> float:
    """Score (``score``): +3/+2/+1 by grade, -1 for an ungraded image, over placed (truthy) images
    at labelled positions, divided by the reference's ``maxBPM_score`` (default; not always the
    maximum achievable score, see the module docstring) or, with ``"optimal"``, by the best
    assignment's score; 1 when the denominator is 0."""
    if score_denominator == "reference":
        best = _reference_max_score(labels)
    elif score_denominator == "optimal":
        best = _optimal_max_score(labels)
    else:
        raise ValueError("score_denominator must be 'reference' or 'optimal'")
    total = 0
    for p, img in results.items():
        if img and p in labels:
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


def _means(per: list[dict[str, float]], given: int, dropped: list[dict[str, Any]]) -> dict[str, Any]:
    if not per:
        raise ValueError("no samples to evaluate" if not given else
                         f"no samples to evaluate: all {given} were dropped (malformed predictions)")
    out: dict[str, Any] = {"n": len(per), "n_samples": given, "n_dropped": len(dropped)}
    for key in ("R_lenient", "R_strict", "P", "score"):
        out[key] = float(np.mean([m[key] for m in per]))
    p, r = out["P"], out["R_strict"]
    out["F1"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)  # the reference: NaN when both are 0
    if dropped:
        out["dropped"] = dropped
        out["note"] = (f"{len(dropped)} of {given} samples dropped (malformed predictions) and left out of "
                       f"every mean, as the official ipp_eval.py does; means over the other {len(per)}")
    return out


def evaluate_positions(samples: Iterable[tuple[Labels, Results]], score_denominator: str = "reference") -> dict[str, Any]:
    """Dataset metrics of already-read results: means of the per-sample metrics and F1 from the
    mean P and R_strict.

    Returns ``{"n", "n_samples", "n_dropped", "R_lenient", "R_strict", "P", "F1", "score"}``
    (nothing is dropped here: ``n_dropped`` is 0; see :func:`evaluate_predictions` for raw
    predictions). An empty dataset is a :class:`ValueError`."""
    per = [sample_metrics(lab, res, score_denominator) for lab, res in samples]
    return _means(per, len(per), [])


def evaluate_predictions(samples: Iterable[tuple[Labels, Any, Sequence[Hashable]]],
                         score_denominator: str = "reference") -> dict[str, Any]:
    """Dataset metrics of raw predictions, as the reference's ``eval_three_stage``.

    ``samples``: ``(labels, predictions, images)`` per sample, ``predictions`` as
    :func:`results_from_predictions` takes them. A sample whose predictions are malformed (the
    reference's ``load_result`` raises and the sample is skipped) is left out of every mean;
    the result adds ``n_samples`` (given), ``n`` (scored), ``n_dropped``, and when any was
    dropped ``dropped`` (``[{"index", "reason"}]``) and a ``note`` saying so; a warning is
    issued too."""
    per, dropped, given = [], [], 0
    for i, (labels, predictions, images) in enumerate(samples):
        given += 1
        try:
            results = results_from_predictions(predictions, images)
        except MalformedPredictionError as e:
            dropped.append({"index": i, "reason": str(e)})
            continue
        per.append(sample_metrics(labels, results, score_denominator))
    out = _means(per, given, dropped)
    if dropped:
        warnings.warn(out["note"], stacklevel=2)
    return out


_IMAGE_KEY = re.compile(r"IMAGE_(\d+)")


def results_from_predictions(predictions: Any, images: Sequence[Hashable]) -> dict[Hashable, Hashable]:
    """The reference's ``load_result``: ``[{"position", "image": "IMAGE_k" | "Not Insert"}, ...]``
    -> ``{position: images[k-1]}`` (``predictions`` may also be the model output
    ``{"predictions": [...]}`` or its JSON text, as the reference reads it). A prediction whose image is exactly
    ``"Not Insert"`` is skipped; an image string already seen earlier is ignored (each image at
    most once); a later prediction at the same position replaces an earlier one.

    :class:`MalformedPredictionError` wherever the reference's ``load_result`` raises (it then
    drops the whole sample): JSON that does not parse, no ``predictions`` list, a prediction
    that is not an object or has no ``image`` key, an image that is not ``"Not Insert"`` and
    names no ``IMAGE_k`` (e.g. lower-case ``"not insert"``, ``null``, a number), ``k`` beyond
    the candidates, no ``position`` key. Also for ``IMAGE_0``, which the reference silently
    reads as the last image (a deliberate deviation)."""
    if isinstance(predictions, (str, bytes)):
        try:
            predictions = json.loads(predictions)
        except ValueError as e:
            raise MalformedPredictionError(f"predictions are not valid JSON ({e})") from None
        if not isinstance(predictions, Mapping):
            raise MalformedPredictionError("model output JSON is not an object with 'predictions'")
    if isinstance(predictions, Mapping):
        if "predictions" not in predictions:
            raise MalformedPredictionError("model output has no 'predictions'")
        predictions = predictions["predictions"]
    if isinstance(predictions, (str, bytes, Mapping)) or not isinstance(predictions, Iterable):
        raise MalformedPredictionError(f"predictions must be a list of objects, got {type(predictions).__name__}")
    out: dict[Hashable, Hashable] = {}
    used: set[str] = set()
    for pred in predictions:
        if not isinstance(pred, Mapping):
            raise MalformedPredictionError(f"prediction {pred!r} is not an object")
        if "image" not in pred:
            raise MalformedPredictionError(f"prediction {pred!r} has no 'image'")
        image = pred["image"]
        if image == NOT_INSERT:
            continue
        if isinstance(image, str) and image in used:
            continue
        m = _IMAGE_KEY.search(image) if isinstance(image, str) else None
        if m is None:
            raise MalformedPredictionError(f"prediction {pred!r}: image is neither 'IMAGE_k' nor {NOT_INSERT!r}")
        if "position" not in pred:
            raise MalformedPredictionError(f"prediction {pred!r} has no 'position'")
        try:
            hash(pred["position"])
        except TypeError:
            raise MalformedPredictionError(f"prediction {pred!r}: position is not a key") from None
        k = int(m.group(1))
        if not 1 <= k <= len(images):
            raise MalformedPredictionError(f"prediction {pred!r} refers to no candidate image (1..{len(images)})")
        used.add(image)
        out[pred["position"]] = images[k - 1]
    return out
