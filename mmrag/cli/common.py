"""What every verb shares: the consoles and ``fail``, the JSON writer, ``--gen-opt`` parsing,
and how an encoder and a corpus are named on the command line (one convention for all verbs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)

__all__ = [
    "out", "err", "fail", "write_json_report", "parse_gen_opts", "parse_generator_options",
    "encoder_from_options", "resolve_encoder", "index_exists", "corpus_source",
    "CorpusArg", "KindOpt", "DatasetAlias", "DataDirAlias", "SplitOpt",
    "EncoderOpt", "EncoderModelOpt", "BridgeOpt", "GenOpt",
]


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` on stderr and exit with ``code`` (2: bad input)."""
    err.print(f"[bold red]error:[/] {escape(str(msg))}", highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(code)


def write_json_report(path: Optional[Path], data: Any) -> None:
    """Write ``data`` to ``path`` (atomically) and say so on stderr; nothing when ``path`` is None."""
    from mmrag.paths import write_json

    if path is not None:
        err.print(f"wrote {write_json(path, data)}", markup=False, highlight=False)


# ---------------------------------------------------------------------- --gen-opt

def _value(text: str) -> Any:
    """A JSON value when ``text`` parses as one (``64``, ``0.5``, ``true``, ``["a"]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_gen_opts(items: list[str], flag: str = "--gen-opt") -> dict[str, Any]:
    """``["max_tokens=64", "model=foo"]`` -> ``{"max_tokens": 64, "model": "foo"}``."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{flag} takes KEY=VALUE, got {item!r}")
        opts[key.strip()] = _value(value)
    return opts


def parse_generator_options(items: list[str]) -> dict[str, dict]:
    """serve's ``--generator-opt GENERATOR.KEY=VALUE``: ``["openai.base_url=http://h/v1", "openai.timeout=30"]``
    -> ``{"openai": {"base_url": "http://h/v1", "timeout": 30}}`` (values as in :func:`parse_gen_opts`)."""
    by_generator: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, opt = key.rpartition(".")  # the last dot: a MODULE:NAME generator may hold dots
        if not sep or not dot or not name or not opt:
            fail(f"--generator-opt takes GENERATOR.KEY=VALUE, got {item!r}")
        by_generator.setdefault(name, {})[opt] = _value(value)
    return by_generator


GenOpt = Annotated[list[str], typer.Option(
    "--gen-opt", help="Generator option KEY=VALUE (repeatable; JSON values such as 64 or true are parsed).")]


# ---------------------------------------------------------------------- encoders

EncoderOpt = Annotated[Optional[str], typer.Option(
    "--encoder", help="Encoder registry name (see `mmrag encoders`; default effnet-minilm). With --index: the index's.")]
EncoderModelOpt = Annotated[Optional[str], typer.Option(
    "--encoder-model", help="clip: local ONNX export directory or hub id; your own encoder: its model= option.")]
BridgeOpt = Annotated[Optional[str], typer.Option(
    "--bridge", help="effnet-minilm: bridge file or shipped name (default: flickr8k-train-v2; the Lite0 one: flickr8k-train).")]


def encoder_from_options(name: Optional[str], model: Optional[str] = None, bridge: Optional[str] = None):
    """The encoder named by ``--encoder/--encoder-model/--bridge`` (default effnet-minilm)."""
    from mmrag.encoders import create_encoder

    name = name or "effnet-minilm"
    if model and name == "effnet-minilm":
        fail("--encoder-model applies to --encoder clip or one of your own, not effnet-minilm (its image->text map: --bridge)")
    if bridge and name != "effnet-minilm":
        fail(f"--bridge applies to --encoder effnet-minilm, not {name}")
    kwargs: dict[str, Any] = {}
    if name == "clip" or model:  # a user's encoder gets it as its model= option
        kwargs["model"] = model
    elif bridge:
        kwargs["bridge"] = bridge
    return create_encoder(name, **kwargs)


def index_exists(index_dir: Optional[Path]) -> bool:
    from mmrag.index.collection import MANIFEST

    return index_dir is not None and (Path(index_dir) / MANIFEST).is_file()


def resolve_encoder(index_dir: Optional[Path], name: Optional[str] = None, model: Optional[str] = None,
                    bridge: Optional[str] = None):
    """The encoder a verb works with: the one recorded in ``index_dir``'s manifest when there is
    an index (queries and index must share one space), else the one the options name.
    A named ``index_dir`` that is not an index is an error (from ``Collection.open``)."""
    if index_dir is None:
        return encoder_from_options(name, model, bridge)
    from mmrag.encoders import create_encoder
    from mmrag.index.collection import Collection

    col = Collection.open(index_dir)
    try:
        m = col.manifest
    finally:
        col.close()
    if name or model or bridge:
        fail(f"--encoder/--encoder-model/--bridge do not apply to {index_dir}: it was built with "
             f"{m.encoder_label()}, which is used")
    return create_encoder(m.encoder, **m.encoder_options)


# ---------------------------------------------------------------------- corpora
# One convention for every verb that reads a corpus: a positional PATH plus --kind and --split;
# --dataset/--data-dir are the old spellings, kept working but hidden.

CorpusArg = Annotated[Optional[Path], typer.Argument(
    metavar="PATH", help="Corpus: image folder, COCO/Karpathy JSON, Flickr8k folder or JSONL manifest.", show_default=False)]
KindOpt = Annotated[str, typer.Option(
    "--kind", help="Corpus format: auto, folder, coco, karpathy, flickr8k, jsonl, vqa-rad.")]
DatasetAlias = Annotated[Optional[str], typer.Option("--dataset", hidden=True, help="Old name of --kind.")]
DataDirAlias = Annotated[Optional[Path], typer.Option("--data-dir", hidden=True, help="Old name of PATH.")]
SplitOpt = Annotated[Optional[str], typer.Option(
    "--split", help="Split: a name (train/dev/test), all, or default (test when the corpus has splits, else all).")]


def corpus_source(path: Optional[Path], data_dir: Optional[Path], kind: str, dataset: Optional[str],
                  default_path: Optional[Path] = None) -> tuple[Path, str]:
    """(PATH, kind) from the positional PATH/--kind or their hidden aliases --data-dir/--dataset."""
    if path is not None and data_dir is not None and Path(path) != Path(data_dir):
        fail(f"give the corpus once: PATH {path} or --data-dir {data_dir}")
    where = path if path is not None else data_dir if data_dir is not None else default_path
    if where is None:
        fail("give the corpus PATH (an image folder, a COCO/Karpathy JSON, the Flickr8k folder or a JSONL manifest)")
    return Path(where), (dataset or kind)

