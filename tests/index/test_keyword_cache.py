"""The keyword table's per-word BM25 cache (mmrag.index.keyword): the same ranking as FTS5's own
``ORDER BY bm25`` to the last bit, on real Flickr8k captions, and never stale after a write
from this connection or another one."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from mmrag.index.keyword import KeywordTable


def _fts_conn():
    conn = sqlite3.connect(":memory:")
    try:
        KeywordTable(conn).create()
    except sqlite3.Error as e:
        pytest.skip(f"this SQLite has no FTS5 trigram tokenizer: {e}")
    return conn


def _captions(flickr8k_dir, n):
    out = []
    with open(flickr8k_dir / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def test_cached_ranking_equals_fts5_bm25_ordering(flickr8k_dir):
    rows = _captions(flickr8k_dir, 1260)
    indexed, held_out = rows[:1200], rows[1200:]
    conn = _fts_conn()
    table = KeywordTable(conn)
    metas = [{"captions": r["captions"], "path": r["image"]} for r in indexed]
    # 150 rows twice (other row ids): exact ties, which both paths must break by row id
    table.insert(range(1, len(metas) + 1), metas)
    table.insert(range(5001, 5151), metas[:150])
    conn.commit()  # inside an open write transaction the table reads FTS5 directly
    plain = KeywordTable(conn, cache_rows=0)  # FTS5's own ORDER BY bm25 ... LIMIT
    queries = [c for r in held_out for c in r["captions"][:2]]
    queries += ["dog", "dog dog", "Dogs running", "a man in a red shirt climbing a rock", "zzzqqq", "the of and"]
    tied = 0
    for rep in range(2):  # cold, then every word from the cache
        for q in queries:
            for k in (1, 10, 400):
                got, want = table.search(q, k), plain.search(q, k)
                assert got == want, (q, k, got[:5], want[:5])
                scores = [s for _, s in got]
                tied += len(scores) - len(set(scores))
    assert tied > 0  # the ties were exercised
    assert table._cached > 0 and plain._cached == 0
    assert table.search("", 5) == [] and table.search("dog", 0) == []
    # a k beyond any row count means all matches, on both paths (SQLite's LIMIT is 64-bit)
    assert table.search("dog", 2**70) == plain.search("dog", 2**70) == plain.search("dog", 10**6)


def test_cache_budget_is_kept(flickr8k_dir):
    rows = _captions(flickr8k_dir, 400)
    conn = _fts_conn()
    small = KeywordTable(conn, cache_rows=60)
    small.insert(range(1, 401), [{"captions": r["captions"]} for r in rows])
    conn.commit()
    plain = KeywordTable(conn, cache_rows=0)
    for q in ["a dog runs on the grass", "a girl in a pink dress", "two men playing football", "dog"]:
        assert small.search(q, 20) == plain.search(q, 20)
        assert small._cached <= 60


def test_cache_follows_writes_from_this_and_another_connection(tmp_path):
    from mmrag.index.base import open_store

    v = np.eye(4, dtype=np.float32)
    a = open_store("faiss", tmp_path / "s", 4)
    b = open_store("faiss", tmp_path / "s", 4)  # a second writer, as another process would be
    try:
        if not a.supports_keyword:
            pytest.skip("this SQLite has no FTS5: no keyword search")
        a.add(["x", "y"], v[:2], [{"captions": ["a lighthouse on a cliff"]}, {"captions": ["a red tractor"]}])
        assert [h.id for h in a.keyword_search("lighthouse")] == ["x"]  # "lighthouse" now cached
        b.add(["z"], v[2:3], [{"captions": ["a lighthouse at dusk"]}])
        assert sorted(h.id for h in a.keyword_search("lighthouse")) == ["x", "z"]
        # the same row count and lengths as before, other words: still not stale
        b.add(["x"], v[:1], [{"captions": ["a sailing yacht near cliff"]}])
        assert [h.id for h in a.keyword_search("lighthouse")] == ["z"]
        assert [h.id for h in a.keyword_search("yacht")] == ["x"]
        a.delete(["z"])
        assert a.keyword_search("lighthouse") == []
        assert b.keyword_search("lighthouse") == []
    finally:
        a.close()
        b.close()


def test_cache_budget_from_the_environment(monkeypatch):
    from mmrag.errors import InvalidInputError
    from mmrag.index.keyword import CACHE_ENV, cache_budget

    conn = _fts_conn()
    monkeypatch.setenv(CACHE_ENV, "0")
    assert KeywordTable(conn).cache_rows == 0
    monkeypatch.setenv(CACHE_ENV, "1234")
    assert cache_budget() == 1234
    for bad in ("lots", "-5", "1e6"):
        monkeypatch.setenv(CACHE_ENV, bad)
        with pytest.raises(InvalidInputError, match=CACHE_ENV):
            KeywordTable(conn)
    monkeypatch.delenv(CACHE_ENV)
    assert KeywordTable(conn).cache_rows == KeywordTable.CACHE_ROWS
