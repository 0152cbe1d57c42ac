"""The hubness prior on the image->caption path: on a hand-made index whose caption vectors have
exact cosines to a real image's query vector, ``cos - prior`` must reorder what cosine ranks first
-- in the Searcher (library and CLI path) and in the HTTP service."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mmrag.index.collection import Collection, IndexManifest
from mmrag.retrieval import Searcher

# caption -> (cosine to the query, prior): by cosine a > c > b > fillers; by cos - prior b > c > a
CAPTIONS = {"a": (0.90, 0.50), "c": (0.80, 0.20), "b": (0.70, 0.00)}
N_FILLERS = 30  # cosines 0.10 .. 0.39, prior 0: below all three either way


def _at_cosine(q: np.ndarray, c: float, rng) -> np.ndarray:
    u = rng.normal(size=q.shape)
    u -= (u @ q) * q
    u /= np.linalg.norm(u)
    return (c * q + np.sqrt(1 - c * c) * u).astype(np.float32)


def _hand_made_index(root, q: np.ndarray, with_prior: bool) -> None:
    rng = np.random.default_rng(0)
    col = Collection.create_or_open(root, IndexManifest(encoder="effnet-minilm", encoder_options={}, dim=q.shape[0]))
    specs = dict(CAPTIONS) | {f"f{i:02d}": (0.10 + i / 100, 0.0) for i in range(N_FILLERS)}
    ids, vecs, meta = [], [], []
    for name, (cos, prior) in specs.items():
        ids.append(f"img_{name}#0")
        vecs.append(_at_cosine(q, cos, rng))
        meta.append({"image_id": f"img_{name}", "text": name, "split": None} | ({"prior": prior} if with_prior else {}))
    col.captions.add(ids, np.stack(vecs), meta)
    col.images.add([f"img_{n}" for n in specs], np.stack(vecs), [{"captions": [n]} for n in specs])
    col.save()
    col.close()


@pytest.fixture(scope="module")
def query(flickr8k_dir, effnet_minilm):
    from mmrag.corpus.readers import read_corpus

    path = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=1).items[0].path
    return path, effnet_minilm.embed_images([path])[0].astype(np.float64)


@pytest.fixture(scope="module")
def prior_index(query, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior") / "idx"
    _hand_made_index(root, query[1], with_prior=True)
    return root


def test_prior_reorders_image_to_caption(prior_index, query, effnet_minilm):
    path, q = query
    s = Searcher(prior_index, encoder=effnet_minilm)
    try:
        for hits in (s.search(image=path, k=3, target="captions"), s.captions_for_image_vector(q, k=3)):
            assert [h.metadata["text"] for h in hits] == ["b", "c", "a"]
            for h in hits:
                cos, prior = CAPTIONS[h.metadata["text"]]
                assert h.metadata["cosine"] == pytest.approx(cos, abs=1e-4)
                assert h.score == pytest.approx(cos - prior, abs=1e-4)
        # k=1: "b" is third by cosine, so it comes only from re-ranking the candidate set
        assert [h.metadata["text"] for h in s.search(image=path, k=1, target="captions")] == ["b"]
        # text->caption and image->image do not use the prior (it is an image->caption correction)
        plain = s.search_vectors(q[None], k=3, target="captions")[0]
        assert [h.metadata["text"] for h in plain] == ["a", "c", "b"]
    finally:
        s.close()


def test_without_priors_ranking_is_cosine(query, effnet_minilm, tmp_path):
    path, q = query
    _hand_made_index(tmp_path / "idx", q, with_prior=False)
    s = Searcher(tmp_path / "idx", encoder=effnet_minilm)
    try:
        hits = s.search(image=path, k=3, target="captions")
        assert [h.metadata["text"] for h in hits] == ["a", "c", "b"]
        assert [round(h.score, 4) for h in hits] == [0.9, 0.8, 0.7]
    finally:
        s.close()


def test_service_applies_the_prior(prior_index, query, effnet_minilm):
    pytest.importorskip("fastapi", reason="the service needs fastapi")
    from fastapi.testclient import TestClient

    from mmrag.serve import ServeConfig, create_app

    path, _ = query
    app = create_app(prior_index, ServeConfig(), encoder=effnet_minilm)
    try:
        c = TestClient(app)
        r = c.post("/api/search", json={"image": base64.b64encode(path.read_bytes()).decode(), "k": 3,
                                        "target": "captions"})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert [x["metadata"]["text"] for x in res] == ["b", "c", "a"]
        assert res[0]["score"] == pytest.approx(0.70, abs=1e-4)
    finally:
        app.state.mmrag.service.close()
