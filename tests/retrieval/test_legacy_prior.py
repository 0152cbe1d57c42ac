"""Indexes without stored image priors rank text->image as new ones do (issue 15 follow-up): an
index built before the prior, or one to which images were added later (some rows with a prior,
some without), gets the missing priors from the stored vectors (Searcher.fill_image_priors), on
every path that ranks by the prior: search (vector, hybrid), the service's batched path, the
chat session and ``image_priors``. An encoder without a prior ranks by cosine, as before."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from mmrag.index.collection import Collection
from mmrag.retrieval import Searcher

N_QUERIES = 20


def _strip(src, dst, keep=lambda i: False):
    """A copy of index ``src`` whose image rows lack "prior" (except rows ``keep(i)``), as the
    code before the prior wrote them: same vectors, same manifest."""
    shutil.copytree(src, dst)
    col = Collection.open(dst)
    try:
        ids = col.images.ids()
        metas = col.images.get(ids)
        for i, m in enumerate(metas):
            if not keep(i):
                m.pop("prior")
        col.images.add(ids, col.images.vectors(ids), metas)
        col.save()
    finally:
        col.close()
    return dst


@pytest.fixture(scope="module")
def new_index(flickr8k_test_index, effnet_minilm):
    if effnet_minilm.image_prior_gate() is None:
        pytest.fail("the default encoder has no image prior (mmrag/assets/image_prior_flickr8k_train_v2.npz)")
    return flickr8k_test_index


@pytest.fixture(scope="module")
def old_index(new_index, tmp_path_factory):
    return _strip(new_index[0], tmp_path_factory.mktemp("old") / "idx")


@pytest.fixture(scope="module")
def mixed_index(new_index, effnet_minilm, tmp_path_factory):
    """Built as an upgrade makes one: the first 20 images indexed by the default encoder without
    its prior (the pre-prior code), then `mmrag index`'s job run again over all 40 with it."""
    from mmrag.corpus.items import Corpus
    from mmrag.embedding import IndexConfig, build_index

    root, items = new_index
    before = copy.copy(effnet_minilm)  # the same models and fingerprint, no prior: what older code had
    before.prior_model = None
    out = tmp_path_factory.mktemp("mixed") / "idx"
    build_index(Corpus("first-20", root, list(items[:20])), out, before, IndexConfig(progress=False))
    build_index(Corpus("all-40", root, list(items)), out, effnet_minilm, IndexConfig(progress=False))
    return out


def _queries(items):
    return [it.captions[0] for it in items[:N_QUERIES]]


def _hits(s, text, mode):
    return [(h.id, round(h.score, 6), h.metadata.get("prior")) for h in s.search(text=text, k=5, mode=mode)]


def test_the_fixture_indexes_are_old_and_mixed(new_index, old_index, mixed_index):
    for root, want in ((old_index, {False}), (mixed_index, {False, True}), (new_index[0], {True})):
        col = Collection.open(root)
        try:
            assert {"prior" in m for m in col.images.get(col.images.ids())} == want, root
        finally:
            col.close()


@pytest.mark.parametrize("which", ["old", "mixed"])
def test_an_index_lacking_priors_ranks_as_a_new_one(which, new_index, old_index, mixed_index, effnet_minilm):
    root, items = new_index
    new, other = Searcher(root, encoder=effnet_minilm), Searcher(old_index if which == "old" else mixed_index,
                                                                 encoder=effnet_minilm)
    try:
        ids = new.ids()
        np.testing.assert_allclose(other.image_priors(ids), new.image_priors(ids), atol=1e-6)
        moved = 0
        for j, text in enumerate(_queries(items)):
            for mode in ("vector", "hybrid") if j < 8 else ("vector",):
                got, want = _hits(other, text, mode), _hits(new, text, mode)
                assert got == want, (which, mode, text)
            cos = [h.metadata.get("cosine", h.score) for h in new.search(text=text, k=5, mode="vector")]
            moved += cos != sorted(cos, reverse=True)
        assert moved >= 1  # some query's ranking is the prior's, not cosine's: the test can tell
    finally:
        new.close()
        other.close()


def test_the_chat_session_and_the_service_rank_an_old_index_as_a_new_one(new_index, old_index, effnet_minilm):
    from fastapi.testclient import TestClient

    from mmrag.serve import create_app
    from mmrag.tasks.chat import ChatSession

    root, items = new_index
    new, old = Searcher(root, encoder=effnet_minilm), Searcher(old_index, encoder=effnet_minilm)
    app = create_app(old_index, encoder=effnet_minilm)
    try:
        c = TestClient(app)
        for text in _queries(items)[:8]:
            a = ChatSession(new, "split", k=10, captions="index").start(text).hits
            b = ChatSession(old, "split", k=10, captions="index").start(text).hits
            assert [(h.id, round(h.score, 6)) for h in a] == [(h.id, round(h.score, 6)) for h in b], text
            r = c.post("/api/search", json={"text": text, "k": 5, "mode": "vector"})
            assert r.status_code == 200, r.text
            direct = new.search(text=text, k=5, mode="vector")
            assert [x["id"] for x in r.json()["results"]] == [h.id for h in direct], text
            assert np.allclose([x["score"] for x in r.json()["results"]], [h.score for h in direct], atol=1e-5)
    finally:
        app.state.mmrag.service.close()
        new.close()
        old.close()


def test_an_encoder_without_a_prior_ranks_by_cosine(old_index, mixed_index, new_index):
    """The Lite0 bridge has no prior: nothing is computed, an index without (or with only some)
    stored priors ranks by cosine as before, and no hit gains a prior."""
    from mmrag.encoders import create_encoder

    lite0 = create_encoder("effnet-minilm", bridge="flickr8k-train")
    for root in (old_index, mixed_index):
        s = Searcher(root, encoder=lite0)
        try:
            assert not s.has_image_prior()
            ids = s.ids()
            stored = [m.get("prior") for m in s.metadata(ids)]
            assert s.image_priors(ids) is None
            for text in _queries(new_index[1])[:8]:
                q = s.query_vector(text)
                cos = s.search_vectors(q, k=5)[0]
                hits = s.search(text=text, k=5, mode="vector")
                assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in cos]
                assert all("cosine" not in h.metadata for h in hits)
                assert [h.metadata.get("prior") for h in hits] == [stored[ids.index(h.id)] for h in hits]
        finally:
            s.close()


def test_a_replaced_image_never_keeps_a_computed_prior(old_index, new_index, effnet_minilm, tmp_path):
    """Computed priors are cached by vector, not id: an image re-written without a prior (e.g. from
    an older Ray shard) while a Searcher is open gets its new vector's prior."""
    root = tmp_path / "idx"
    shutil.copytree(old_index, root)
    s = Searcher(root, encoder=effnet_minilm)
    try:
        ids = s.ids()
        first = s.image_priors(ids)
        a, b = ids[0], ids[1]
        s.collection.images.add([a], s.vectors([b]), [s.get(a)])  # a now holds b's vector, no prior
        again = s.image_priors([a, b])
        assert first[0] != first[1]  # so the check below can tell
        assert again[0] == pytest.approx(first[1], abs=1e-6) and again[1] == pytest.approx(first[1], abs=1e-6)
        hits = s.search_vectors(s.vectors([b]), k=2)[0]
        assert len(hits) == 2 and s.fill_image_priors(hits)
        assert [h.metadata["prior"] for h in hits] == pytest.approx([first[1]] * 2, abs=1e-6)
    finally:
        s.close()
