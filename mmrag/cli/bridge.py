"""``mmrag bridge fit``: fit the effnet-minilm image->text bridge on a captioned corpus;
``mmrag bridge image-prior``: the text->image hubness prior that goes with a bridge."""

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


def bridge_image_prior(
    corpus: CorpusArg = None,
    kind: KindOpt = "auto",
    split: SplitOpt = "train",
    bridge: Optional[str] = typer.Option(None, "--bridge", help="The bridge the prior is for: a file or a shipped "
                                         "name (default: flickr8k-train-v2)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: the bridge's "
                                            "sidecar, where the encoder looks for it)."),
    alpha: float = typer.Option(0.5, help="Weight of the prior (cos - alpha * prior)."),
    beta: float = typer.Option(20.0, help="Inverse temperature of the prior's logsumexp."),
    gate_quantile: float = typer.Option(0.6, help="A query is corrected when its top image's prior is above "
                                        "this quantile of the training images' priors (0: always)."),
    bank_size: int = typer.Option(5000, help="Training captions in the bank."),
    dataset: DatasetAlias = None,
    data_dir: DataDirAlias = None,
):
    """Fit the text->image hubness prior of a bridge on a captioned corpus's captions (default its train split)."""
    from mmrag.corpus.readers import read_corpus, resolve_split
    from mmrag.encoders.effnet_minilm import DEFAULT_BRIDGE, SHIPPED_BRIDGES, EffnetMinilmEncoder, resolve_bridge
    from mmrag.encoders.image_prior import ImagePriorConfig, fit_image_prior, sidecar_path
    from mmrag.errors import ModelUnavailableError

    if not alpha > 0 or not beta > 0:
        fail(f"--alpha and --beta must be > 0, got {alpha} and {beta}")
    if not 0.0 <= gate_quantile <= 1.0:
        fail(f"--gate-quantile must be within [0, 1], got {gate_quantile}")
    if bank_size < 1:
        fail(f"--bank-size must be >= 1, got {bank_size}")
    try:
        bridge_path = resolve_bridge(bridge)
    except ModelUnavailableError as e:
        fail(str(e))
    path, kind = corpus_source(corpus, data_dir, kind, dataset)
    if resolve_split(kind, path, split) == "test":
        err.print("[yellow]warning:[/] fitting on the test split makes test numbers meaningless")
    c = read_corpus(kind, path, split=split)
    name = bridge or DEFAULT_BRIDGE
    enc = EffnetMinilmEncoder(bridge=name)
    cfg = ImagePriorConfig(alpha=alpha, beta=beta, gate_quantile=gate_quantile, bank_size=bank_size)
    prior = fit_image_prior(c, enc, cfg)
    target = out_path or sidecar_path(bridge_path, shipped=name in SHIPPED_BRIDGES)
    target.parent.mkdir(parents=True, exist_ok=True)
    prior.save(target)
    out.print(f"image prior: a bank of {len(prior.bank)} of {prior.info['n_captions']} captions, "
              f"gate {prior.gate:.4f} -> {target}")
