"""Calibrated relevance and "no good match": the shipped Platt fit of the default encoder, on
real Flickr8k images and captions (the fit itself: benchmarks/bench_relevance.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app

NONSENSE = "qwxz zzyqv"


def test_platt_fit_on_real_pairs_is_calibrated(flickr8k_dir, effnet_minilm):
    from mmrag.corpus.readers import read_corpus
    from mmrag.retrieval.relevance import expected_calibration_error, fit_platt, pair_scores

    dev = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=60)
    s, y = pair_scores(effnet_minilm, dev)
    a, b = fit_platt(s, y)
    p = 1 / (1 + np.exp(-(a * s + b)))
    assert a > 0  # a higher cosine is more likely a match
    # a fitted logistic on its own pairs: mean probability = base rate (the score equation)
    assert p.mean() == pytest.approx(y.mean(), abs=1e-6)
    assert expected_calibration_error(p, y) < 0.08
    assert expected_calibration_error(np.clip(s, 0, 1), y) > 0.2  # the raw cosine is no probability


def test_shipped_fit_belongs_to_the_default_encoder(effnet_minilm):
    from mmrag.retrieval.relevance import load_relevance

    m = load_relevance(effnet_minilm.fingerprint())
    assert m is not None, "mmrag/assets/relevance.json has no fit for effnet-minilm (run bench_relevance.py --write-asset)"
    assert m.a > 0 and m.fitted_on == "flickr8k dev"
    assert load_relevance("effnet-minilm-000000000000") is None  # another model's vectors: no reuse


def test_search_says_no_good_match_for_nonsense(flickr8k_test_index, effnet_minilm):
    from mmrag.retrieval import Searcher

    out, items = flickr8k_test_index
    s = Searcher(out, encoder=effnet_minilm)
    try:
        for mode in ("vector", "hybrid"):
            hits = s.search(text=items[5].captions[0], k=5, mode=mode)
            assert s.add_relevance(hits, items[5].captions[0], mode=mode)
            assert hits[0].metadata["relevance"] >= 0.5 and s.no_good_match(hits) is False, mode
            hits = s.search(text=NONSENSE, k=5, mode=mode)
            s.add_relevance(hits, NONSENSE, mode=mode)
            assert all(h.metadata["relevance"] < 0.5 for h in hits) and s.no_good_match(hits) is True, mode
        hits = s.search(image=items[0].path, k=3)
        assert not s.add_relevance(hits, None, items[0].path) and s.no_good_match(hits) is None
        # vector search itself is untouched: no relevance unless asked for
        assert "relevance" not in s.search(text=NONSENSE, k=3)[0].metadata
    finally:
        s.close()


def test_cli_and_http_report_relevance(flickr8k_test_index, effnet_minilm):
    out, items = flickr8k_test_index
    r = CliRunner().invoke(app, ["search", "--index", str(out), "--text", NONSENSE, "--mode", "vector"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "no good match" in r.output, r.output
    r = CliRunner().invoke(app, ["search", "--index", str(out), "--text", items[5].captions[0], "--json"])
    d = json.loads(r.output)
    assert 0.5 <= d[0]["relevance"] <= 1 and "no good match" not in r.output

    from fastapi.testclient import TestClient

    from mmrag.serve import create_app

    application = create_app(out, encoder=effnet_minilm)
    try:
        c = TestClient(application)
        d = c.get("/api/search", params={"q": NONSENSE, "k": 3}).json()
        assert d["no_good_match"] is True and all(h["relevance"] < 0.5 for h in d["results"])
        d = c.get("/api/search", params={"q": items[5].captions[0], "k": 3}).json()
        assert d["no_good_match"] is False and d["results"][0]["relevance"] >= 0.5
        d = c.get("/api/search", params={"q": NONSENSE, "mode": "keyword"}).json()
        assert d["no_good_match"] is None  # BM25 scores are not cosines
    finally:
        application.state.mmrag.service.close()
