"""The ``mmrag`` command line: one verb per stage (index, search, info, bridge, eval, quickstart)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmrag.errors import MmragError
from mmrag.paths import write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub unless the user asks
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multimodal RAG over image collections.")
bridge_app = typer.Typer(no_args_is_help=True, help="Fit and inspect the image->text bridge of effnet-minilm.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate with each task's published metrics.")
app.add_typer(bridge_app, name="bridge")
app.add_typer(eval_app, name="eval")
out = Console()
err = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _encoder(name: str, model: Optional[str], bridge: Optional[str]):
    from mmrag.encoders import create_encoder

    kwargs = {}
    if name == "clip":
        kwargs["model"] = model
    elif name == "effnet-minilm" and bridge:
        kwargs["bridge"] = bridge
    return create_encoder(name, **kwargs)


def _write_json(path: Optional[Path], data) -> None:
    if path is not None:
        err.print(f"wrote {write_json(path, data)}")


@app.command()
def index(
    corpus: Path = typer.Argument(..., help="Folder of images, COCO/Karpathy JSON, Flickr8k folder or JSONL manifest."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Index directory (created, or resumed if it exists)."),
    kind: str = typer.Option("auto", help="Corpus format: auto, folder, coco, karpathy, flickr8k, jsonl."),
    split: Optional[str] = typer.Option(None, help="Split to index where the format has splits (train/dev/test)."),
    limit: Optional[int] = typer.Option(None, help="Index at most this many images (quick runs)."),
    encoder: str = typer.Option("effnet-minilm", help="Encoder registry name (see `mmrag encoders`)."),
    encoder_model: Optional[str] = typer.Option(None, help="clip: local ONNX export directory or hub id."),
    bridge: Optional[str] = typer.Option(None, help="effnet-minilm: bridge file (default: shipped flickr8k-train)."),
    store: str = typer.Option("faiss", help="Vector store backend: faiss or milvus."),
    index_type: str = typer.Option("auto", help="faiss: auto, flat, ivf, ivf_sq8, hnsw. milvus: FLAT, IVF_FLAT, HNSW, AUTOINDEX (auto = FLAT)."),
    store_uri: Optional[str] = typer.Option(None, "--store-uri", help="milvus: a .db file (Milvus Lite) or http://host:19530 (server; token from $MILVUS_TOKEN). Default: Milvus Lite inside the index directory."),
    engine: str = typer.Option("sequential", help="Embedding engine: sequential (this process) or ray (Ray Data actors, shards under <out>/embeddings)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: cluster address ('auto', 'ray://head:10001'); default: a local Ray runtime."),
    batch_size: int = typer.Option(256, help="Images per committed batch (the unit of resume)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Build or extend an index. Safe to interrupt: run it again to resume."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.indexer import IndexConfig, build_index

    c = read_corpus(kind, corpus, split=split, limit=limit)
    enc = _encoder(encoder, encoder_model, bridge)
    if engine not in ("sequential", "ray"):
        _fail(f"--engine must be sequential or ray, got {engine!r}")
    if store_uri and store != "milvus":
        _fail("--store-uri applies to --store milvus")
    opts = {"index_type": index_type} if store == "faiss" or index_type != "auto" else {}
    if store_uri:
        opts["uri"] = store_uri if "://" in store_uri else str(Path(store_uri).expanduser().resolve())
    rep = build_index(c, out_dir, enc, IndexConfig(batch_size=batch_size, backend=store, backend_options=opts,
                                                   engine=engine, ray_address=ray_address))
    d = rep.as_dict()
    if as_json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return
    out.print(f"[bold]{out_dir}[/]: +{d['added']} images (+{d['captions_added']} captions); "
              f"{d['already_indexed']} already indexed, {d['duplicates']} duplicates, {d['skipped']} skipped; "
              f"total {d['total_images']} images, {d['total_captions']} captions")
    for s in d["skipped_reasons"][:20]:
        out.print(f"  skipped {s['source']}: {s['reason']}")
    if d["skipped"] > 20:
        out.print(f"  ... and {d['skipped'] - 20} more (see {out_dir}/skipped.jsonl)")


def _print_hits(hits, target: str) -> None:
    t = Table(show_header=True, header_style="bold")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("id")
    t.add_column("caption" if target == "images" else "text")
    for i, h in enumerate(hits, 1):
        text = h.metadata.get("text") if target == "captions" else (h.metadata.get("captions") or [""])[0]
        t.add_row(str(i), f"{h.score:.3f}", h.id, text or "")
    out.print(t)


@app.command()
def search(
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index directory."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Text query."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image query (file)."),
    weight: float = typer.Option(0.5, help="With both text and image: the text's weight in [0, 1]."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    target: str = typer.Option("images", help="images (text/image -> image) or captions (image -> caption)."),
    where: list[str] = typer.Option([], "--where", help="Metadata filter key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
):
    """Search an index by text, by image, or both."""
    from mmrag.retrieval import Searcher

    flt = {}
    for w in where:
        if "=" not in w:
            _fail(f"--where takes key=value, got {w!r}")
        key, val = w.split("=", 1)
        flt[key] = val
    s = Searcher(index_dir)
    hits = s.search(text=text, image=image, k=k, weight=weight, target=target, filter=flt or None)
    if as_json:
        print(json.dumps([{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hits], indent=2, ensure_ascii=False))
    else:
        _print_hits(hits, target)


@app.command()
def info(index_dir: Path = typer.Option(..., "--index", "-i"), as_json: bool = typer.Option(False, "--json")):
    """What an index holds and how it was built."""
    from mmrag.index.collection import Collection

    c = Collection.open(index_dir)
    d = c.info()
    c.close()
    if as_json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        for key, v in d.items():
            out.print(f"[bold]{key}[/]: {v}")


@app.command()
def remove(
    ids: list[str] = typer.Argument(..., help="Image ids to delete (as shown by search)."),
    index_dir: Path = typer.Option(..., "--index", "-i"),
):
    """Delete images (and their captions) from an index, without a rebuild."""
    from mmrag.index.collection import Collection

    c = Collection.open(index_dir)
    n_img, n_cap = c.remove(ids)
    c.save()
    c.close()
    out.print(f"removed {n_img} images and {n_cap} captions")
    if n_img < len(ids):
        err.print(f"[yellow]{len(ids) - n_img} of the ids were not in the index[/]")


@app.command()
def encoders():
    """List the encoders that can be chosen by name."""
    from mmrag.encoders import ENCODERS

    for n in ENCODERS.names():
        out.print(n)


@bridge_app.command("fit")
def bridge_fit(
    data_dir: Path = typer.Option(..., "--data-dir", help="Corpus with captions."),
    dataset: str = typer.Option("auto", help="Corpus format (flickr8k, coco, karpathy, jsonl, folder, auto)."),
    split: Optional[str] = typer.Option("train", help="Split to fit on (never test)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Bridge file to write (.npz)."),
    method: str = typer.Option("ridge", help="ridge or procrustes."),
    lam: float = typer.Option(None, help="Ridge strength (default: the shipped recipe's)."),
    limit: Optional[int] = typer.Option(None, help="Fit on at most this many images."),
    whiten: float = typer.Option(0.5, help="Caption-space whitening power (0 = off, 0.5 = half-way, 1 = full PCA whitening)."),
):
    """Fit the effnet-minilm image->text bridge on a captioned corpus and save it."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders.effnet_minilm import DEFAULT_LAMBDA, default_recipe, fit_effnet_bridge

    if split == "test":
        err.print("[yellow]warning:[/] fitting on the test split makes test numbers meaningless")
    c = read_corpus(dataset, data_dir, split=split, limit=limit)
    b = fit_effnet_bridge(c, default_recipe(), method=method, lam=DEFAULT_LAMBDA if lam is None else lam,
                          text_whitening=whiten)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    b.save(out_path)
    out.print(f"bridge fitted on {b.info['n_images']} images / {b.info['n_captions']} captions -> {out_path}")


@eval_app.command("retrieval")
def eval_retrieval(
    data_dir: Path = typer.Option(..., "--data-dir", help="Dataset location."),
    dataset: str = typer.Option("auto", help="flickr8k, coco, karpathy, jsonl, folder or auto."),
    split: Optional[str] = typer.Option("test", help="Split to evaluate on."),
    encoder: str = typer.Option("effnet-minilm", help="Encoder registry name."),
    encoder_model: Optional[str] = typer.Option(None, help="clip: local ONNX export directory or hub id."),
    bridge: Optional[str] = typer.Option(None, help="effnet-minilm: bridge file."),
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N images only."),
    hubness: bool = typer.Option(True, help="Apply the captions' hubness prior to image->caption (when the encoder has one)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
):
    """Recall@1/5/10 both ways (every caption queries the images; every image the captions)."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.eval.retrieval import evaluate_retrieval

    c = read_corpus(dataset, data_dir, split=split, limit=limit)
    res = evaluate_retrieval(c, _encoder(encoder, encoder_model, bridge), hubness=hubness)
    res["split"] = split
    t = Table(title=f"{res['dataset']} {split or 'all'}: {res['n_images']} images, {res['n_captions']} captions ({res['encoder']})")
    t.add_column("direction")
    for key in ("R@1", "R@5", "R@10"):
        t.add_column(key, justify="right")
    for d in ("t2i", "i2t"):
        t.add_row(d, *(f"{res[d][key]:.1f}" for key in ("R@1", "R@5", "R@10")))
    out.print(t)
    _write_json(json_out, res)


def _captioner(generator: str, k: Optional[int], similarity: Optional[str], datastore: Optional[Path],
               data_dir: Optional[Path], gen_opts: list[str], order: str = "first", dataset: str = "flickr8k",
               prompt_style: Optional[str] = None):
    from mmrag.encoders import create_encoder
    from mmrag.tasks.captioning import DEFAULT_K, CaptionDatastore, MRagCaptioner, default_datastore

    enc = create_encoder("effnet-minilm")
    ds = CaptionDatastore.load(datastore) if datastore else default_datastore(enc, data_dir, dataset=dataset, progress=True)
    opts: dict = {}
    for o in gen_opts:
        if "=" not in o:
            _fail(f"--gen-opt takes key=value, got {o!r}")
        key, val = o.split("=", 1)
        opts[key] = val
    if similarity:
        opts["similarity"] = similarity
    extra = {"prompt_style": prompt_style} if prompt_style else {}
    try:
        return MRagCaptioner(enc, ds, generator, k=k or DEFAULT_K,
                             generator_options=opts, order=order, **extra)
    except ValueError as e:  # the captioner's own option checks (order, prompt style, k)
        _fail(str(e))


_GEN_HELP = "Generator: consensus (default, no language model), local, openai."
_STYLE_HELP = "Language-model prompt: instruct (default, chosen on dev) or smallcap."


@app.command()
def caption(
    images: list[Path] = typer.Argument(..., help="Image files to caption."),
    generator: str = typer.Option("consensus", help=_GEN_HELP),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Captions retrieved (default: chosen on Flickr8k dev)."),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    order: str = typer.Option("first", help="LLM prompt order: most similar caption first or last."),
    prompt_style: Optional[str] = typer.Option(None, help=_STYLE_HELP),
    datastore: Optional[Path] = typer.Option(None, help="Saved caption datastore (.npz; default: Flickr8k train)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Flickr8k folder for the default datastore."),
    gen_opt: list[str] = typer.Option([], "--gen-opt", help="Generator option key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="JSON output."),
):
    """Caption images by retrieval-augmented generation (mRAG-gim); prints the retrieved evidence.

    Unreadable images get an error line (exit code 1) while the others are captioned."""
    cap = _captioner(generator, k, similarity, datastore, data_dir, gen_opt, order, prompt_style=prompt_style)
    results = cap.caption_batch([str(p) for p in images])
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r.error:
                err.print(f"[bold red]{r.image}[/]: {r.error}")
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


@app.command("caption-refine")
def caption_refine(
    data_dir: Path = typer.Option(..., "--data-dir", help="Captioned corpus (train and dev splits)."),
    dataset: str = typer.Option("flickr8k", help="Corpus format with splits."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to save the grown datastore (.npz + .json)."),
    max_iterations: int = typer.Option(3, help="At most this many refinement iterations."),
    train_limit: Optional[int] = typer.Option(None, help="Caption only the first N train images (quick runs)."),
    dev_limit: Optional[int] = typer.Option(None, help="Measure on the first N dev images."),
    k: Optional[int] = typer.Option(None, "--k", "-k"),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    datastore: Optional[Path] = typer.Option(None, help="Start from this datastore (default: the corpus' train captions)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the refinement log here."),
    generator: str = typer.Option("consensus", help="Generator writing the synthetic captions: consensus, local, openai."),
    gen_opt: list[str] = typer.Option([], "--gen-opt", help="Generator option key=value (repeatable)."),
    refit_map: bool = typer.Option(False, "--refit-map/--no-refit-map",
                                   help="Fit a least-squares query map on the datastore's pairs and refit it "
                                        "every iteration (saved with the datastore)."),
    map_lam: float = typer.Option(1.0, help="Ridge strength of the query map."),
):
    """Continuous refinement (mRAG-gim Algorithm 2): add synthetic train captions scoring at least
    the dev CIDEr-D to the datastore while dev improves; optionally refit the query map each time."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import refine_datastore

    cap = _captioner(generator, k, similarity, datastore, data_dir, gen_opt, dataset=dataset)
    train = read_corpus(dataset, data_dir, split="train", limit=train_limit)
    dev = read_corpus(dataset, data_dir, split="dev", limit=dev_limit)
    rep = refine_datastore(cap, train, dev, max_iterations=max_iterations, save_to=out_path,
                           refit_map=refit_map, map_lam=map_lam, log=lambda m: err.print(m), progress=True)
    t = Table(title=f"refinement: dev CIDEr-D {rep.initial_dev:.2f} -> {rep.best_dev:.2f}")
    for c in ("iteration", "threshold", "kept", "datastore (with kept)", "dev CIDEr-D", "improved"):
        t.add_column(c)
    for e in rep.iterations:
        t.add_row(str(e["iteration"]), f"{e['threshold']:.2f}", str(e["kept"]), str(e["datastore_size"]),
                  f"{e['dev_CIDEr-D']:.2f}", str(e["improved"]))
    out.print(t)
    _write_json(json_out, rep.as_dict())


@eval_app.command("caption")
def eval_caption(
    data_dir: Path = typer.Option(..., "--data-dir", help="Dataset location."),
    dataset: str = typer.Option("flickr8k", help="flickr8k, coco, karpathy, jsonl, folder or auto."),
    split: Optional[str] = typer.Option("test", help="Split to caption and score."),
    generator: str = typer.Option("consensus", help=_GEN_HELP),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Captions retrieved."),
    similarity: Optional[str] = typer.Option(None, help="consensus: cider, bleu or embedding."),
    order: str = typer.Option("first", help="LLM prompt order: first or last."),
    prompt_style: Optional[str] = typer.Option(None, help=_STYLE_HELP),
    datastore: Optional[Path] = typer.Option(None, help="Saved caption datastore (default: the dataset's train captions)."),
    gen_opt: list[str] = typer.Option([], "--gen-opt", help="Generator option key=value (repeatable)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N images only."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results here."),
):
    """Caption a split and score it: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (×100, pycocoevalcap)."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import evaluate_captioner

    if datastore is None and dataset != "flickr8k":
        _fail("--datastore is required unless --dataset flickr8k (default datastore: its train captions)")
    cap = _captioner(generator, k, similarity, datastore, data_dir, gen_opt, order, dataset=dataset,
                     prompt_style=prompt_style)
    c = read_corpus(dataset, data_dir, split=split, limit=limit)
    res = evaluate_captioner(cap, c, progress=True)
    res["split"] = split
    res["dataset"] = dataset
    t = Table(title=f"{dataset} {split or 'all'}: {res['n_images']} images, {res['method']}")
    keys = [key for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D") if key in res]
    for key in keys:
        t.add_column(key, justify="right")
    t.add_row(*(f"{res[key]:.1f}" for key in keys))
    out.print(t)
    for m, why in res.get("skipped", {}).items():
        err.print(f"[yellow]{m} skipped:[/] {why}")
    if res["n_errors"]:
        err.print(f"[yellow]{res['n_errors']} images could not be captioned[/]")
    _write_json(json_out, res)


@app.command()
def quickstart(
    out_dir: Path = typer.Option(None, "--out", help="Where to build the sample index (default: cache)."),
):
    """Build an index of the sample photos bundled with scikit-image and run a few queries."""
    from mmrag.quickstart import run_quickstart

    run_quickstart(out_dir, out)


# Tasks and services add their verbs from their own packages: each module has
# ``register(app, eval_app)``. One line here per module keeps the verbs discoverable.
_COMMAND_MODULES = (
    "mmrag.tasks.chat.cli",      # chat, eval chat
    "mmrag.tasks.rir.cli",       # ask, eval ask
    "mmrag.tasks.imageref.cli",  # compose, eval imageref, eval judge
    "mmrag.serve.cli",           # serve
)


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that task is not part of this build
            raise
        module.register(app, eval_app)


_register_commands()


def main() -> None:
    try:
        app()
    except MmragError as e:
        err.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
