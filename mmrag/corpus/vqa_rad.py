"""VQA datasets: questions about images with reference answers.

Formats (``kind`` for :func:`read_vqa`):

``vqa-rad``
    The VQA-RAD folder: ``trainset.json`` / ``testset.json`` (lists of
    ``{qid, image_name, question, answer, answer_type, question_type, image_organ, ...}``) and the
    images under ``images/``. ``split`` is ``"train"`` or ``"test"``.
``jsonl``
    One JSON object per line: ``{"image": "path.jpg", "question": "...", "answers": ["..."]}``,
    optionally with ``"id"``, ``"answer_type"`` (``CLOSED``/``OPEN``; when absent a question whose
    answers are all yes/no is CLOSED, any other OPEN), ``"question_type"``, ``"split"`` and
    ``"image_id"`` (defaults to the image path). ``"answer"`` (a string) is accepted for
    ``"answers"``. Image paths are relative to ``image_dir`` (default: the file's folder).

Policies (as for corpus readers): a file that is not UTF-8 or not JSON is a
:class:`~mmrag.errors.CorpusError` naming the place; a bad row or a missing image file is
skipped with the reason in ``skipped`` (never fatal); an empty result is a ``CorpusError``.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmrag.corpus.items import Corpus, CorpusItem, Skipped
from mmrag.corpus.readers import _check_limit, existing_path, file_problem, load_json, parse_jsonl, register_reader
from mmrag.errors import CorpusError

__all__ = ["VQAQuestion", "VQADataset", "VQA_READERS", "read_vqa", "read_vqa_rad", "read_vqa_jsonl",
           "qa_corpus", "qa_text", "read_vqa_rad_corpus", "split_by_image", "YES_NO"]

YES_NO = frozenset({"yes", "no"})


@dataclass
class VQAQuestion:
    """One question about one image. ``image_id`` names the image across questions and in an
    index built from them; ``answers`` are the accepted reference answers (may be empty for
    questions asked by users)."""

    qid: str
    image: Path
    image_id: str
    question: str
    answers: list[str] = field(default_factory=list)
    answer_type: str = "OPEN"  # CLOSED (yes/no, either/or) or OPEN
    question_type: str = "OTHER"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image"] = str(self.image)
        return d


@dataclass
class VQADataset:
    name: str
    questions: list[VQAQuestion]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions)

    def image_ids(self) -> list[str]:
        return list(OrderedDict.fromkeys(q.image_id for q in self.questions))


def _infer_answer_type(answers: list[str]) -> str:
    return "CLOSED" if answers and all(a.strip().lower() in YES_NO for a in answers) else "OPEN"


def _finish(name: str, questions: list[VQAQuestion], skipped: list[Skipped], limit: int | None,
            source: Path) -> VQADataset:
    missing: dict[Path, str | None] = {}
    kept = []
    for q in questions:
        if q.image not in missing:
            missing[q.image] = file_problem(q.image)
        if missing[q.image]:
            skipped.append(Skipped(f"{q.qid}: {q.image}", missing[q.image] or ""))
            continue
        kept.append(q)
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        first = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:3])
        raise CorpusError(f"no usable questions in {source}" + (f" ({len(skipped)} skipped, e.g. {first})" if skipped else ""))
    return VQADataset(name=name, questions=kept, skipped=skipped)


def read_vqa_rad(data_dir: str | os.PathLike, split: str = "test", limit: int | None = None) -> VQADataset:
    """VQA-RAD (``trainset.json`` / ``testset.json`` + ``images/``); ``split``: train or test."""
    root = existing_path(data_dir)
    if split not in ("train", "test"):
        raise CorpusError(f"VQA-RAD has the splits 'train' and 'test', not {split!r}")
    path = root / f"{split}set.json"
    if not path.is_file():
        raise CorpusError(f"{root} does not look like VQA-RAD: {path.name} is missing")
    image_dir = root / "images" if (root / "images").is_dir() else root
    rows = load_json(path)
    if not isinstance(rows, list):
        raise CorpusError(f"{path}: expected a JSON list of questions")
    skipped: list[Skipped] = []
    questions = []
    for n, r in enumerate(rows):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) and r.get(k).strip()
                                              for k in ("image_name", "question")):
            skipped.append(Skipped(f"{path}[{n}]", "not a question with image_name and question"))
            continue
        answer = str(r.get("answer", "")).strip()
        answers = [answer] if answer else []
        questions.append(VQAQuestion(
            qid=str(r.get("qid", n)), image=image_dir / r["image_name"], image_id=r["image_name"],
            question=r["question"].strip(), answers=answers,
            answer_type=str(r.get("answer_type") or _infer_answer_type(answers)).upper(),
            question_type=str(r.get("question_type") or "OTHER"),
            metadata={k: r[k] for k in ("image_organ", "phrase_type") if k in r},
        ))
    return _finish(f"vqa-rad-{split}", questions, skipped, limit, path)


def read_vqa_jsonl(path: str | os.PathLike, split: str | None = None, limit: int | None = None,
                   image_dir: str | os.PathLike | None = None) -> VQADataset:
    """A JSONL VQA file (see the module docstring); ``split`` keeps rows whose ``split`` matches."""
    jpath = existing_path(path)
    if jpath.is_dir():
        raise CorpusError(f"{jpath}: a directory; give the .jsonl file")
    base = existing_path(image_dir) if image_dir is not None else jpath.parent
    skipped: list[Skipped] = []
    questions = []
    for n, row in parse_jsonl(jpath, skipped):
        where = f"{jpath}:{n}"
        image, question = row.get("image"), row.get("question")
        if not isinstance(image, str) or not image.strip():
            skipped.append(Skipped(where, f"line {n}: no 'image' path"))
            continue
        if not isinstance(question, str) or not question.strip():
            skipped.append(Skipped(where, f"line {n}: no 'question'"))
            continue
        answers = row.get("answers", row.get("answer", []))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, (str, int, float)) for a in answers):
            skipped.append(Skipped(where, f"line {n}: 'answers' must be a list of strings"))
            continue
        answers = [str(a).strip() for a in answers if str(a).strip()]
        if split is not None and str(row.get("split")) != split:
            continue
        meta = {k: v for k, v in row.items()
                if k not in ("image", "question", "answers", "answer", "id", "answer_type", "question_type", "image_id")}
        questions.append(VQAQuestion(
            qid=str(row.get("id", n)), image=base / image, image_id=str(row.get("image_id") or image),
            question=question.strip(), answers=answers,
            answer_type=str(row.get("answer_type") or _infer_answer_type(answers)).upper(),
            question_type=str(row.get("question_type") or "OTHER"), metadata=meta,
        ))
    return _finish(jpath.stem + (f"-{split}" if split else ""), questions, skipped, limit, jpath)


VQA_READERS: dict[str, Callable[..., VQADataset]] = {"vqa-rad": read_vqa_rad, "jsonl": read_vqa_jsonl}


def read_vqa(kind: str, path: str | os.PathLike, **options) -> VQADataset:
    """Read a VQA dataset by format name (``vqa-rad`` or ``jsonl``)."""
    try:
        reader = VQA_READERS[kind]
    except KeyError:
        raise CorpusError(f"unknown VQA dataset format {kind!r}; available: {', '.join(VQA_READERS)}") from None
    return reader(path, **options)


def qa_corpus(dataset: VQADataset, name: str | None = None, captions: bool = False) -> Corpus:
    """A corpus for the indexer: one item per image, its QA pairs in ``metadata["qa"]``
    (``[{question, answer, answer_type, question_type}]``) — what reverse image retrieval
    later shows about a neighbour. Only the first reference answer of each question is kept.
    ``captions``: also caption each image by its QA pairs (:func:`qa_text`), for a bridge fit."""
    by_image: dict[str, CorpusItem] = {}
    for q in dataset.questions:
        item = by_image.get(q.image_id)
        if item is None:
            extra = {k: v for k, v in q.metadata.items() if k in ("image_organ",)}
            item = by_image[q.image_id] = CorpusItem(id=q.image_id, path=q.image, metadata={"qa": [], **extra})
        if q.answers:
            item.metadata["qa"].append({"question": q.question, "answer": q.answers[0],
                                        "answer_type": q.answer_type, "question_type": q.question_type})
    items = sorted(by_image.values(), key=lambda it: it.id)
    if not items:
        raise CorpusError(f"{dataset.name}: no questions to index")
    if captions:
        for it in items:
            it.captions = [qa_text(qa["question"], qa["answer"]) for qa in it.metadata["qa"]]
    root = Path(os.path.commonpath([str(it.path.parent) for it in items]))
    return Corpus(name=name or dataset.name, root=root, items=items)


def qa_text(question: str, answer: str) -> str:
    """One QA pair as one text: the question followed by its answer ("is the heart enlarged? yes")."""
    return f"{question.strip()} {answer.strip()}".strip()


@register_reader("vqa-rad")
def read_vqa_rad_corpus(path: str | os.PathLike, split: str | None = None, limit: int | None = None) -> Corpus:
    """VQA-RAD as a captioned corpus (``--kind vqa-rad`` for ``mmrag bridge fit``, ``index``, ...):
    one item per image of the split, its *captions* the split's QA pairs about it, each read as
    :func:`qa_text`, and the pairs themselves in ``metadata["qa"]`` (as :func:`qa_corpus`).

    Radiology images have no captions; their questions and answers are the only text VQA-RAD
    gives about them (organ, modality, finding asked about), so a bridge fitted on these texts
    learns which images are asked the same things. ``split``: train or test (an image appears in
    both with different questions, so one is required); ``limit``: at most this many images."""
    _check_limit(limit)
    if split is None:
        raise CorpusError("VQA-RAD has the splits 'train' and 'test' (an image is in both): give --split train or test")
    corpus = qa_corpus(read_vqa_rad(path, split), captions=True)
    for it in corpus.items:
        it.split = split
    if limit is not None:
        corpus.items = corpus.items[:limit]
    return corpus


def split_by_image(dataset: VQADataset, dev_fraction: float = 0.2, seed: int = 0) -> tuple[VQADataset, VQADataset]:
    """(fit, dev): a deterministic split of a dataset *by image*, so no dev image has questions
    on the fit side (used to choose hyperparameters without touching a test set)."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError("dev_fraction must be in (0, 1)")
    images = sorted(dataset.image_ids())
    random.Random(seed).shuffle(images)
    dev_ids = set(images[: max(1, round(dev_fraction * len(images)))])
    fit = [q for q in dataset.questions if q.image_id not in dev_ids]
    dev = [q for q in dataset.questions if q.image_id in dev_ids]
    return (VQADataset(dataset.name + "-fit", fit), VQADataset(dataset.name + "-dev", dev))
