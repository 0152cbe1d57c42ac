"""Keyword search (SQLite FTS5 in the FAISS store) and hybrid (reciprocal rank fusion) search,
on real Flickr8k images and captions with the real encoder."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app


@pytest.fixture(scope="module")
def flickr_index(flickr8k_dir, effnet_minilm, tmp_path_factory):
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    corpus = read_corpus("flickr8k", flickr8k_dir, split="test", limit=40)
    out = tmp_path_factory.mktemp("hybrid") / "idx"
    build_index(corpus, out, effnet_minilm, IndexConfig(progress=False))
    return out, corpus.items


def test_keyword_search_finds_caption_words_and_respects_filters(flickr_index, effnet_minilm):
    from mmrag.retrieval import Searcher

    out, items = flickr_index
    s = Searcher(out, encoder=effnet_minilm)
    assert s.supports_keyword() and s.has_text()
    # a word from exactly one image's captions finds that image first
    words = {}
    for it in items:
        for w in set(" ".join(it.captions).lower().split()):
            words.setdefault(w, set()).add(it.id)
    rare = sorted(w for w, ids in words.items() if len(ids) == 1 and len(w) >= 7 and w.isalpha())[:5]
    assert rare
    for w in rare:
        hits = s.search(text=w, k=3, mode="keyword")
        assert hits and hits[0].id in words[w], (w, [h.id for h in hits])
        assert hits[0].score > 0
    w = rare[0]
    (owner,) = words[w]
    other_split = "dev"
    assert s.keyword_search(w, k=5, filter={"split": other_split}) == []
    assert [h.id for h in s.keyword_search(w, k=5, filter={"split": "test"})][:1] == [owner]
    assert s.keyword_search("the of and", k=5) == []  # stopwords only: nothing to match
    s.close()


def test_fts_follows_adds_deletes_and_old_stores(tmp_path):
    from mmrag.index.base import open_store

    st = open_store("faiss", tmp_path / "s", 4)
    v = np.eye(4, dtype=np.float32)
    st.add(["a", "b"], v[:2], [{"captions": ["a lighthouse on a cliff"]}, {"captions": ["a red tractor"]}])
    assert [h.id for h in st.keyword_search("lighthouse")] == ["a"]
    st.add(["a"], v[:1], [{"captions": ["a sailing boat"]}])  # replaced: the old text is gone
    assert st.keyword_search("lighthouse") == [] and [h.id for h in st.keyword_search("sailing")] == ["a"]
    st.delete(["b"])
    assert st.keyword_search("tractor") == []
    st.close()
    c = sqlite3.connect(tmp_path / "s" / "store.db")  # no stale keyword rows left behind
    assert c.execute("SELECT COUNT(*) FROM items_fts").fetchone()[0] == 1
    c.close()
    # a store written before the keyword table existed gets it filled on open
    c = sqlite3.connect(tmp_path / "s" / "store.db")
    c.execute("DROP TABLE items_fts")
    c.commit()
    c.close()
    st = open_store("faiss", tmp_path / "s", 4)
    assert st.supports_keyword and [h.id for h in st.keyword_search("boat")] == ["a"]
    st.close()


def test_hybrid_fuses_ranks_and_keeps_vector_order_without_matches(flickr_index, effnet_minilm):
    from mmrag.retrieval import Searcher
    from mmrag.retrieval.searcher import RRF_K

    out, items = flickr_index
    s = Searcher(out, encoder=effnet_minilm)
    q = "qwxz zzyqv"  # no keyword match: hybrid is the vector ranking
    assert [h.id for h in s.search(text=q, k=10, mode="hybrid")] == [h.id for h in s.search(text=q, k=10)]
    target = items[7]
    query = target.captions[0]
    vec = s.search(text=query, k=40, mode="vector")
    kw = s.search(text=query, k=40, mode="keyword")
    hyb = s.search(text=query, k=40, mode="hybrid")
    vr = {h.id: r for r, h in enumerate(vec, 1)}
    kr = {h.id: r for r, h in enumerate(kw, 1)}
    for h in hyb[:10]:  # each fused score is the sum of its reciprocal ranks
        want = 1 / (RRF_K + vr[h.id]) + (1 / (RRF_K + kr[h.id]) if h.id in kr else 0)
        assert h.score == pytest.approx(want)
        assert h.metadata["vector_score"] == pytest.approx(vec[vr[h.id] - 1].score, abs=1e-5)
    assert hyb[0].id == target.id  # its own caption is in the index: keyword rank 1 lifts it
    s.close()


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_and_http_modes(flickr_index, effnet_minilm):
    out, items = flickr_index
    r = _run("search", "--index", out, "--text", items[3].captions[0], "--mode", "keyword", "--json", "-k", "3")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["id"] == items[3].id
    r = _run("search", "--index", out, "--text", "dog", "--mode", "fuzzy")
    assert r.exit_code == 2 and "--mode must be one of" in r.output
    r = _run("search", "--index", out, "--image", items[0].path, "--mode", "keyword")
    assert r.exit_code == 2 and "needs a text query" in r.output

    from fastapi.testclient import TestClient

    from mmrag.serve import create_app

    application = create_app(out, encoder=effnet_minilm)
    try:
        c = TestClient(application)
        d = c.post("/api/search", json={"text": items[3].captions[0], "k": 3}).json()
        assert d["mode"] == "hybrid" and d["results"][0]["id"] == items[3].id
        assert "vector_score" in d["results"][0]["metadata"]
        d = c.get("/api/search", params={"q": items[3].captions[0], "mode": "keyword", "k": 3}).json()
        assert d["mode"] == "keyword" and d["results"][0]["id"] == items[3].id
        d = c.post("/api/search", json={"text": items[3].captions[0], "mode": "keyword", "filter": {"split": "dev"}}).json()
        assert d["results"] == []  # the filter applies to keyword search (every image here is test)
        r = c.get("/api/search", params={"q": "dog", "mode": "fuzzy"})
        assert r.status_code == 400 and "mode must be one of" in r.json()["detail"]
        d = c.post("/api/search", json={"text": "dog", "mode": "vector", "k": 3}).json()
        assert d["mode"] == "vector"
    finally:
        application.state.mmrag.service.close()


def test_milvus_says_keyword_needs_faiss(tmp_path):
    pytest.importorskip("pymilvus", reason="the scale extra (pymilvus, milvus-lite) is not installed")
    from mmrag.errors import IndexError_
    from mmrag.index.base import open_store

    st = open_store("milvus", tmp_path / "m", 4)
    try:
        assert st.supports_keyword is False
        with pytest.raises(IndexError_, match="need the faiss store"):
            st.keyword_search("boat")
    finally:
        st.close()
