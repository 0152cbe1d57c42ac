"""The retrieval layer: Searcher lookups on a real index, ExactIndex against a brute-force
ranking (ties included), and the shared embedding cache's keys."""

from __future__ import annotations


import numpy as np
import pytest

from mmrag.retrieval import CaptionDatastore, ExactIndex, Searcher, top_k
from mmrag.retrieval.cache import (
    EmbeddingCache,
    cache_key,
    cached_vectors,
    corpus_image_vectors,
    corpus_vectors_path,
    encoder_cache_key,
)


# ----------------------------------------------------------------------------- Searcher lookups

@pytest.fixture(scope="module")
def coco_corpus(data_dir):
    from mmrag.corpus.readers import read_corpus

    return read_corpus("coco", data_dir / "coco_sample", limit=10)


@pytest.fixture(scope="module")
def coco_searcher(coco_corpus, effnet_minilm, tmp_path_factory):
    from mmrag.embedding import IndexConfig, build_index

    out = tmp_path_factory.mktemp("coco_idx")
    build_index(coco_corpus, out, effnet_minilm, IndexConfig(batch_size=8, progress=False))
    s = Searcher(out, encoder=effnet_minilm)
    yield s
    s.close()


def test_searcher_lookups(coco_searcher, coco_corpus, effnet_minilm):
    s = coco_searcher
    items = coco_corpus.items
    ids = [it.id for it in items]
    assert sorted(s.ids()) == sorted(ids)
    assert s.count() == s.count("images") == len(items)
    assert s.count("captions") == sum(len(it.captions) for it in items) == len(s.ids("captions"))
    assert s.manifest.encoder == "effnet-minilm" and s.dim == effnet_minilm.dim == s.encoder.dim
    info = s.info()
    assert info["images"] == len(items) and info["captions"] == s.count("captions")

    first = items[0]
    assert s.has(first.id) and not s.has("no-such-image") and not s.has(None)
    meta = s.get(first.id)
    assert meta["captions"] == first.captions
    assert s.get("no-such-image") is None
    assert s.metadata([first.id, "no-such-image"]) == [meta, None]

    # stored vectors are the encoder's vectors of the same files, in the order asked for
    V = s.vectors(ids[:3][::-1])
    assert V.shape == (3, s.dim)
    np.testing.assert_allclose(V, effnet_minilm.embed_images([it.path for it in items[:3]][::-1]), atol=1e-5)
    np.testing.assert_allclose(s.vector(first.id), V[2], atol=0)
    assert s.vector("no-such-image") is None

    cids = s.caption_ids(first.id)
    assert cids == [f"{first.id}#{k}" for k in range(len(first.captions))]
    assert [m["text"] for m in s.metadata(cids, "captions")] == first.captions
    assert s.caption_ids("no-such-image") == []

    # a stored vector finds its own image first, through the old API too
    hit = s.search_vectors(V[2][None], k=1)[0][0]
    assert hit.id == first.id and hit.score > 0.999
    assert s.search(image=first.path, k=1)[0].id == first.id
    with pytest.raises(ValueError, match="target must be"):
        s.search_vectors(V[:1], target="nonsense")
    with pytest.raises(ValueError, match="target must be"):
        s.ids("../images")


def test_datastore_from_searcher(coco_searcher):
    ds = CaptionDatastore.from_searcher(coco_searcher)
    ids = coco_searcher.ids("captions")
    assert len(ds) == len(ids)
    assert ds.texts == [m["text"] for m in coco_searcher.metadata(ids, "captions")]
    assert ds.image_ids == [i.split("#", 1)[0] for i in ids]
    np.testing.assert_array_equal(ds.vectors, coco_searcher.vectors(ids, "captions"))


# ----------------------------------------------------------------------------- ExactIndex

def _reference(S: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-S, axis=-1, kind="stable")[..., :k]


def test_top_k_matches_full_stable_sort_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        # few distinct values: many ties, also at the k-th place
        s = rng.integers(-3, 4, size=n).astype(np.float32) / 4
        if trial % 5 == 0:
            s[rng.random(n) < 0.2] = -np.inf
        for k in (1, 2, 5, n - 1, n, n + 3):
            if k >= 1:
                np.testing.assert_array_equal(top_k(s, k), _reference(s, k), err_msg=f"{s} k={k}")
    S = rng.integers(0, 3, size=(7, 40)).astype(np.float32)
    np.testing.assert_array_equal(top_k(S, 6), _reference(S, 6))
    assert top_k(np.array([1.0, 2.0]), 0).shape == (0,)
    # NaN sorts after -inf, as in a full sort
    s = np.array([np.nan, 1.0, -np.inf, np.nan, 0.5], np.float32)
    np.testing.assert_array_equal(top_k(s, 4), _reference(s, 4))


def test_exact_index_search_matches_brute_force():
    rng = np.random.default_rng(1)
    V = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)  # integer vectors: exact ties
    V[50] = V[10]  # duplicate rows tie exactly
    priors = (rng.integers(0, 3, size=300) / 8).astype(np.float32)
    Q = rng.integers(-2, 3, size=(600, 8)).astype(np.float32)  # more than one chunk of queries
    idx = ExactIndex(V, priors=priors)
    S_ref = Q @ V.T - priors
    for k in (1, 7, 300, 500):
        sc, ii = idx.search(Q, k)
        np.testing.assert_array_equal(ii, _reference(S_ref, k))
        np.testing.assert_array_equal(sc, np.take_along_axis(S_ref, ii, axis=1))
    # one query vector: 1-D results
    sc, ii = ExactIndex(V).search(Q[0], 5)
    np.testing.assert_array_equal(ii, _reference(V @ Q[0], 5))
    # exclusions score -inf and come last
    ex = [np.arange(0, 300, 2)] + [None] * (len(Q) - 1)
    sc, ii = idx.search(Q, 200, exclude=ex)
    assert set(ii[0][:150].tolist()) == set(range(1, 300, 2)) and np.isinf(sc[0][150:]).all()
    with pytest.raises(ValueError):
        idx.search(Q, 0)
    with pytest.raises(ValueError):
        idx.search(Q[:, :4], 3)


def test_datastore_search_is_exact(effnet_minilm, coco_corpus):
    """The caption datastore ranks as a brute-force ``cos - prior`` sort, own captions excluded."""
    ds = CaptionDatastore.from_corpus(coco_corpus, effnet_minilm, cache=False)
    q = ds.vectors[:5] + 0.01  # caption-ish queries
    hits = ds.search(q, k=8, exclude_image_ids=[ds.image_ids[0]] + [None] * 4)
    S = q @ ds.vectors.T - ds.priors
    S[0, ds.rows_by_image()[ds.image_ids[0]]] = -np.inf
    for j, hs in enumerate(hits):
        ref = [r for r in _reference(S[j], 8) if np.isfinite(S[j, r])]
        assert [h.index for h in hs] == ref
        assert all(h.image_id != ds.image_ids[0] for h in hits[0])


# ----------------------------------------------------------------------------- cache

def test_cache_key_depends_on_fingerprint_source_and_items(effnet_minilm):
    base = encoder_cache_key(effnet_minilm, "corpus", ["a", "b"])
    assert base == encoder_cache_key(effnet_minilm, "corpus", ["a", "b"])
    from mmrag.encoders import create_encoder

    other = create_encoder("effnet-minilm", bridge="flickr8k-train")  # another bridge: another fingerprint
    assert other.fingerprint() != effnet_minilm.fingerprint()
    assert encoder_cache_key(other, "corpus", ["a", "b"]) != base
    assert encoder_cache_key(effnet_minilm, "corpus2", ["a", "b"]) != base
    assert encoder_cache_key(effnet_minilm, "corpus", ["b", "a"]) != base
    assert cache_key("fp", "s", ["ab", "c"]) != cache_key("fp", "s", ["a", "bc"])


def test_cached_vectors_reuse_and_shape_check(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    v1 = cached_vectors("unit", "k1", compute, shape=(3, 2), folder=tmp_path)
    v2 = cached_vectors("unit", "k1", compute, shape=(3, 2), folder=tmp_path)
    np.testing.assert_array_equal(v1, v2)
    assert len(calls) == 1
    cached_vectors("unit", "k1", compute, shape=(4, 2), folder=tmp_path)  # wrong shape: recomputed
    cached_vectors("unit", "k2", compute, folder=tmp_path)
    assert len(calls) == 3
    c = EmbeddingCache("unit", tmp_path)
    c.path("k3").write_bytes(b"not an npy file")
    assert c.load("k3") is None  # damaged: embedded again, not an error
    assert not list(tmp_path.glob("*.tmp*"))


def test_corpus_image_vectors_cached(effnet_minilm, coco_corpus, tmp_path, monkeypatch):
    from mmrag.corpus.items import Corpus

    monkeypatch.setenv("MMRAG_CACHE", str(tmp_path))
    small = Corpus(coco_corpus.name, coco_corpus.root, coco_corpus.items[:3])
    v = corpus_image_vectors(effnet_minilm, small, progress=False)
    f = corpus_vectors_path(effnet_minilm, small)
    assert f.exists() and f.is_relative_to(tmp_path / "embeddings")
    np.testing.assert_array_equal(np.load(f), v)
    np.testing.assert_array_equal(corpus_image_vectors(effnet_minilm, small, progress=False), v)
    other = Corpus(coco_corpus.name, coco_corpus.root, coco_corpus.items[1:4])
    assert corpus_vectors_path(effnet_minilm, other) != f
