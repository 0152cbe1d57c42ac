"""ImageRef verbs: ``mmrag compose``, ``mmrag eval imageref`` (figure positions), ``mmrag eval judge``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmrag.cli.common import (
    BridgeOpt, EncoderModelOpt, EncoderOpt, GenOpt, err, fail, index_exists, out, parse_gen_opts,
    resolve_encoder, write_json_report,
)


def compose(
    query: str = typer.Argument(..., help="The question to answer."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Document file or folder (.md, .html, .jsonl)."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index with ingested documents (see --ingest)."),
    ingest: Optional[Path] = typer.Option(None, "--ingest", help="With --docs: also add the documents (chunks + images) "
                                                                 "to this index (an existing one keeps its encoder)."),
    ocr: bool = typer.Option(False, "--ocr", help="With --ingest: read the text in each image (OCR; the 'ocr' extra) "
                                                  "into the index, for --use-ocr."),
    use_ocr: bool = typer.Option(False, "--use-ocr", help="With --index: match a candidate image's OCR text against the "
                                                          "sections too (off by default: it lowered placement F1 on d2l dev)."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    generator: str = typer.Option("extractive", help="Stage-1 answer: extractive (offline), local, openai, ..."),
    gen_opt: GenOpt = [],
    top_chunks: int = typer.Option(8, help="Text chunks retrieved for the answer."),
    max_images: int = typer.Option(12, help="Candidate images given to the insertion stage."),
    threshold: Optional[float] = typer.Option(None, help="'Not Insert' below this relevance (default: chosen on d2l dev)."),
    header_image: bool = typer.Option(False, help="Let position 1 also take an image that suits the whole answer (header image)."),
    caption_missing: bool = typer.Option(False, help="Caption images that have no caption or surrounding text with mRAG-gim (needs Flickr8k)."),
    render_mode: str = typer.Option("path", "--render", help="Print the answer with IMAGE_k resolved: path, data, html, or none (raw IMAGE_k)."),
    as_json: bool = typer.Option(False, "--json", help="Print the composition as JSON."),
):
    """Answer a question from documents with images, inserting the relevant images in place
    (ImageRef-VL three-stage pipeline). Output: Markdown with !\\[caption](IMAGE_k) resolved to files."""
    from mmrag.tasks.imageref import ComposeConfig, read_documents
    from mmrag.tasks.imageref import compose as compose_answer

    if (docs is None) == (index is None):
        fail("give --docs DIR or --index IDX (one of them)")
    if ingest is not None and docs is None:
        fail("--ingest needs --docs")
    if ocr and ingest is None:
        fail("--ocr needs --ingest (the text is read when the images are indexed)")
    if use_ocr and index is None:
        fail("--use-ocr needs --index (an index whose images were ingested with --ocr)")
    if ocr:  # fail before any work when the package is missing
        from mmrag.embedding.enrich import check_available
        from mmrag.errors import ModelUnavailableError

        try:
            check_available(("ocr",))
        except ModelUnavailableError as e:
            fail(str(e))
    if render_mode not in ("path", "data", "html", "none"):
        fail("--render must be path, data, html or none")
    if top_chunks < 1:
        fail(f"--top-chunks must be at least 1, got {top_chunks}")
    if max_images < 0:
        fail(f"--max-images must be 0 or more, got {max_images}")
    if threshold is not None and not math.isfinite(threshold):
        fail(f"--threshold must be a finite number, got {threshold}")
    cfg = ComposeConfig(generator=generator, generator_options=parse_gen_opts(gen_opt), top_chunks=top_chunks,
                        max_images=max_images, header_image=header_image, use_ocr=use_ocr)
    if threshold is not None:
        cfg.threshold = threshold
    # the image encoder: the index's own (--index, or an existing --ingest index), else the options
    target = index if index is not None else ingest if index_exists(ingest) else None
    enc = None
    if ingest is not None or caption_missing:
        enc = resolve_encoder(target, encoder, encoder_model, bridge)
    elif encoder or encoder_model or bridge:
        fail("--encoder/--encoder-model/--bridge apply with --ingest or --caption-missing")
    captioner = None
    if caption_missing:
        from mmrag.tasks.captioning import MRagCaptioner, default_datastore

        captioner = MRagCaptioner(enc, default_datastore(enc, None, progress=True), "consensus")
    documents = None
    if docs is not None:
        ds = read_documents(docs)
        for src, why in ds.skipped:
            err.print(f"[yellow]skipped[/] {src}: {why}")
        documents = ds.documents
        if ingest is not None:
            from mmrag.tasks.imageref.ingest import ingest_documents

            rep = ingest_documents(documents, ingest, enc, captioner=captioner, progress=True, ocr=ocr)
            err.print(f"ingested into {ingest}: {rep}")
    if documents is not None:  # a first run embeds every chunk (minutes on a big folder): show it
        from mmrag.tasks.imageref.insertion import default_text_embedder

        default_text_embedder().progress = True
    c = compose_answer(query, documents=documents, index=index, config=cfg, captioner=captioner)
    for s in c.skipped:
        err.print(f"[yellow]image left out[/] {s['image']}: {s['reason']}")
    if as_json:
        d = c.to_dict()
        if render_mode != "none":
            d["rendered"] = c.render(mode=render_mode)
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return
    print(c.markdown if render_mode == "none" else c.render(mode=render_mode))
    used = c.inserted()
    err.print(f"[dim]{len(used)} of {len(c.images)} candidate images inserted; "
              f"{len(c.sources)} chunks from {len({s['doc_id'] for s in c.sources})} documents[/]")


def eval_imageref(
    corpus: Optional[Path] = typer.Argument(None, metavar="PATH", help="Documents with figures in place (e.g. ../shared/data/d2l).",
                                            show_default=False),
    split: str = typer.Option("all", help="all, dev or test (documents split by a hash of their id)."),
    pattern: Optional[str] = typer.Option(None, help="Only documents whose id starts with this (d2l: chapter_)."),
    placement: str = typer.Option("cued", help="cued (calibrated + BM25, the heading and a prior for sections that mention a figure; chosen on d2l + GRASS dev), calibrated (per-document decision to insert, chosen on d2l + GRASS dev) or global (one cosine threshold, chosen on d2l dev)."),
    threshold: Optional[float] = typer.Option(None, help="global placement: 'Not Insert' threshold (default: chosen on d2l dev)."),
    lexical_weight: Optional[float] = typer.Option(None, help="Weight of tf-idf vs MiniLM relevance in [0, 1]."),
    header_image: Optional[bool] = typer.Option(None, "--header-image/--no-header-image", help="Header-image rule at position 1."),
    capacity: Optional[int] = typer.Option(None, help="Images one position may take (default 1: measured, not adopted; the metric reads one per position)."),
    capacity_rule: Optional[str] = typer.Option(None, help="With --capacity > 1: fixed, mentions (the section's figure mentions) or length (its words over the document's median)."),
    slot_penalty: Optional[float] = typer.Option(None, help="With --capacity > 1: how much less each further image at a position counts."),
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N documents with figures."),
    per_doc: bool = typer.Option(False, help="Include every document's placements and Markdown in the JSON."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
    docs: Optional[Path] = typer.Option(None, "--docs", hidden=True, help="Old name of PATH."),
):
    """Figure-position recovery: remove every figure, place it back from its caption, and score
    with the ImageRef-VL metrics (R_lenient, R_strict, P, F1, score) plus valid_refs."""
    from mmrag.tasks.imageref import ComposeConfig, dev_test_split, evaluate_figure_positions, figure_tasks, read_documents

    if corpus is not None and docs is not None and corpus != docs:
        fail(f"give the documents once: PATH {corpus} or --docs {docs}")
    docs = corpus or docs
    if docs is None:
        fail("give the documents PATH (a folder of Markdown/HTML/JSONL documents with figures)")
    if placement not in ("cued", "calibrated", "global"):
        fail(f"--placement must be cued, calibrated or global, got {placement!r}")
    if split not in ("all", "dev", "test"):
        fail("--split must be all, dev or test")
    from mmrag.tasks.imageref.insertion import CAPACITY_RULES

    if capacity is not None and capacity < 1:
        fail(f"--capacity must be at least 1, got {capacity}")
    if capacity_rule is not None and capacity_rule not in CAPACITY_RULES:
        fail(f"--capacity-rule must be one of {', '.join(CAPACITY_RULES)}, got {capacity_rule!r}")
    if slot_penalty is not None and not slot_penalty >= 0:
        fail(f"--slot-penalty must be 0 or more, got {slot_penalty}")
    if threshold is not None and not math.isfinite(threshold):
        fail(f"--threshold must be a finite number, got {threshold}")
    ds = read_documents(docs)
    chosen = [d for d in ds.documents if (pattern is None or d.id.startswith(pattern))
              and (split == "all" or dev_test_split(d.id) == split)]
    tasks = figure_tasks(chosen)[:limit] if limit else figure_tasks(chosen)
    if not tasks:
        fail(f"{docs}: no documents with figures{' in split ' + split if split != 'all' else ''}")
    cfg = ComposeConfig(placement=placement)
    if threshold is not None:
        cfg.threshold = threshold
    if lexical_weight is not None:
        cfg.lexical_weight = lexical_weight
    if header_image is not None:
        cfg.header_image = header_image
    cfg.capacity, cfg.capacity_rule, cfg.slot_penalty = capacity, capacity_rule, slot_penalty
    res = evaluate_figure_positions(tasks, cfg, progress=True, keep_outputs=per_doc)
    res["split"] = split
    res["docs"] = str(docs)
    t = Table(title=f"figure-position recovery: {res['n_docs']} documents, {res['n_images']} figures ({split})")
    for c in ("R_lenient", "R_strict", "P", "F1", "score", "valid_refs"):
        t.add_column(c, justify="right")
    t.add_row(*(f"{100 * res[c]:.1f}" for c in ("R_lenient", "R_strict", "P", "F1", "score", "valid_refs")))
    out.print(t)
    if (capacity or 1) > 1:
        f = res["figures"]
        err.print(f"[dim]every placed image counted (not an ImageRef-VL metric): R {100 * f['R']:.1f}, "
                  f"P {100 * f['P']:.1f}, F1 {100 * f['F1']:.1f} ({f['placed']} images placed)[/]")
    write_json_report(json_out, res)


def eval_judge(
    answers: Path = typer.Option(..., "--answers", help="JSONL rows {question, answer, reference?} (answers may hold !\\[..](IMAGE_k))."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="OpenAI-compatible endpoint of the judge model."),
    model: Optional[str] = typer.Option(None, help="Judge model name at the endpoint."),
    generator: str = typer.Option("openai", help="Generator registry name for the judge."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for each judgement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every judgement and the mean here."),
):
    """LLM-as-judge text score of ImageRef-VL: a 1-10 rating per answer (written as \\[\\[n]]), image markup stripped."""
    from mmrag.tasks.imageref.judge import judge_many, read_judge_rows

    rows = read_judge_rows(answers)
    opts = {"base_url": base_url, "model": model, "timeout": timeout} if generator == "openai" else {}
    res = judge_many(rows, generator, **opts)
    mean = res["mean_rating"]
    out.print(f"judged {res['n']} answers; {res['n_rated']} gave a rating; mean "
              f"{'n/a' if mean is None else f'{mean:.2f}'} / 10")
    write_json_report(json_out, res)
