"""The images' hubness prior on the text->image path (mmrag.encoders.image_prior): the default
encoder has one, the index stores it per image, search ranks by ``cos - prior`` when the best
image by cosine is a hub (its prior above the encoder's gate), and an index without stored
priors gets them from its vectors."""

from __future__ import annotations

import numpy as np
import pytest

from mmrag.encoders.image_prior import ImagePrior, bridge_id, rerank_rows
from mmrag.index.collection import Collection, IndexManifest
from mmrag.retrieval import Searcher

QUERY = "a dog runs through the grass"


def _at_cosine(q: np.ndarray, c: float, rng) -> np.ndarray:
    u = rng.normal(size=q.shape)
    u -= (u @ q) * q
    u /= np.linalg.norm(u)
    return (c * q + np.sqrt(1 - c * c) * u).astype(np.float32)


def _hand_made_index(root, q: np.ndarray, images: dict, with_prior: bool) -> None:
    """Images at exact cosines to the query vector ``q``, each with its prior (or none)."""
    rng = np.random.default_rng(0)
    col = Collection.create_or_open(root, IndexManifest(encoder="effnet-minilm", encoder_options={}, dim=q.shape[0]))
    names = list(images)
    vecs = np.stack([_at_cosine(q, images[n][0], rng) for n in names])
    meta = [{"path": f"{n}.jpg"} | ({"prior": images[n][1]} if with_prior else {}) for n in names]
    col.images.add(names, vecs, meta)
    col.save()
    col.close()


@pytest.fixture(scope="module")
def query(effnet_minilm):
    if effnet_minilm.image_prior_gate() is None:
        pytest.fail("the default encoder has no image prior (mmrag/assets/image_prior_flickr8k_train_v2.npz)")
    return effnet_minilm.embed_texts([QUERY])[0].astype(np.float64)


def _specs(gate: float) -> dict:
    # by cosine: hub > target > others; by cos - prior: target > hub. The hub's prior is above the
    # gate (so the query is corrected), the others' below it.
    return {"hub": (0.60, gate + 0.10), "target": (0.55, gate - 0.05)} | {
        f"f{i:02d}": (0.10 + i / 100, gate - 0.05) for i in range(30)}


def test_a_hub_image_is_pushed_down(query, effnet_minilm, tmp_path):
    gate = effnet_minilm.image_prior_gate()
    _hand_made_index(tmp_path / "idx", query, _specs(gate), with_prior=True)
    s = Searcher(tmp_path / "idx", encoder=effnet_minilm)
    try:
        for mode in ("vector", "hybrid"):
            hits = s.search(text=QUERY, k=2, mode=mode)
            assert [h.id for h in hits] == ["target", "hub"], mode
        hits = s.search(text=QUERY, k=2, mode="vector")
        assert hits[0].score == pytest.approx(0.55 - (gate - 0.05), abs=1e-4)
        assert hits[0].metadata["cosine"] == pytest.approx(0.55, abs=1e-4)
        # the calibrated relevance reads the cosine, not cos - prior
        s.add_relevance(hits, QUERY)
        model = s.relevance_model()
        assert hits[0].metadata["relevance"] == pytest.approx(float(model([0.55])[0]), abs=1e-3)
        # image->image is not corrected (the prior is for text queries)
        assert s.search_vectors(query[None], k=1)[0][0].id == "hub"
    finally:
        s.close()


def test_the_gate_leaves_a_query_whose_top_image_is_no_hub(query, effnet_minilm, tmp_path):
    gate = effnet_minilm.image_prior_gate()
    specs = _specs(gate) | {"hub": (0.60, gate - 0.01)}  # top-1 below the gate: plain cosine
    _hand_made_index(tmp_path / "idx", query, specs, with_prior=True)
    s = Searcher(tmp_path / "idx", encoder=effnet_minilm)
    try:
        hits = s.search(text=QUERY, k=2, mode="vector")
        assert [h.id for h in hits] == ["hub", "target"]
        assert hits[0].score == pytest.approx(0.60, abs=1e-4)
    finally:
        s.close()


def test_an_index_without_priors_gets_them_from_its_vectors(query, effnet_minilm, tmp_path):
    """An index built before the prior: each candidate's prior is the encoder's of its stored
    vector, computed at search time (tests/retrieval/test_legacy_prior.py: real old and mixed
    indexes on every path)."""
    _hand_made_index(tmp_path / "idx", query, _specs(effnet_minilm.image_prior_gate()), with_prior=False)
    s = Searcher(tmp_path / "idx", encoder=effnet_minilm)
    try:
        ids = s.ids()
        V = s.vectors(ids)
        p = effnet_minilm.image_prior(V)
        want = rerank_rows((s.query_vector(QUERY) @ V.T)[None], p, effnet_minilm.image_prior_gate())[0]
        hits = s.search(text=QUERY, k=5, mode="vector")
        assert [h.id for h in hits] == [ids[j] for j in np.argsort(-want, kind="stable")[:5]]
        assert [h.metadata["prior"] for h in hits] == pytest.approx([p[ids.index(h.id)] for h in hits], abs=1e-6)
    finally:
        s.close()


def test_an_index_stores_each_images_prior_and_search_ranks_by_it(flickr8k_test_index, effnet_minilm):
    """The session's real 40-image index: stored priors are the encoder's, and text search over
    all 40 gives exactly the order of ``rerank_rows`` on the exact scores (cos - prior where the
    top image is a hub), which for some caption differs from cosine."""
    root, items = flickr8k_test_index
    s = Searcher(root, encoder=effnet_minilm)
    try:
        ids = s.ids()
        V = s.vectors(ids)
        stored = np.array([m["prior"] for m in s.metadata(ids)], np.float32)
        np.testing.assert_allclose(stored, effnet_minilm.image_prior(V), atol=1e-5)
        texts = [it.captions[0] for it in items[:20]]
        T = effnet_minilm.embed_texts(texts)
        want = rerank_rows(T @ V.T, stored, effnet_minilm.image_prior_gate())
        changed = 0
        for t, row, raw in zip(texts, want, T @ V.T):
            got = [h.id for h in s.search(text=t, k=5, mode="vector")]
            assert got == [ids[j] for j in np.argsort(-row, kind="stable")[:5]], t
            changed += got[0] != ids[int(raw.argmax())]
        assert changed >= 1  # a hub that cosine put first was pushed down
    finally:
        s.close()


def test_encoders_without_a_prior_store_none(effnet_minilm):
    from mmrag.encoders import create_encoder

    lite0 = create_encoder("effnet-minilm", bridge="flickr8k-train")  # no sidecar fitted for it
    assert lite0.image_prior(np.zeros((2, lite0.dim), np.float32)) is None
    assert lite0.image_prior_gate() is None
    # the prior changes no vector, so it is not part of the fingerprint
    from mmrag.encoders.effnet_minilm import EffnetMinilmEncoder

    bare = EffnetMinilmEncoder(bridge=effnet_minilm.bridge)  # the same bridge, in memory: no sidecar
    assert bare.prior_model is None and bare.fingerprint() == effnet_minilm.fingerprint()


def test_rerank_rows_gates_per_query():
    S = np.array([[0.6, 0.55], [0.6, 0.55]], np.float32)
    assert rerank_rows(S, np.array([0.3, 0.1]), 0.2).argmax(1).tolist() == [1, 1]
    assert rerank_rows(S, np.array([0.3, 0.1]), 0.35).argmax(1).tolist() == [0, 0]
    assert rerank_rows(S, np.array([0.3, 0.1]), None).argmax(1).tolist() == [1, 1]


def test_bridge_image_prior_command(flickr8k_dir, effnet_minilm, tmp_path):
    from typer.testing import CliRunner

    from mmrag.cli import app

    out = tmp_path / "p.npz"
    r = CliRunner().invoke(app, ["bridge", "image-prior", str(flickr8k_dir), "--kind", "flickr8k",
                                 "--bank-size", "40", "--out", str(out)])
    assert r.exit_code == 0, r.output
    p = ImagePrior.load(out)
    assert p.bank.shape == (40, effnet_minilm.dim) and p.for_bridge == bridge_id(effnet_minilm.bridge)
    q = np.quantile(p.prior(effnet_minilm.bridge.extras["hub_bank"]), p.config.gate_quantile)
    assert p.gate == pytest.approx(q, abs=1e-4)  # the bank is stored as float16


def test_eval_retrieval_applies_the_prior_as_search_does(flickr8k_test_index, effnet_minilm):
    """`mmrag eval retrieval` scores text->image with the gated prior (and without it on request),
    on the session index's 40 images (their stored vectors are what evaluation embeds)."""
    from mmrag.corpus.items import Corpus
    from mmrag.eval.metrics import recall_at_k
    from mmrag.eval.retrieval import evaluate_retrieval

    root, items = flickr8k_test_index
    c = Corpus(name="flickr8k-test-40", root=root, items=list(items))
    on = evaluate_retrieval(c, effnet_minilm, progress=False)
    off = evaluate_retrieval(c, effnet_minilm, progress=False, image_prior=False)
    assert on["t2i_image_prior"] and not off["t2i_image_prior"]
    s = Searcher(root, encoder=effnet_minilm)
    try:
        G = s.vectors([it.id for it in items])
    finally:
        s.close()
    T = effnet_minilm.embed_texts([t for it in items for t in it.captions])
    owner = np.repeat(np.arange(len(items)), [len(it.captions) for it in items])
    for res, S in ((on, rerank_rows(T @ G.T, effnet_minilm.image_prior(G), effnet_minilm.image_prior_gate())),
                   (off, T @ G.T)):
        own = S[np.arange(len(S)), owner]
        assert res["t2i"] == pytest.approx(recall_at_k((S >= own[:, None]).sum(1) - 1), abs=1e-6)
    assert on["t2i"] != off["t2i"]  # so the comparison above can tell them apart
    assert on["i2t"] == off["i2t"]  # the prior is for text queries only
