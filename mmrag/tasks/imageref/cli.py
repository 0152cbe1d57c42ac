"""CLI verbs of the ImageRef task: ``mmrag compose``, ``mmrag eval imageref``, ``mmrag eval judge``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmrag.errors import MmragError
from mmrag.paths import write_json

out = Console()
err = Console(stderr=True)


def _opts(pairs: list[str]) -> dict:
    d = {}
    for o in pairs:
        if "=" not in o:
            raise MmragError(f"--gen-opt takes key=value, got {o!r}")
        k, v = o.split("=", 1)
        d[k] = v
    return d


def _write_json(path: Optional[Path], data) -> None:
    if path is not None:
        err.print(f"wrote {write_json(path, data)}")


def compose_cmd(
    query: str = typer.Argument(..., help="The question to answer."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Document file or folder (.md, .html, .jsonl)."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index with ingested documents (see --ingest)."),
    ingest: Optional[Path] = typer.Option(None, "--ingest", help="With --docs: also add the documents (chunks + images) to this index."),
    generator: str = typer.Option("extractive", help="Stage-1 answer: extractive (offline), local, openai, ..."),
    gen_opt: list[str] = typer.Option([], "--gen-opt", help="Generator option key=value (repeatable), e.g. base_url=..., model=..."),
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
    from mmrag.tasks.imageref import ComposeConfig, compose, read_documents

    if (docs is None) == (index is None):
        raise MmragError("give --docs DIR or --index IDX (one of them)")
    if ingest is not None and docs is None:
        raise MmragError("--ingest needs --docs")
    if render_mode not in ("path", "data", "html", "none"):
        raise MmragError("--render must be path, data, html or none")
    cfg = ComposeConfig(generator=generator, generator_options=_opts(gen_opt), top_chunks=top_chunks,
                        max_images=max_images, header_image=header_image)
    if threshold is not None:
        cfg.threshold = threshold
    captioner = None
    if caption_missing:
        from mmrag.encoders import create_encoder
        from mmrag.tasks.captioning import MRagCaptioner, default_datastore

        enc = create_encoder("effnet-minilm")
        captioner = MRagCaptioner(enc, default_datastore(enc, None, progress=True), "consensus")
    documents = None
    if docs is not None:
        ds = read_documents(docs)
        for src, why in ds.skipped:
            err.print(f"[yellow]skipped[/] {src}: {why}")
        documents = ds.documents
        if ingest is not None:
            from mmrag.tasks.imageref.ingest import ingest_documents

            rep = ingest_documents(documents, ingest, captioner=captioner, progress=True)
            err.print(f"ingested into {ingest}: {rep}")
    c = compose(query, documents=documents, index=index, config=cfg, captioner=captioner)
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


def eval_imageref_cmd(
    docs: Path = typer.Option(..., "--docs", help="Documents with figures in place (e.g. ../shared/data/d2l)."),
    split: str = typer.Option("all", help="all, dev or test (documents split by a hash of their id)."),
    pattern: Optional[str] = typer.Option(None, help="Only documents whose id starts with this (d2l: chapter_)."),
    threshold: Optional[float] = typer.Option(None, help="'Not Insert' threshold (default: chosen on d2l dev)."),
    lexical_weight: Optional[float] = typer.Option(None, help="Weight of tf-idf vs MiniLM relevance in [0, 1]."),
    header_image: Optional[bool] = typer.Option(None, "--header-image/--no-header-image", help="Header-image rule at position 1."),
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N documents with figures."),
    per_doc: bool = typer.Option(False, help="Include every document's placements and Markdown in the JSON."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
):
    """Figure-position recovery: remove every figure, place it back from its caption, and score
    with the ImageRef-VL metrics (R_lenient, R_strict, P, F1, score) plus valid_refs."""
    from mmrag.tasks.imageref import ComposeConfig, dev_test_split, evaluate_figure_positions, figure_tasks, read_documents

    if split not in ("all", "dev", "test"):
        raise MmragError("--split must be all, dev or test")
    ds = read_documents(docs)
    chosen = [d for d in ds.documents if (pattern is None or d.id.startswith(pattern))
              and (split == "all" or dev_test_split(d.id) == split)]
    tasks = figure_tasks(chosen)[:limit] if limit else figure_tasks(chosen)
    if not tasks:
        raise MmragError(f"{docs}: no documents with figures{' in split ' + split if split != 'all' else ''}")
    cfg = ComposeConfig(placement="calibrated")
    if threshold is not None:
        cfg.threshold = threshold
    if lexical_weight is not None:
        cfg.lexical_weight = lexical_weight
    if header_image is not None:
        cfg.header_image = header_image
    res = evaluate_figure_positions(tasks, cfg, progress=True, keep_outputs=per_doc)
    res["split"] = split
    res["docs"] = str(docs)
    t = Table(title=f"figure-position recovery: {res['n_docs']} documents, {res['n_images']} figures ({split})")
    for c in ("R_lenient", "R_strict", "P", "F1", "score", "valid_refs"):
        t.add_column(c, justify="right")
    t.add_row(*(f"{100 * res[c]:.1f}" for c in ("R_lenient", "R_strict", "P", "F1", "score", "valid_refs")))
    out.print(t)
    _write_json(json_out, res)


def eval_judge_cmd(
    answers: Path = typer.Option(..., "--answers", help="JSONL rows {question, answer, reference?} (answers may hold !\\[..](IMAGE_k))."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="OpenAI-compatible endpoint of the judge model."),
    model: Optional[str] = typer.Option(None, help="Judge model name at the endpoint."),
    generator: str = typer.Option("openai", help="Generator registry name for the judge."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for each judgement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every judgement and the mean here."),
):
    """LLM-as-judge text score of ImageRef-VL: a 1-10 rating per answer (written as \\[\\[n]]), image markup stripped."""
    from mmrag.corpus.documents import read_document_text as _read_text
    from mmrag.tasks.imageref.judge import judge_many

    rows = []
    for n, line in enumerate(_read_text(answers).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MmragError(f"{answers}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise MmragError(f"{answers}:{n}: a row needs 'question' and 'answer' strings")
        rows.append(row)
    if not rows:
        raise MmragError(f"{answers}: no answers to judge")
    opts = {"base_url": base_url, "model": model, "timeout": timeout} if generator == "openai" else {}
    res = judge_many(rows, generator, **opts)
    mean = res["mean_rating"]
    out.print(f"judged {res['n']} answers; {res['n_rated']} gave a rating; mean "
              f"{'n/a' if mean is None else f'{mean:.2f}'} / 10")
    _write_json(json_out, res)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("compose")(compose_cmd)
    eval_app.command("imageref")(eval_imageref_cmd)
    eval_app.command("judge")(eval_judge_cmd)
