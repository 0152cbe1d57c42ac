"""``mmrag ask`` and ``mmrag eval ask`` (registered into the main CLI by ``register``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from mmrag.errors import CorpusError, MmragError

__all__ = ["register", "ask", "eval_ask", "run_eval"]


def _pipeline(index_dir: Optional[Path], provider: str, answerer: str, generator: Optional[str], k: Optional[int], **knn):
    from mmrag.tasks.rir.pipeline import RIRPipeline
    from mmrag.tasks.rir.providers import create_provider

    if provider == "index":
        if index_dir is None:
            raise MmragError("--index is required with the index provider (build one with `mmrag index` "
                             "or let `mmrag eval ask` build the VQA-RAD one)")
        prov = create_provider("index", index_dir=index_dir)
    else:
        prov = create_provider(provider)
    if generator:
        return RIRPipeline(prov, answerer="generator", generator=generator, k=k)
    opts = {key: v for key, v in knn.items() if v is not None} if answerer == "knn" else {}
    return RIRPipeline(prov, answerer=answerer, k=k, **opts)


def ask(
    image: Path = typer.Argument(..., help="The image the question is about."),
    question: str = typer.Argument(..., help="The question."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index to search for similar images."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Similar images retrieved (the cues); default 20 for "
                                                         "knn (chosen on VQA-RAD dev), 5 for generators."),
    no_rir: bool = typer.Option(False, "--no-rir", help="Answer without reverse image retrieval (baseline)."),
    answerer: str = typer.Option("knn", help="knn (votes with answers to similar questions; needs QA pairs "
                                             "in the index) or a generator name."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g",
                                            help="Answer with this generator (local, openai, ...) instead of knn."),
    provider: str = typer.Option("index", help="Reverse search provider: index (local) or web (a slot; offline)."),
    exclude_same_image: bool = typer.Option(False, help="Leave the query image itself (same id or bytes) out "
                                                        "of the neighbours and the answerer's memory."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and its evidence as JSON."),
):
    """Answer a question about an image, with the similar images (and what is known about them) as cues."""
    from rich.console import Console

    if not image.is_file():
        raise MmragError(f"{image}: no such image file")
    if not question.strip():
        raise MmragError("the question is empty")
    try:
        pipe = _pipeline(index_dir, provider, answerer, generator, k)
    except KeyError as e:
        raise MmragError(str(e.args[0] if e.args else e)) from None
    try:
        a = pipe.ask(image, question, rir=not no_rir, exclude_same_image=exclude_same_image)
    except (ValueError, KeyError) as e:
        raise MmragError(str(e)) from None
    finally:
        pipe.close()
    if as_json:
        print(json.dumps(a.to_dict(), indent=2, ensure_ascii=False))
        return
    out = Console()
    out.print(f"[bold]{a.answer}[/]   ({a.answerer}, {'RIR' if a.rir else 'no RIR'})")
    for i, e in enumerate(a.evidence, 1):
        out.print(f"  [{i}] {e.id}  similarity {e.similarity:.3f}")
        for t in e.texts:
            out.print(f"      {t}", markup=False)
    votes = a.details.get("votes")
    if votes:
        out.print("  votes: " + ", ".join(f"{v['answer']} {v['score']:.2f}" for v in votes))


def run_eval(dataset: str = "vqa-rad", data_dir: Optional[Path] = None, train: Optional[Path] = None,
             test: Optional[Path] = None, index_dir: Optional[Path] = None, answerer: str = "knn",
             generator: Optional[str] = None, k: Optional[int] = None, settings: tuple[str, ...] | None = None,
             limit: Optional[int] = None, n_boot: int = 2000, progress: bool = True,
             knn_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The evaluation behind ``mmrag eval ask``; returns the JSON report (see ``eval_ask``)."""
    from mmrag.encoders import create_encoder
    from mmrag.tasks.rir.evaluate import HEADLINE, SETTINGS, evaluate_vqa, vqa_index_dir
    from mmrag.tasks.rir.pipeline import RIRPipeline
    from mmrag.tasks.rir.providers import create_provider
    from mmrag.tasks.rir import index_vqa, read_vqa_jsonl, read_vqa_rad

    settings = tuple(settings or SETTINGS)
    if dataset == "vqa-rad":
        if data_dir is None:
            raise MmragError("--data-dir is required for vqa-rad (the folder with trainset.json, testset.json, images/)")
        train_ds, test_ds = read_vqa_rad(data_dir, "train"), read_vqa_rad(data_dir, "test", limit=limit)
    elif dataset == "jsonl":
        if test is None:
            raise MmragError("--test FILE.jsonl is required with --dataset jsonl")
        test_ds = read_vqa_jsonl(test, limit=limit)
        train_ds = read_vqa_jsonl(train) if train is not None else None
        if train_ds is None and index_dir is None:
            raise MmragError("give --train FILE.jsonl (indexed with its QA pairs) or --index IDX")
    else:
        raise MmragError(f"unknown dataset {dataset!r}; use vqa-rad or jsonl")
    if not any(q.answers for q in test_ds.questions):
        raise CorpusError(f"{test_ds.name}: no question has a reference answer; nothing to score")

    built = None
    if index_dir is None:
        enc = create_encoder("effnet-minilm")
        index_dir = vqa_index_dir(train_ds, enc)
        built = index_vqa(train_ds, index_dir, enc, progress=progress).as_dict()
        prov = create_provider("index", index_dir=index_dir, encoder=enc)
    else:
        prov = create_provider("index", index_dir=index_dir)
    if generator:
        pipe = RIRPipeline(prov, answerer="generator", generator=generator, k=k)
    else:
        pipe = RIRPipeline(prov, answerer=answerer, k=k, **({} if answerer != "knn" else (knn_options or {})))
    try:
        res = evaluate_vqa(pipe, test_ds, settings=settings, k=pipe.k, n_boot=n_boot, progress=progress)
    finally:
        pipe.close()
    head = HEADLINE if HEADLINE in res["settings"] else settings[0]
    h = res["settings"][head]
    report: dict[str, Any] = {
        "dataset": test_ds.name, "n_questions": len(test_ds),
        "n_closed": h["rir"]["n_closed"], "n_open": h["rir"]["n_open"],
        "answerer": pipe.answerer.name, "k": pipe.k, "headline_setting": head,
        "knn_config": getattr(getattr(pipe.answerer, "config", None), "__dict__", None),
        "index": str(index_dir), "index_build": built and {key: built[key] for key in ("added", "total_images")},
    }
    for m in ("closed_acc", "open_recall", "open_exact", "overall"):
        report[m] = {"rir": h["rir"][m], "no_rir": h["no_rir"][m]}
        report[m + "_ci95"] = {"rir": h["rir"][m + "_ci95"], "no_rir": h["no_rir"][m + "_ci95"],
                               "gain": h["gain"].get(m, {}).get("ci95")}
    report["settings"] = res["settings"]
    report["timing"] = res["timing"]
    report["records"] = res["records"]
    return report


def eval_ask(
    dataset: str = typer.Option("vqa-rad", help="vqa-rad or jsonl ({image, question, answers} per line)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="vqa-rad: the VQA-RAD folder."),
    train: Optional[Path] = typer.Option(None, help="jsonl: questions whose answers form the knowledge index."),
    test: Optional[Path] = typer.Option(None, help="jsonl: the questions to answer and score."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i",
                                             help="Use this index as the knowledge (default: build one from train, cached)."),
    answerer: str = typer.Option("knn", help="knn or a generator name."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="Answer with this generator instead of knn."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Similar images retrieved (default 20 for knn, 5 for generators)."),
    setting: str = typer.Option("both", help="both, excluded (query image left out: the headline) or included."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N test questions (quick runs)."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % intervals."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report (with per-question records) here."),
):
    """Answer every test question with and without RIR; closed accuracy, open recall, per question type, 95 % CIs."""
    from rich.console import Console
    from rich.table import Table

    choice = {"both": None, "excluded": ("query_image_excluded",), "included": ("query_image_included",)}
    if setting not in choice:
        raise MmragError("--setting must be both, excluded or included")
    rep = run_eval(dataset, data_dir, train, test, index_dir, answerer, generator, k, choice[setting], limit, n_boot)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_out.with_name(json_out.name + ".tmp")
        tmp.write_text(json.dumps(rep, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(json_out)
        print(f"wrote {json_out}", file=sys.stderr)
    out = Console()
    t = Table(title=f"{rep['dataset']}: {rep['n_questions']} questions ({rep['n_closed']} closed, "
                    f"{rep['n_open']} open), answerer {rep['answerer']}, k={rep['k']}")
    for c in ("setting", "metric", "no RIR", "RIR", "gain (95 % CI)"):
        t.add_column(c)
    for s, res in rep["settings"].items():
        for m in ("closed_acc", "open_recall", "open_exact", "overall"):
            g = res["gain"].get(m)
            if g is None:
                continue
            ci = g["ci95"]
            t.add_row(s, m, f"{res['no_rir'][m]:.1f}", f"{res['rir'][m]:.1f}",
                      f"{g['points']:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]")
    out.print(t)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("ask")(ask)
    eval_app.command("ask")(eval_ask)
