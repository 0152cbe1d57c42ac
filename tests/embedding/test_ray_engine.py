"""The Ray embedding engine gives the sequential indexer's index, through clip-retrieval shards.

Real Flickr8k images and the real effnet-minilm encoder; a local Ray runtime with 2 CPUs (one
start for the module). Skipped with the reason when Ray Data is not importable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray engine needs ray[data] (pip install 'ray[data]==2.60.0')")
pytest.importorskip("ray.data", reason="the ray engine needs Ray Data (pip install 'ray[data]==2.60.0')")

from mmrag.corpus.readers import read_corpus  # noqa: E402
from mmrag.index.collection import Collection  # noqa: E402
from mmrag.embedding import EmbeddingJob, IndexConfig, build_index, load_embeddings, run_embedding  # noqa: E402

N_IMAGES = 10


@pytest.fixture(scope="module")
def ray_runtime():
    # start_ray retries a local start that times out (Ray waits a fixed 30 s for its raylet,
    # which a busy 2-core machine can exceed); one runtime for the whole module
    from mmrag.embedding.distributor import start_ray

    start_ray(None, attempts=4, num_cpus=2, include_dashboard=False, log_to_driver=False,
              object_store_memory=200 * 2**20, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_file(flickr8k_dir, tmp_path_factory) -> Path:
    """10 Flickr8k images, a byte-identical copy of the first under another id, and a file that
    is not an image: the engine must make the sequential indexer's decisions on all of them."""
    tmp = tmp_path_factory.mktemp("corpus")
    rows = [json.loads(line) for line in (flickr8k_dir / "captions.jsonl").read_text().splitlines()[:N_IMAGES]]
    out = []
    for r in rows:
        img = flickr8k_dir / r["image"]
        out.append({"image": str(img), "captions": r["captions"], "split": r.get("split"), "source": "flickr8k"})
    shutil.copy(out[0]["image"], tmp / "copy.jpg")
    out.append({"image": str(tmp / "copy.jpg"), "id": "the-copy", "captions": ["a copy"], "source": "copy"})
    (tmp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    out.append({"image": str(tmp / "broken.jpg"), "captions": ["broken"], "split": "train", "source": "broken"})
    p = tmp / "corpus.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in out) + "\n", encoding="utf-8")
    assert all(Path(r["image"]).exists() for r in out), "Flickr8k image layout changed"
    return p


def _contents(index_dir: Path) -> dict:
    col = Collection.open(index_dir)
    try:
        out = {}
        for name, store in (("images", col.images), ("captions", col.captions)):
            ids = sorted(store.ids())
            out[name] = (ids, store.get(ids), store.vectors(ids))
        out["skipped"] = sorted((s["source"], s["reason"]) for s in col.skipped())
        return out
    finally:
        col.close()


def _assert_same_index(a: dict, b: dict) -> None:
    for name in ("images", "captions"):
        ids_a, meta_a, vec_a = a[name]
        ids_b, meta_b, vec_b = b[name]
        assert ids_a == ids_b
        # caption priors are computed from the embeddings: equal within float tolerance
        prior_a = [m.pop("prior", None) for m in meta_a]
        prior_b = [m.pop("prior", None) for m in meta_b]
        assert meta_a == meta_b
        assert (None in prior_a) == (None in prior_b)
        if None not in prior_a:
            np.testing.assert_allclose(prior_a, prior_b, rtol=0, atol=1e-5)
        np.testing.assert_allclose(vec_a, vec_b, rtol=0, atol=1e-5)
    assert a["skipped"] == b["skipped"]


def test_ray_unreachable_address_is_a_clear_error(corpus_file, effnet_minilm, tmp_path):
    from mmrag.errors import MmragError

    if ray.is_initialized():
        pytest.skip("a Ray runtime is already up in this process")
    items = read_corpus("jsonl", corpus_file).items[:1]
    job = EmbeddingJob(distributor="ray", ray_address="127.0.0.1:1", shard_size=10, progress=False)
    with pytest.raises(MmragError, match="cannot start or reach Ray"):
        run_embedding(items, tmp_path / "e", encoder=effnet_minilm, job=job)


def test_ray_engine_builds_the_sequential_index(corpus_file, effnet_minilm, ray_runtime, tmp_path):
    corpus = read_corpus("jsonl", corpus_file)
    seq = build_index(corpus, tmp_path / "seq", effnet_minilm, IndexConfig(batch_size=4, progress=False))
    par = build_index(corpus, tmp_path / "ray", effnet_minilm,
                      IndexConfig(batch_size=4, progress=False, engine="ray", shard_size=3))
    assert seq.as_dict() == par.as_dict()
    assert par.added == N_IMAGES and len(par.duplicates) == 1 and len(par.skipped) == 1
    a, b = _contents(tmp_path / "seq"), _contents(tmp_path / "ray")
    _assert_same_index(a, b)
    assert any("duplicate of" in r for _, r in b["skipped"])
    # clip-retrieval layout: several shards, written by the two actors
    emb = tmp_path / "ray" / "embeddings"
    shards = sorted(p.name for p in (emb / "metadata").glob("*.parquet"))
    assert len(shards) >= 2
    assert len(list((emb / "img_emb").glob("img_emb_*.npy"))) == len(shards)
    assert len(list((emb / "text_emb").glob("text_emb_*.npy"))) == len(shards)
    # a second run adds nothing, re-judges the two left-out files as the sequential path does,
    # and reuses the shards instead of embedding again
    before = {p: p.stat().st_mtime_ns for p in emb.rglob("*.npy")}
    again = build_index(corpus, tmp_path / "ray", effnet_minilm,
                        IndexConfig(progress=False, engine="ray", shard_size=3))
    seq_again = build_index(corpus, tmp_path / "seq", effnet_minilm, IndexConfig(progress=False))
    assert again.added == 0 and again.already_indexed == N_IMAGES
    assert again.as_dict() == seq_again.as_dict()
    assert {p: p.stat().st_mtime_ns for p in emb.rglob("*.npy")} == before


def test_shards_match_and_resume(corpus_file, effnet_minilm, ray_runtime, tmp_path):
    """Ray and sequential distributors write the same embeddings; a lost shard is redone alone."""
    items = read_corpus("jsonl", corpus_file).items
    seq = run_embedding(items, tmp_path / "seq", encoder=effnet_minilm,
                        job=EmbeddingJob(distributor="sequential", shard_size=4, progress=False))
    assert seq["embedded"] == len(items) and seq["shards"] == 3 and seq["errors"] == 1
    par = run_embedding(items, tmp_path / "ray", encoder_name="effnet-minilm",
                        job=EmbeddingJob(distributor="ray", shard_size=4, progress=False))
    assert par["embedded"] == len(items)
    ma, ia, ta = load_embeddings(tmp_path / "seq")
    mb, ib, tb = load_embeddings(tmp_path / "ray")
    assert ma["id"] == mb["id"] == [it.id for it in items]
    assert ma["sha256"] == mb["sha256"] and ma["error"] == mb["error"]
    np.testing.assert_allclose(ia, ib, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ta, tb, rtol=0, atol=1e-5)
    ok = np.array([not e for e in ma["error"]])
    assert ok.sum() == len(items) - 1 and "broken.jpg" in ma["path"][int(np.flatnonzero(~ok)[0])]
    assert ta.shape[0] == sum(len(it.captions) for it, good in zip(items, ok) if good)  # not the broken one's
    assert np.allclose(np.linalg.norm(ia[ok], axis=1), 1.0, atol=1e-4) and not ia[~ok].any()

    lost = sorted((tmp_path / "seq" / "metadata").glob("*.parquet"))[1]
    lost.unlink()
    again = run_embedding(items, tmp_path / "seq", encoder=effnet_minilm,
                          job=EmbeddingJob(distributor="sequential", shard_size=4, progress=False))
    assert again["resumed"] == len(items) - 4 and again["embedded"] == 4 and again["shards"] == 3
    mc, ic, _ = load_embeddings(tmp_path / "seq")
    assert mc["id"] == ma["id"]
    np.testing.assert_allclose(ic, ia, rtol=0, atol=1e-6)


def test_embeddings_folder_of_another_corpus_is_refused(corpus_file, effnet_minilm, tmp_path):
    from mmrag.errors import IndexError_

    items = read_corpus("jsonl", corpus_file).items
    job = EmbeddingJob(distributor="sequential", shard_size=100, progress=False)
    run_embedding(items[:2], tmp_path / "e", encoder=effnet_minilm, job=job)
    with pytest.raises(IndexError_, match="another corpus"):
        run_embedding(items[:3], tmp_path / "e", encoder=effnet_minilm, job=job)
