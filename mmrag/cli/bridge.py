"""``mmrag bridge fit``: fit the effnet-minilm image->text bridge on a captioned corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmrag.cli.common import CorpusArg, DataDirAlias, DatasetAlias, KindOpt, SplitOpt, corpus_source, err, fail, out


def bridge_fit(
    corpus: CorpusArg = None,
    kind: KindOpt = "auto",
    split: SplitOpt = "train",
    out_path: Path = typer.Option(..., "--out", "-o", help="Bridge file to write (.npz)."),
    recipe: str = typer.Option("v2", help="v2 (default): EfficientNet-Lite2 + the zero-shot ImageNet channel (the "
                                          "shipped default, flickr8k-train-v2); v1: Lite0 features (flickr8k-train)."),
    method: str = typer.Option("ridge", help="ridge, procrustes or infonce (ridge start, then a contrastive refinement)."),
    lam: float = typer.Option(None, help="Ridge strength (default: the shipped recipe's)."),
    limit: Optional[int] = typer.Option(None, help="Fit on at most this many images."),
    whiten: float = typer.Option(0.5, help="Caption-space whitening power (0 = off, 0.5 = half-way, 1 = full PCA whitening)."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Fit the effnet-minilm image->text bridge on a captioned corpus (default its train split) and save it."""
    from mmrag.corpus.readers import read_corpus, resolve_split
    from mmrag.encoders.effnet_minilm import (
        DEFAULT_LAMBDA, V2_LAMBDA, V2_ZEROSHOT_WEIGHT, default_recipe, fit_effnet_bridge, v2_recipe,
    )

    if recipe not in ("v1", "v2"):
        fail(f"--recipe must be v1 or v2, got {recipe!r}")
    if method not in ("ridge", "procrustes", "infonce"):
        fail(f"--method must be ridge, procrustes or infonce, got {method!r}")
    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    if resolve_split(kind, path, split) == "test":
        err.print("[yellow]warning:[/] fitting on the test split makes test numbers meaningless")
    c = read_corpus(kind, path, split=split, limit=limit)
    v2 = recipe == "v2"
    b = fit_effnet_bridge(c, v2_recipe() if v2 else default_recipe(), method=method,
                          lam=(V2_LAMBDA if v2 else DEFAULT_LAMBDA) if lam is None else lam,
                          text_whitening=whiten, zeroshot_weight=V2_ZEROSHOT_WEIGHT if v2 else 0.0)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    b.save(out_path)
    out.print(f"bridge fitted on {b.info['n_images']} images / {b.info['n_captions']} captions -> {out_path}")
