"""Shared fixtures: the shared data folder (skip when absent) and models loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    env = os.environ.get("MMRAG_DATA")
    p = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    return p if p.exists() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    p = shared_data()
    if p is None:
        pytest.skip("../shared/data is absent (set MMRAG_DATA to its location)")
    return p


@pytest.fixture(scope="session")
def flickr8k_dir(data_dir) -> Path:
    p = data_dir / "flickr8k"
    if not (p / "captions.jsonl").exists():
        pytest.skip(f"Flickr8k not found under {data_dir}")
    return p


@pytest.fixture(scope="session")
def effnet_minilm():
    """The default encoder, loaded once for the whole run (model loading takes seconds)."""
    from mmrag.encoders import create_encoder

    return create_encoder("effnet-minilm")


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    pytest.importorskip("skimage", reason="scikit-image provides the sample photos")
    from mmrag.corpus.samples import sample_photos_corpus

    return sample_photos_corpus(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """The tiny random CLIP exported to ONNX (Hugging Face/Optimum layout), for `--encoder clip`."""
    pytest.importorskip("transformers", reason="exporting the tiny CLIP needs transformers")
    from clip_helpers import tiny_clip_model

    from mmrag.encoders.clip_onnx import export_clip_to_onnx

    d = tmp_path_factory.mktemp("tiny_clip")
    export_clip_to_onnx(tiny_clip_model(), d, layout="hf")
    return d
