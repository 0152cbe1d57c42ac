"""``mmrag caption``, ``mmrag caption-refine`` and ``mmrag eval caption`` (mRAG-gim captioning)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mmrag.cli.common import (
    BridgeOpt, CorpusArg, DataDirAlias, DatasetAlias, EncoderModelOpt, EncoderOpt, GenOpt, KindOpt, SplitOpt,
    corpus_source, err, fail, out, parse_gen_opts, resolve_encoder, write_json_report,
)

_GEN_HELP = "Generator: consensus (default, no language model), local, openai."
_STYLE_HELP = "Language-model prompt: instruct (default, chosen on dev) or smallcap."


def _captioner(enc, generator: str, k: Optional[int], similarity: Optional[str], datastore: Optional[Path],
               data_dir: Optional[Path], gen_opts: list[str], order: str = "first", dataset: str = "flickr8k",
               prompt_style: Optional[str] = None):
    from mmrag.tasks.captioning import DEFAULT_K, CaptionDatastore, MRagCaptioner, default_datastore

    opts = parse_gen_opts(gen_opts)
    if datastore:
        ds = CaptionDatastore.load(datastore)
        built_with = ds.info.get("encoder")
        if built_with and built_with != enc.fingerprint():  # its caption vectors live in another space
            err.print(f"[yellow]warning:[/] {escape(str(datastore))} was built with encoder {built_with}, "
                      f"not {enc.fingerprint()}: pass the --index/--encoder/--bridge it was built with")
    else:
        ds = default_datastore(enc, data_dir, dataset=dataset, progress=True)
    if similarity:
        opts["similarity"] = similarity
    extra = {"prompt_style": prompt_style} if prompt_style else {}
    try:
        return MRagCaptioner(enc, ds, generator, k=DEFAULT_K if k is None else k, generator_options=opts,
                             order=order, **extra)
    except ValueError as e:  # the captioner's own option checks (order, prompt style, k)
        fail(str(e))


def _check_k(k: Optional[int]) -> None:
    """--k within the captioner's bounds, checked before the datastore is built or loaded."""
    from mmrag.tasks.captioning import MAX_K

    if k is not None and not 1 <= k <= MAX_K:
        fail(f"--k must be within [1, {MAX_K}], got {k}")


def caption(
    images: list[Path] = typer.Argument(..., help="Image files to caption."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Caption in the space of this index's encoder."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    generator: str = typer.Option("consensus", help=_GEN_HELP),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Captions retrieved (default: chosen on Flickr8k dev)."),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    order: str = typer.Option("first", help="LLM prompt order: most similar caption first or last."),
    prompt_style: Optional[str] = typer.Option(None, help=_STYLE_HELP),
    datastore: Optional[Path] = typer.Option(None, help="Saved caption datastore (.npz; default: Flickr8k train, "
                                                        "embedded with the encoder)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Flickr8k folder for the default datastore."),
    gen_opt: GenOpt = [],
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
):
    """Caption images by retrieval-augmented generation (mRAG-gim); prints the retrieved evidence.

    Unreadable images get an error line (exit code 1) while the others are captioned; a path
    that is not a file is a mistake in the command (exit code 2, before any model loads)."""
    missing = [p for p in images if not p.is_file()]
    if missing:
        fail(f"no such image file: {', '.join(map(str, missing))}")
    _check_k(k)
    enc = resolve_encoder(index_dir, encoder, encoder_model, bridge)
    cap = _captioner(enc, generator, k, similarity, datastore, data_dir, gen_opt, order, prompt_style=prompt_style)
    results = cap.caption_batch([str(p) for p in images])
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r.error:  # one line; the reader's message already names the file
                said = r.error if r.error.startswith(f"{r.image}:") else f"{r.image}: {r.error}"
                err.print(f"[bold red]error:[/] {escape(said)}", highlight=False, soft_wrap=True)
                continue
            out.print(f"[bold]{r.image}[/]: {r.caption}")
            used = set(r.prompt_evidence or [])
            shown = sorted(set(range(min(10, len(r.evidence)))) | used)  # the prompt's captions always shown
            for i in shown:
                h = r.evidence[i]
                mark = "*" if i in used else " "
                out.print(f" {mark}{i + 1:3d}. {h.score:+.3f} {escape(h.text)}  [dim]({h.image_id})[/]")
            if len(r.evidence) > len(shown):
                out.print(f"  ... {len(r.evidence) - len(shown)} more")
            if used:
                out.print("  [dim]* in the generator's prompt[/]")
    if any(r.error for r in results):
        raise typer.Exit(1)


def caption_refine(
    corpus: CorpusArg = None,
    kind: KindOpt = "flickr8k",
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to save the grown datastore (.npz + .json)."),
    max_iterations: int = typer.Option(3, help="At most this many refinement iterations."),
    train_limit: Optional[int] = typer.Option(None, help="Caption only the first N train images (quick runs)."),
    dev_limit: Optional[int] = typer.Option(None, help="Measure on the first N dev images."),
    k: Optional[int] = typer.Option(None, "--k", "-k"),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    datastore: Optional[Path] = typer.Option(None, help="Start from this datastore (default: the corpus' train captions)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the refinement log here."),
    generator: str = typer.Option("consensus", help="Generator writing the synthetic captions: consensus, local, openai."),
    gen_opt: GenOpt = [],
    refit_map: bool = typer.Option(False, "--refit-map/--no-refit-map",
                                   help="Fit a least-squares query map on the datastore's pairs and refit it "
                                        "every iteration (saved with the datastore)."),
    map_lam: float = typer.Option(1.0, help="Ridge strength of the query map."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Continuous refinement (mRAG-gim Algorithm 2) on a corpus with train and dev splits: add synthetic
    train captions scoring at least the dev CIDEr-D to the datastore while dev improves; optionally
    refit the query map each time."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import refine_datastore

    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    _check_k(k)
    enc = resolve_encoder(None, encoder, encoder_model, bridge)
    cap = _captioner(enc, generator, k, similarity, datastore, path, gen_opt, dataset=kind)
    train = read_corpus(kind, path, split="train", limit=train_limit)
    dev = read_corpus(kind, path, split="dev", limit=dev_limit)
    rep = refine_datastore(cap, train, dev, max_iterations=max_iterations, save_to=out_path,
                           refit_map=refit_map, map_lam=map_lam, log=lambda m: err.print(m), progress=True)
    t = Table(title=f"refinement: dev CIDEr-D {rep.initial_dev:.2f} -> {rep.best_dev:.2f}")
    for c in ("iteration", "threshold", "kept", "datastore (with kept)", "dev CIDEr-D", "improved"):
        t.add_column(c)
    for e in rep.iterations:
        t.add_row(str(e["iteration"]), f"{e['threshold']:.2f}", str(e["kept"]), str(e["datastore_size"]),
                  f"{e['dev_CIDEr-D']:.2f}", str(e["improved"]))
    out.print(t)
    write_json_report(json_out, rep.as_dict())


def eval_caption(
    corpus: CorpusArg = None,
    kind: KindOpt = "flickr8k",
    split: SplitOpt = "default",
    generator: str = typer.Option("consensus", help=_GEN_HELP),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Captions retrieved."),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    order: str = typer.Option("first", help="LLM prompt order: first or last."),
    prompt_style: Optional[str] = typer.Option(None, help=_STYLE_HELP),
    datastore: Optional[Path] = typer.Option(None, help="Saved caption datastore (default: the corpus' train captions)."),
    gen_opt: GenOpt = [],
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N images only."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Caption a split and score it: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (×100, pycocoevalcap)."""
    from mmrag.corpus.readers import detect_kind, read_corpus, resolve_split
    from mmrag.tasks.captioning import evaluate_captioner

    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    _check_k(k)
    if kind == "auto":
        kind = detect_kind(path)
    if datastore is None and kind != "flickr8k":
        fail("--datastore is required unless --kind flickr8k (default datastore: its train captions)")
    split = resolve_split(kind, path, split)
    enc = resolve_encoder(None, encoder, encoder_model, bridge)
    cap = _captioner(enc, generator, k, similarity, datastore, path, gen_opt, order, dataset=kind,
                     prompt_style=prompt_style)
    c = read_corpus(kind, path, split=split, limit=limit)
    res = evaluate_captioner(cap, c, progress=True)
    res["split"] = split
    res["dataset"] = kind
    t = Table(title=f"{kind} {split or 'all'}: {res['n_images']} images, {res['method']}")
    keys = [key for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D") if key in res]
    for key in keys:
        t.add_column(key, justify="right")
    t.add_row(*(f"{res[key]:.1f}" for key in keys))
    out.print(t)
    for m, why in res.get("skipped", {}).items():
        err.print(f"[yellow]{m} skipped:[/] {why}")
    if res["n_errors"]:
        err.print(f"[yellow]{res['n_errors']} images could not be captioned[/]")
    write_json_report(json_out, res)
