"""``mmrag index``: build or extend an index from a corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from mmrag.cli.common import (
    BridgeOpt, CorpusArg, DataDirAlias, DatasetAlias, EncoderModelOpt, EncoderOpt, KindOpt, SplitOpt,
    corpus_source, encoder_from_options, err, fail, out,
)


def index(
    corpus: CorpusArg = None,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Index directory (created, or resumed if it exists)."),
    kind: KindOpt = "auto",
    split: SplitOpt = None,
    limit: Optional[int] = typer.Option(None, help="Index at most this many images (quick runs)."),
    encoder: EncoderOpt = None,
    encoder_model: EncoderModelOpt = None,
    bridge: BridgeOpt = None,
    store: str = typer.Option("faiss", help="Vector store backend: faiss or milvus."),
    index_type: str = typer.Option("auto", help="faiss: auto, flat, ivf, ivf_sq8, hnsw. milvus: FLAT, IVF_FLAT, HNSW, AUTOINDEX (auto = FLAT)."),
    store_uri: Optional[str] = typer.Option(None, "--store-uri", help="milvus: a .db file (Milvus Lite) or http://host:19530 (server; token from $MILVUS_TOKEN). Default: Milvus Lite inside the index directory."),
    engine: str = typer.Option("sequential", help="Embedding engine: sequential (this process) or ray (Ray Data actors, shards under <out>/embeddings)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: cluster address ('auto', 'ray://head:10001'); default: a local Ray runtime."),
    batch_size: int = typer.Option(256, help="Images per committed batch (the unit of resume)."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Remove indexed images whose file under PATH is gone (--no-prune keeps them)."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing this index, wait for it instead of refusing."),
    ocr: bool = typer.Option(False, "--ocr", help="Read the text in each image (OCR; the 'ocr' extra) into its metadata: found by keyword and hybrid search."),
    safety: bool = typer.Option(False, "--safety", help="Score each image with Yahoo open_nsfw (the 'safety' extra); search --safe and use_safety_model drop unsafe ones."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Build or extend an index (every image of the corpus unless --split names one). Safe to
    interrupt: run it again to resume."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    # flag checks first: they are cheap, reading the corpus and loading the encoder are not
    if engine not in ("sequential", "ray"):
        fail(f"--engine must be sequential or ray, got {engine!r}")
    if store_uri and store != "milvus":
        fail("--store-uri applies to --store milvus")
    if limit is not None and limit < 1:
        fail(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    c = read_corpus(kind, path, split=split, limit=limit)
    enc = encoder_from_options(encoder, encoder_model, bridge)
    opts = {"index_type": index_type} if store == "faiss" or index_type != "auto" else {}
    if store_uri:
        opts["uri"] = store_uri if "://" in store_uri else str(Path(store_uri).expanduser().resolve())
    enrichers = tuple(n for n, on in (("ocr", ocr), ("safety", safety)) if on)
    if enrichers:  # fail before any work when the package is missing
        from mmrag.embedding.enrich import check_available
        from mmrag.errors import ModelUnavailableError

        try:
            check_available(enrichers)
        except ModelUnavailableError as e:
            fail(str(e))
    try:
        rep = build_index(c, out_dir, enc, IndexConfig(batch_size=batch_size, backend=store, backend_options=opts,
                                                       engine=engine, ray_address=ray_address, prune=prune, wait=wait,
                                                       enrichers=enrichers))
    except KeyboardInterrupt:  # Ctrl-C: every committed batch is kept (see mmrag.embedding.indexing)
        err.print(f"interrupted: what was committed is kept in {out_dir}; run the same command again to resume",
                  markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(130) from None  # past typer, which would turn it into a silent exit 130
    d = rep.as_dict()
    if as_json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return
    out.print(f"[bold]{escape(str(out_dir))}[/]: +{d['added']} images (+{d['captions_added']} captions), "
              f"{d['updated']} updated, {d['removed']} removed; {d['already_indexed']} unchanged, "
              f"{d['duplicates']} duplicates, {d['skipped']} skipped, {d['warnings']} warnings; "
              f"total {d['total_images']} images, {d['total_captions']} captions", highlight=False, soft_wrap=True)
    shown = 0
    for label, key in (("skipped", "skipped_reasons"), ("duplicate", "duplicate_reasons"), ("warning", "warning_reasons")):
        for s in d[key]:
            if shown < 20:
                out.print(f"  {label} {escape(s['source'])}: {escape(_short(s['reason']))}", highlight=False, soft_wrap=True)
            shown += 1
    if shown > 20:
        out.print(f"  ... and {shown - 20} more (see {escape(str(out_dir))}/skipped.jsonl)", highlight=False)


def _short(text: str, width: int = 300) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"
