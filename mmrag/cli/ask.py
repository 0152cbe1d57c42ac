"""``mmrag ask`` (RIR: answer with similar images as cues) and ``mmrag eval ask`` (VQA with/without RIR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmrag.cli.common import (
    BridgeOpt, CorpusArg, DataDirAlias, DatasetAlias, EncoderModelOpt, EncoderOpt, GenOpt, KindOpt,
    encoder_from_options, fail, out, parse_gen_opts, write_json_report,
)
from mmrag.errors import MmragError


def _generator(name: Optional[str], gen_opts: list[str]):
    """The answering generator (built here so --gen-opt reaches it), or None for a non-generator answerer."""
    if not name:
        if gen_opts:
            fail("--gen-opt needs --generator")
        return None
    from mmrag.generators import create_generator

    try:
        return create_generator(name, **parse_gen_opts(gen_opts))
    except KeyError as e:
        fail(str(e.args[0] if e.args else e))


def _pipeline(index_dir: Optional[Path], provider: str, answerer: str, generator, k: Optional[int]):
    from mmrag.tasks.rir.pipeline import RIRPipeline
    from mmrag.tasks.rir.providers import create_provider

    if provider == "index":
        if index_dir is None:
            fail("--index is required with the index provider (build one with `mmrag index` "
                 "or let `mmrag eval ask` build the VQA-RAD one)")
        prov = create_provider("index", index_dir=index_dir)  # searched with the index's own encoder
    else:
        prov = create_provider(provider)
    if generator is not None:
        return RIRPipeline(prov, answerer="generator", generator=generator, k=k)
    return RIRPipeline(prov, answerer=answerer, k=k)


def ask(
    image: Path = typer.Argument(..., help="The image the question is about."),
    question: str = typer.Argument(..., help="The question."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index to search for similar images (its encoder is used)."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Similar images retrieved (the cues); default 10 for "
                                                         "knn (chosen on VQA-RAD dev), 5 for generators."),
    no_rir: bool = typer.Option(False, "--no-rir", help="Answer without reverse image retrieval (baseline)."),
    answerer: str = typer.Option("auto", help="auto (knn with QA pairs in the index, else captions), knn (votes "
                                              "with answers to similar questions), captions (from the similar "
                                              "images' captions) or a generator name."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g",
                                            help="Answer with this generator (local, openai, ...) instead of knn."),
    gen_opt: GenOpt = [],
    provider: str = typer.Option("index", help="Reverse search provider: index (local) or web (a slot; offline)."),
    exclude_same_image: bool = typer.Option(False, help="Leave the query image itself (same id or bytes) out "
                                                        "of the neighbours and the answerer's memory."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and its evidence as JSON."),
):
    """Answer a question about an image, with the similar images (and what is known about them) as cues."""
    if not image.is_file():
        fail(f"{image}: no such image file")
    if not question.strip():
        fail("the question is empty")
    from mmrag.corpus.images import open_image

    open_image(image)  # an unreadable file fails here (ImageError, one line), before any model loads
    try:
        pipe = _pipeline(index_dir, provider, answerer, _generator(generator, gen_opt), k)
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
    out.print(f"[bold]{a.answer}[/]   ({a.answerer}, {'RIR' if a.rir else 'no RIR'})")
    for i, e in enumerate(a.evidence, 1):
        out.print(f"  [{i}] {e.id}  similarity {e.similarity:.3f}")
        for t in e.texts:
            out.print(f"      {t}", markup=False)
    votes = a.details.get("votes")
    if votes:
        out.print("  votes: " + ", ".join(f"{v['answer']} {v['score']:.2f}" for v in votes))


def eval_ask(
    corpus: CorpusArg = None,
    kind: KindOpt = "vqa-rad",
    train: Optional[Path] = typer.Option(None, help="jsonl: questions whose answers form the knowledge index."),
    test: Optional[Path] = typer.Option(None, help="jsonl: the questions to answer and score."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i",
                                             help="Use this index as the knowledge (default: build one from train, cached)."),
    answerer: str = typer.Option("knn", help="knn or a generator name."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="Answer with this generator instead of knn."),
    gen_opt: GenOpt = [],
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Similar images retrieved (default 10 for knn, chosen on VQA-RAD dev; 5 for generators)."),
    setting: str = typer.Option("both", help="both, excluded (query image left out: the headline) or included."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N test questions (quick runs)."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples for the 95 % intervals."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report (with per-question records) here."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Answer every test question with and without RIR; closed accuracy, open recall, per question type, 95 % CIs.

    PATH: the VQA-RAD folder (--kind vqa-rad); --kind jsonl reads --train/--test ({image, question, answers} per line)."""
    from mmrag.tasks.rir.evaluate import run_eval

    choice = {"both": None, "excluded": ("query_image_excluded",), "included": ("query_image_included",)}
    if setting not in choice:
        fail("--setting must be both, excluded or included")
    if corpus is not None and data_dir is not None and corpus != data_dir:
        fail(f"give the VQA folder once: PATH {corpus} or --data-dir {data_dir}")
    kind = dataset or kind
    if kind not in ("vqa-rad", "jsonl"):
        fail(f"unknown --kind {kind!r}; use vqa-rad or jsonl")
    # the knowledge index is searched with its own encoder; the options build one from train
    enc = None if index_dir is not None else encoder_from_options(encoder, encoder_model, bridge)
    if index_dir is not None and (encoder or encoder_model or bridge):
        fail("--encoder/--encoder-model/--bridge do not apply with --index: the index's own encoder is used")
    rep = run_eval(kind, corpus or data_dir, train, test, index_dir, answerer, _generator(generator, gen_opt), k,
                   choice[setting], limit, n_boot, encoder=enc)
    write_json_report(json_out, rep)
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
