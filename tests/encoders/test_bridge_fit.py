"""``mmrag bridge fit``: the fit is reproducible, keeps the recipe (whitening on), and a bridge
fitted on a small sample (fewer captions than dimensions) gives an encoder that indexes and
searches in 384-d."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrag.encoders.bridge import Bridge

REPO = Path(__file__).resolve().parents[2]
N_FIT = 40  # 200 captions: fewer than the 384 text dimensions (the rank-deficient case)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mmrag.cli", *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "COLUMNS": "200"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def fitted(flickr8k_dir, tmp_path_factory):
    """Two fits of the same 40 train images: one with the CLI, one with the library function."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders.effnet_minilm import DEFAULT_LAMBDA, default_recipe, fit_effnet_bridge

    d = tmp_path_factory.mktemp("bridge")
    p = run_cli("bridge", "fit", str(flickr8k_dir), "--kind", "flickr8k", "--limit", str(N_FIT), "--recipe", "v1",
                "--out", str(d / "cli.npz"))
    assert f"bridge fitted on {N_FIT} images / {5 * N_FIT} captions" in p.stdout
    c = read_corpus("flickr8k", flickr8k_dir, split="train", limit=N_FIT)
    lib = fit_effnet_bridge(c, default_recipe(), lam=DEFAULT_LAMBDA, progress=False)
    lib.save(d / "lib.npz")
    return d, Bridge.load(d / "cli.npz"), Bridge.load(d / "lib.npz")


def test_two_fits_are_identical(fitted):
    _, a, b = fitted
    assert a.config == b.config and a.info == b.info
    assert a.info["n_images"] == N_FIT and a.info["n_captions"] == 5 * N_FIT
    for name in ("W", "x_mean", "y_mean"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sorted(a.extras) == sorted(b.extras) == ["class_text", "hub_bank", "text_whitening"]
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])


def test_fit_keeps_the_recipe_and_full_dimension(fitted):
    """The shipped recipe: ridge at the chosen lambda, text space half-way whitened on the captions;
    the map, the whitening and the hub bank all in 384-d although the sample has rank < 384."""
    from mmrag.encoders.effnet_minilm import DEFAULT_LAMBDA

    _, a, _ = fitted
    assert a.config.method == "ridge" and a.config.lam == DEFAULT_LAMBDA and a.config.text_whitening == 0.5
    assert a.W.shape == (2288, 384)
    M = a.extras["text_whitening"]
    assert M.shape == (384, 384)
    # M = V diag(s/s0)^-1/2 with V orthogonal: M^T M is diagonal with entries >= 1 and not all equal
    G = M.T.astype(np.float64) @ M
    off = G - np.diag(np.diag(G))
    assert np.abs(off).max() < 1e-2 * np.diag(G).max()
    # measured 1.0 .. 87.5 (s0/s_min of the 199 seen directions; the 185 unseen ones get s_min);
    # floor-whitened unseen directions would give 1e6
    assert np.diag(G).min() > 0.99 and 2.0 < np.diag(G).max() < 200
    assert a.extras["hub_bank"].shape == (N_FIT, 384)


def test_fitted_bridge_indexes_and_searches(fitted, flickr8k_dir, tmp_path):
    d, _, _ = fitted
    idx = tmp_path / "idx"
    rep = json.loads(run_cli("index", str(flickr8k_dir), "--kind", "flickr8k", "--split", "dev", "--limit", "12",
                             "--out", str(idx), "--bridge", str(d / "cli.npz"), "--json").stdout)
    assert rep["total_images"] == 12 and rep["total_captions"] == 60 and rep["skipped"] == 0
    info = json.loads(run_cli("info", "--index", str(idx), "--json").stdout)
    assert info["dim"] == 384 and info["encoder_options"]["bridge"].endswith("cli.npz")
    from mmrag.corpus.readers import read_corpus

    first = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=12).items[0]
    hits = json.loads(run_cli("search", "--index", str(idx), "--image", str(first.path), "-k", "3",
                              "--mode", "vector", "--json").stdout)
    assert hits[0]["id"] == first.id and hits[0]["score"] > 0.99
    caps = json.loads(run_cli("search", "--index", str(idx), "--text", first.captions[0], "-k", "12",
                              "--target", "captions", "--mode", "vector", "--json").stdout)
    assert caps[0]["metadata"]["text"] == first.captions[0] and caps[0]["score"] > 0.99


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MMRAG_FULL_REFIT") != "1",
                    reason="a full refit embeds 6,000 images (~8 min on 2 cores): set MMRAG_FULL_REFIT=1")
def test_full_refit_matches_the_shipped_bridge(flickr8k_dir, tmp_path):
    """The README's command remakes the shipped file (arrays equal after the float16 storage)."""
    from mmrag.encoders.effnet_minilm import resolve_bridge

    run_cli("bridge", "fit", str(flickr8k_dir), "--kind", "flickr8k", "--split", "train",
            "--out", str(tmp_path / "b.npz"))
    a, b = Bridge.load(tmp_path / "b.npz"), Bridge.load(resolve_bridge(None))
    assert a.config == b.config and a.info["n_captions"] == b.info["n_captions"] == 30000
    for name in ("W", "x_mean", "y_mean"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-3)
    for k in b.extras:
        np.testing.assert_allclose(a.extras[k], b.extras[k], rtol=0, atol=1e-3)


def test_whitening_on_fewer_captions_than_dimensions_keeps_the_dimension():
    """Rank-deficient sample (50 captions, 16-d): the map stays 16x16, seen directions are whitened
    as in the full-rank case, unseen ones get the smallest seen variance (not blown up)."""
    from mmrag.encoders.bridge import BridgeConfig

    rng = np.random.default_rng(3)
    T = rng.normal(size=(10, 16)) * np.linspace(3, 0.5, 16)
    b = Bridge.fit(rng.normal(size=(10, 4)), T, BridgeConfig(lam=1.0))
    b.whiten_text_space(T, 0.5)
    M = b.extras["text_whitening"]
    assert M.shape == (16, 16)
    z = b.center_text(rng.normal(size=(5, 16)).astype(np.float32))
    assert z.shape == (5, 16) and np.all(np.isfinite(z))
    s = np.linalg.svd(T - b.y_mean, compute_uv=False)
    gains = np.sort(np.linalg.svd(M, compute_uv=False))
    # rank <= 9 after centring: 9 gains (s0/s_i)^0.5 for the seen directions, 7 copies of the largest
    seen = np.sort((s[0] / s[:9]) ** 0.5)
    np.testing.assert_allclose(gains[:9], seen, rtol=1e-4)
    np.testing.assert_allclose(gains[9:], seen[-1], rtol=1e-4)


N_VQA = 12  # VQA-RAD train images (about 10 QA pairs each)


def test_vqa_rad_is_a_captioned_corpus(vqa_rad_dir):
    """``--kind vqa-rad``: one item per image of the split, captioned by that split's QA pairs
    (question + answer); a test question never becomes a train caption."""
    from mmrag.corpus.readers import read_corpus, resolve_split
    from mmrag.corpus.vqa_rad import read_vqa_rad
    from mmrag.errors import CorpusError

    vqa = vqa_rad_dir
    c = read_corpus("vqa-rad", vqa, split="train")
    train = read_vqa_rad(vqa, "train")
    assert len(c.items) == len(train.image_ids()) == 314
    assert sum(len(it.captions) for it in c.items) == len(train) == 3064
    first = c.items[0]
    asked = [q for q in train.questions if q.image_id == first.id]
    assert first.captions == [f"{q.question} {q.answers[0]}" for q in asked] and first.split == "train"
    # the captions are exactly the train QA pairs: none of the test split's
    assert sorted(cap for it in c.items for cap in it.captions) == sorted(
        f"{q.question} {q.answers[0]}" for q in train.questions)
    test_pairs = {f"{q.question} {q.answers[0]}" for q in read_vqa_rad(vqa, "test").questions}
    assert test_pairs - {cap for it in c.items for cap in it.captions}  # the test split asks other things too
    assert resolve_split("vqa-rad", vqa, "default") == "test"
    with pytest.raises(CorpusError, match="give --split train or test"):
        read_corpus("vqa-rad", vqa, split=None)
    assert len(read_corpus("vqa-rad", vqa, split="train", limit=N_VQA).items) == N_VQA


def test_bridge_fit_on_vqa_rad(vqa_rad_dir, tmp_path):
    """``mmrag bridge fit --kind vqa-rad``: a bridge fitted on radiology images and their QA texts
    (the RIR knowledge index's own domain), in the same 384-d space; a split-less fit is refused
    with a one-line error."""
    vqa = vqa_rad_dir
    from mmrag.corpus.readers import read_corpus

    items = read_corpus("vqa-rad", vqa, split="train", limit=N_VQA).items
    n_caps = sum(len(it.captions) for it in items)
    p = run_cli("bridge", "fit", str(vqa), "--kind", "vqa-rad", "--limit", str(N_VQA), "--recipe", "v1",
                "--out", str(tmp_path / "rad.npz"))
    assert f"bridge fitted on {N_VQA} images / {n_caps} captions" in p.stdout
    b = Bridge.load(tmp_path / "rad.npz")
    assert b.info["corpus"] == "vqa-rad-train" and b.W.shape == (2288, 384)
    assert b.extras["hub_bank"].shape == (N_VQA, 384)
    bad = subprocess.run([sys.executable, "-m", "mmrag.cli", "bridge", "fit", str(vqa), "--kind", "vqa-rad",
                          "--split", "all", "--out", str(tmp_path / "x.npz")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "error: VQA-RAD has the splits" in bad.stderr
    assert not (tmp_path / "x.npz").exists()
