"""Contract tests for every VectorStore backend, plus FAISS-specific ANN and crash-safety tests.

A new backend adds its name to ``BACKENDS`` and must pass the contract section. ``milvus`` runs
on Milvus Lite (a local file, the real Milvus engine) and is skipped with the reason when pymilvus
or milvus-lite cannot be imported; where a test needs two processes on one store it runs against
Milvus Lite's engine serving on a loopback port (a Lite file admits one process).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import IndexError_
from mmrag.index import VECTOR_STORES, Hit, VectorStore, open_store

BACKENDS = ["faiss", "milvus"]
DIM = 32
REPO = Path(__file__).resolve().parents[2]


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, dim: int, seed: int = 0, k: int = 50) -> np.ndarray:
    """Unit vectors from a mixture of Gaussians (ANN-realistic, unlike uniform random)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((k, dim)).astype(np.float32)
    x = centers[rng.integers(0, k, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ db.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _milvus_lite_missing() -> str | None:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except Exception as e:  # ImportError, or milvus-lite failing to load its engine
        return f"milvus backend needs pymilvus and milvus-lite: {e}"
    return None


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "milvus" and (why := _milvus_lite_missing()):
        pytest.skip(why)
    return request.param


@pytest.fixture
def make_store(backend, tmp_path):
    opened: list[VectorStore] = []

    def make(name: str = "store", dim: int = DIM, **options) -> VectorStore:
        s = open_store(backend, tmp_path / name, dim, **options)
        opened.append(s)
        return s

    yield make
    for s in opened:
        try:
            s.close()
        except Exception:
            pass


@pytest.fixture
def store(make_store):
    return make_store()


# ------------------------------------------------------------------ contract
def test_registered_and_protocol(backend, store):
    assert backend in VECTOR_STORES.names()
    assert isinstance(store, VectorStore)
    assert store.dim == DIM


def test_add_search_exact_vs_bruteforce(store):
    x = unit(500, seed=1)
    ids = [f"doc{i}" for i in range(len(x))]
    assert store.add(ids, x, [{"i": i} for i in range(len(x))]) == 500
    q = unit(20, seed=2)
    res = store.search(q, k=10)
    want = brute(x, q, 10)
    assert len(res) == 20
    for row, w, qv in zip(res, want, q):
        assert [h.id for h in row] == [ids[j] for j in w]
        assert all(isinstance(h, Hit) for h in row)
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, x[w] @ qv, rtol=1e-4, atol=1e-5)
        assert [h.metadata["i"] for h in row] == list(w)
    # a 1-D query is one query; k larger than the store returns everything
    assert len(store.search(q[0], k=10)) == 1
    assert len(store.search(q[:1], k=10_000)[0]) == 500


def test_count_contains_ids_get_vectors(store):
    x = unit(10, seed=3)
    ids = [f"a{i}" for i in range(10)]
    store.add(ids, x, [{"n": i, "tag": "t"} for i in range(10)])
    assert store.count() == 10
    assert "a3" in store and "nope" not in store
    assert store.ids() == ids
    assert store.get(["a2", "missing", "a5"]) == [{"n": 2, "tag": "t"}, None, {"n": 5, "tag": "t"}]
    np.testing.assert_array_equal(store.vectors(["a7", "a1"]), x[[7, 1]])
    with pytest.raises(KeyError):
        store.vectors(["a1", "missing"])


def test_add_replaces_existing_id(store):
    x = unit(50, seed=4)
    ids = [f"r{i}" for i in range(50)]
    store.add(ids, x, [{"v": 1}] * 50)
    new = unit(1, seed=5)
    assert store.add(["r10"], new, [{"v": 2}]) == 1
    assert store.count() == 50
    assert store.get(["r10"]) == [{"v": 2}]
    np.testing.assert_array_equal(store.vectors(["r10"]), new)
    hit = store.search(new, k=1)[0][0]
    assert hit.id == "r10" and hit.score == pytest.approx(1.0, abs=1e-5) and hit.metadata == {"v": 2}
    # the old vector no longer finds r10 first unless it is genuinely nearest; never twice
    res = store.search(x[10], k=50)[0]
    assert [h.id for h in res].count("r10") == 1
    # a repeated id inside one batch: the last one wins
    store.add(["dup", "dup"], unit(2, seed=6), [{"k": 0}, {"k": 1}])
    assert store.count() == 51 and store.get(["dup"]) == [{"k": 1}]


def test_delete_never_returned(store):
    x = unit(300, seed=7)
    ids = [f"d{i}" for i in range(300)]
    store.add(ids, x)
    gone = ids[::3]
    assert store.delete(gone + ["not-there"]) == len(gone)
    assert store.delete(gone) == 0
    assert store.count() == 200
    assert all(g not in store for g in gone)
    res = store.search(x, k=20)
    returned = {h.id for row in res for h in row}
    assert not returned & set(gone)
    # each survivor still finds itself first
    keep = [i for i in range(300) if i % 3]
    top = store.search(x[keep], k=1)
    assert [r[0].id for r in top] == [ids[i] for i in keep]


def test_filter_scalar_and_list_returns_k(store):
    x = unit(1000, seed=8)
    ids = [f"f{i}" for i in range(1000)]
    colours = ["red", "green", "blue", "black"]
    meta = [{"colour": colours[i % 4], "n": i % 10, "flag": i % 2 == 0, "s": str(i % 10)} for i in range(1000)]
    store.add(ids, x, meta)
    q = unit(5, seed=9)
    for row in store.search(q, k=10, filter={"colour": "red"}):
        assert len(row) == 10 and all(h.metadata["colour"] == "red" for h in row)
    for row in store.search(q, k=10, filter={"colour": ["green", "blue"]}):
        assert len(row) == 10 and all(h.metadata["colour"] in ("green", "blue") for h in row)
    # exactness of the filtered result
    sub = [i for i in range(1000) if meta[i]["colour"] == "red"]
    want = brute(x[sub], q, 10)
    got = store.search(q, k=10, filter={"colour": "red"})
    for row, w in zip(got, want):
        assert [h.id for h in row] == [ids[sub[j]] for j in w]
    # a selective filter (7 matches) returns all of them; two keys are AND-ed
    store.add([f"rare{i}" for i in range(7)], unit(7, seed=90), [{"colour": "red", "rare": i} for i in range(7)])
    row = store.search(q[:1], k=10, filter={"colour": "red", "rare": list(range(10))})[0]
    assert sorted(h.id for h in row) == [f"rare{i}" for i in range(7)]
    assert [h.id for h in store.search(q[:1], k=10, filter={"rare": 4, "colour": "red"})[0]] == ["rare4"]
    assert store.search(q[:1], k=10, filter={"rare": 4, "colour": "blue"})[0] == []
    assert len(store.search(q[:1], k=10, filter={"flag": True})[0]) == 10
    assert all(h.metadata["flag"] is True for h in store.search(q[:1], k=10, filter={"flag": True})[0])
    assert all(h.metadata["n"] == 1 for h in store.search(q[:1], k=10, filter={"n": 1})[0])
    assert store.search(q[:1], k=10, filter={"s": 1})[0] == []  # "1" (str) is not 1 (int)
    assert store.search(q[:1], k=10, filter={"colour": "purple"})[0] == []
    assert store.search(q[:1], k=10, filter={"missing_key": "x"})[0] == []
    assert store.search(q[:1], k=10, filter={"colour": []})[0] == []
    # JSON types are respected even where SQL would equate them (true == 1)
    store.add(["t1", "t2"], unit(2, seed=91), [{"n": True}, {"n": True}])
    assert sorted(h.id for h in store.search(q[:1], k=10, filter={"n": True})[0]) == ["t1", "t2"]
    assert all(h.metadata["n"] == 1 and h.metadata["n"] is not True for h in store.search(q[:1], k=10, filter={"n": 1})[0])


def test_empty_store_search(store):
    assert store.count() == 0
    assert store.search(unit(3, seed=10), k=5) == [[], [], []]
    assert store.search(unit(2, seed=10), k=5, filter={"a": 1}) == [[], []]
    assert store.ids() == []


def test_wrong_dimension_is_value_error(store, make_store):
    with pytest.raises(ValueError, match=str(DIM)):
        store.add(["x"], np.zeros((1, DIM + 1), np.float32))
    store.add(["x"], unit(1))
    with pytest.raises(ValueError, match=str(DIM)):
        store.search(np.zeros((1, DIM - 1), np.float32))
    with pytest.raises(ValueError):
        store.add(["a", "b"], unit(1))  # ids and vectors disagree
    with pytest.raises(ValueError):
        store.add(["nan"], np.full((1, DIM), np.nan, np.float32))
    store.close()
    with pytest.raises((ValueError, IndexError_)):
        make_store(dim=DIM * 2)  # reopening with another dimension


def test_unicode_string_ids(store, make_store):
    ids = ["ünïcødé", "日本語の画像.jpg", "emoji-🖼️", "with space/and\\slash", "'quote\"", "a" * 300]
    x = unit(len(ids), seed=11)
    store.add(ids, x, [{"name": i} for i in ids])
    assert sorted(store.ids()) == sorted(ids)
    assert all(i in store for i in ids)
    top = store.search(x, k=1)
    assert [r[0].id for r in top] == ids
    assert store.get(ids) == [{"name": i} for i in ids]
    store.close()
    again = make_store()
    assert [r[0].id for r in again.search(x, k=1)] == ids
    with pytest.raises(ValueError):
        again.add([3], unit(1))  # ids must be strings


def test_persistence_across_reopen(make_store):
    s = make_store()
    x = unit(400, seed=12)
    ids = [f"p{i}" for i in range(400)]
    s.add(ids, x, [{"i": i} for i in range(400)])
    s.delete(ids[:100])
    s.save()
    s.add(["late"], unit(1, seed=13), [{"late": True}])  # after save: must survive close too
    before = s.search(x[100:110], k=5)
    s.close()
    t = make_store()
    assert t.count() == 301
    assert "late" in t and "p0" not in t
    after = t.search(x[100:110], k=5)
    assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
    assert t.get(["p200"]) == [{"i": 200}]


@pytest.fixture(scope="module")
def coco_embeddings(data_dir, effnet_minilm):
    """Real effnet-minilm vectors of the 100 COCO sample images and their captions."""
    from mmrag.corpus.readers import read_corpus

    corpus = read_corpus("coco", data_dir / "coco_sample")
    items = corpus.items[:40]
    img = effnet_minilm.embed_images([it.path for it in items])
    texts = [it.captions[0] for it in items]
    return items, img, effnet_minilm.embed_texts(texts)


def test_real_embeddings_text_to_image(make_store, coco_embeddings):
    """Captions find images exactly as a brute-force cosine ranking does; filters on real metadata."""
    items, img, txt = coco_embeddings
    store = make_store("real", dim=img.shape[1])
    ids = [it.id for it in items]
    meta = [{"file": it.path.name, "half": i % 2, "captions": it.captions} for i, it in enumerate(items)]
    store.add(ids, img, meta)
    res = store.search(txt, k=5)
    want = brute(img, txt, 5)
    for row, w, qv in zip(res, want, txt):
        assert [h.id for h in row] == [ids[j] for j in w]
        np.testing.assert_allclose([h.score for h in row], img[w] @ qv, rtol=1e-4, atol=1e-5)
    # the caption of an image retrieves it among the top 5 for most images (a sanity floor)
    assert np.mean([ids[i] in {h.id for h in row} for i, row in enumerate(res)]) > 0.3
    odd = [i for i in range(len(items)) if i % 2]
    for row, w in zip(store.search(txt, k=5, filter={"half": 1}), brute(img[odd], txt, 5)):
        assert [h.id for h in row] == [ids[odd[j]] for j in w]
        assert all(h.metadata["captions"] == items[ids.index(h.id)].captions for h in row)
    np.testing.assert_array_equal(store.vectors(ids[:3]), img[:3])


# ------------------------------------------------------------------ FAISS specifics
def test_faiss_cache_missing_or_corrupt_is_rebuilt(tmp_path):
    from mmrag.index.faiss_store import FaissStore

    x = unit(200, seed=14)
    ids = [f"c{i}" for i in range(200)]
    s = FaissStore(tmp_path / "s", DIM)
    s.add(ids, x)
    s.close()
    marker = json.loads((tmp_path / "s" / "index.json").read_text())
    idx_file = tmp_path / "s" / marker["file"]
    idx_file.write_bytes(idx_file.read_bytes()[:100])  # truncated cache
    s = FaissStore(tmp_path / "s", DIM)
    assert s.count() == 200 and s.info()["index_ntotal"] == 200
    assert [r[0].id for r in s.search(x, k=1)] == ids
    s.close()
    (tmp_path / "s" / "index.json").unlink()  # no cache at all
    s = FaissStore(tmp_path / "s", DIM)
    assert [r[0].id for r in s.search(x, k=1)] == ids
    info = s.info()
    assert info["count"] == 200 and info["dim"] == DIM and info["index_type"] == "flat"
    assert info["bytes_on_disk"] > 200 * DIM * 4
    s.close()


def test_faiss_stale_cache_after_unsaved_changes(tmp_path):
    """A process that dies after commits but before save: reopening catches up from SQLite."""
    code = textwrap.dedent(
        f"""
        import os, numpy as np
        from mmrag.index.faiss_store import FaissStore
        s = FaissStore({str(tmp_path / 's')!r}, {DIM})
        x = np.eye({DIM}, dtype=np.float32)
        s.add([f"e{{i}}" for i in range({DIM})], x)
        s.save()
        s.delete(["e0", "e1"])
        s.add(["e2"], -x[2:3])          # replace
        s.add(["new"], x[0:1])
        os._exit(0)                      # no close(), no save()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    from mmrag.index.faiss_store import FaissStore

    s = FaissStore(tmp_path / "s", DIM)
    assert s.count() == DIM - 1
    assert s.info()["index_ntotal"] == DIM - 1
    x = np.eye(DIM, dtype=np.float32)
    assert s.search(x[0:1], k=1)[0][0].id == "new"
    assert s.search(-x[2:3], k=1)[0][0].id == "e2"
    assert "e1" not in {h.id for h in s.search(x[1:2], k=DIM)[0]}
    s.close()


def test_faiss_interrupted_save_keeps_old_cache(tmp_path, monkeypatch):
    """Dying between writing the new index file and committing index.json: the old marker and
    its file are intact, the stray new file is ignored and cleaned, SQLite fills the gap."""
    from mmrag.index import faiss_store
    from mmrag.index.faiss_store import FaissStore

    x = unit(300, seed=18)
    ids = [f"s{i}" for i in range(300)]
    s = FaissStore(tmp_path / "s", DIM)
    s.add(ids[:200], x[:200])
    s.save()
    old_marker = (tmp_path / "s" / "index.json").read_text()
    s.add(ids[200:], x[200:])
    s.delete(ids[:10])
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(dst).endswith("index.json"):
            raise KeyboardInterrupt("simulated kill before the marker commit")
        return real_replace(src, dst)

    monkeypatch.setattr(faiss_store.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        s.save()
    monkeypatch.setattr(faiss_store.os, "replace", real_replace)
    assert (tmp_path / "s" / "index.json").read_text() == old_marker
    (tmp_path / "s" / "index-999999999999-deadbeef.faiss.tmp").write_bytes(b"half a file")
    s._conn.close()  # abandon the process state without saving
    t = FaissStore(tmp_path / "s", DIM)
    assert t.count() == 290 and t.info()["index_ntotal"] == 290
    assert [r[0].id for r in t.search(x[10:], k=1)] == ids[10:]
    assert not list((tmp_path / "s").glob("*.tmp"))
    assert len(list((tmp_path / "s").glob("index-*.faiss"))) == 1
    t.close()


@pytest.mark.parametrize("index_type", ["ivf", "ivf_sq8", "hnsw"])
def test_faiss_ann_recall_and_deletes(tmp_path, index_type):
    from mmrag.index.faiss_store import FaissStore

    dim, n = 64, 20_000
    x = clustered(n, dim, seed=15)
    ids = [f"v{i}" for i in range(n)]
    s = FaissStore(tmp_path / index_type, dim, index_type=index_type)
    for a in range(0, n, 5000):
        s.add(ids[a : a + 5000], x[a : a + 5000], [{"part": i % 7} for i in range(a, a + 5000)])
    s.save()
    assert s.info()["index_type"] == index_type
    q = clustered(200, dim, seed=16)
    want = brute(x, q, 10)
    got = s.search(q, k=10)
    recall = np.mean([len({h.id for h in r} & {ids[j] for j in w}) / 10 for r, w in zip(got, want)])
    assert recall >= 0.9, recall
    gone = sorted({ids[j] for j in want[:, :3].ravel()})  # delete the best hits
    assert s.delete(gone) == len(gone)
    got = s.search(q, k=10)
    assert not {h.id for r in got for h in r} & set(gone)
    assert all(len(r) == 10 for r in got)
    # filtered ANN search: still k hits of the right part
    for r in s.search(q[:20], k=10, filter={"part": 3}):
        assert len(r) == 10 and all(h.metadata["part"] == 3 for h in r)
    s.close()
    s = FaissStore(tmp_path / index_type, dim, index_type=index_type)
    assert s.info()["index_type"] == index_type and s.count() == n - len(gone)
    assert not {h.id for r in s.search(q, k=10) for h in r} & set(gone)
    s.close()


def test_faiss_auto_switches_to_ann_past_threshold(tmp_path):
    from mmrag.index.faiss_store import FaissStore

    x = clustered(3000, 16, seed=17)
    s = FaissStore(tmp_path / "a", 16, flat_threshold=2000)
    s.add([str(i) for i in range(1500)], x[:1500])
    s.save()
    assert s.info()["index_type"] == "flat"
    s.add([str(i) for i in range(1500, 3000)], x[1500:])
    s.close()
    s = FaissStore(tmp_path / "a", 16, flat_threshold=2000)
    assert s.info()["index_type"] == "ivf_sq8" and s.count() == 3000
    assert s.search(x[:5], k=1)[0][0].id == "0"
    s.close()


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from mmrag.index.faiss_store import FaissStore
    path, start, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = FaissStore(path, 16)
    rng = np.random.default_rng(start)
    for b in range(start, start + batches):
        x = rng.standard_normal((200, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        s.add([f"b{b}-{i}" for i in range(200)], x, [{"b": b}] * 200)
        if b % 3 == 0:
            s.delete([f"b{b - 1}-{i}" for i in range(0, 200, 2)])
        if b % 4 == 0:
            y = rng.standard_normal((1, 16)).astype(np.float32)
            s.add([f"b{b}-0"], y / np.linalg.norm(y), [{"b": b, "replaced": True}])   # replace
        if b % 2 == 0:
            s.save()
        print(b, flush=True)
    s.close()
    print("done", flush=True)
    """
)


def _check_consistent(path: Path) -> int:
    from mmrag.index.faiss_store import FaissStore

    s = FaissStore(path, 16)
    try:
        n = s.count()
        ids = s.ids()
        assert n == len(ids) == len(set(ids))
        assert s.info()["index_ntotal"] == n
        if n:
            x = s.vectors(ids)
            top = s.search(x, k=1)
            assert [r[0].id for r in top] == ids  # every id searchable, and only live ids
        return n
    finally:
        s.close()


def test_faiss_crash_safety_kill9(tmp_path):
    path = tmp_path / "crash"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rnd = random.Random(1234)
    start, counts = 0, []
    t0 = time.monotonic()
    for _ in range(5):
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(start), "100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        assert p.stdout.readline().strip() != ""  # it committed at least one batch
        time.sleep(rnd.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        counts.append(_check_consistent(path))
        start += 10_000
    # a final run finishes normally on the recovered store
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), str(start), "5"],
                       capture_output=True, env=env, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("done")
    final = _check_consistent(path)
    assert final > counts[-1] and all(c > 0 for c in counts)
    assert time.monotonic() - t0 < 40


@pytest.fixture
def milvus_server(tmp_path):
    """A Milvus server for the processes of one test: Milvus Lite's engine serving gRPC on a
    loopback port (what a Milvus standalone speaks), since a Lite *file* admits one process."""
    import socket

    from milvus_lite.server import Server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(str(tmp_path / "server.db"), f"127.0.0.1:{port}")
    if not (server.init() and server.start()):
        pytest.skip("Milvus Lite's engine did not start as a server")
    yield f"http://127.0.0.1:{port}"
    if server._p is not None:  # a TCP server does not watch a lock file: stop() would wait 2 s, then kill
        server._p.terminate()
    server.stop()


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_reader_follows_another_process_writing(backend, request, tmp_path, index_type):
    """A store kept open (a server) while another process adds and deletes rows (``mmrag
    index`` into the same index): its searches, count and keyword searches follow, without a
    reopen. Milvus: against a server (a Milvus Lite file refuses the second process, see
    test_milvus_store.py)."""
    dim, n = 16, 3000
    x = clustered(n + 2, dim, seed=21)
    path = tmp_path / index_type
    options: dict = {"index_type": index_type}
    if backend == "milvus":
        options = {"index_type": {"flat": "FLAT", "ivf": "IVF_FLAT"}[index_type],
                   "uri": request.getfixturevalue("milvus_server"), "timeout": 30}
    w = open_store(backend, path, dim, **options)
    w.add([f"v{i}" for i in range(n)], x[:n], [{"caption": f"a zebra number {i}"} for i in range(n)])
    w.save()
    w.close()
    reader = open_store(backend, path, dim, **options)
    assert reader.count() == n
    assert reader.keyword_search("giraffe", k=5) == []  # cached: the write below must empty the cache
    zebra = {h.id: h.score for h in reader.keyword_search("zebra", k=n)}
    np.save(tmp_path / "new.npy", x[n:])
    code = (
        "import sys, numpy as np\n"
        "from mmrag.index import open_store\n"
        f"s = open_store({backend!r}, sys.argv[1], {dim})\n"  # the rest (uri, index) from the store's files
        "s.add(['new0', 'new1'], np.load(sys.argv[2]), [{'caption': 'a giraffe'}, {'caption': 'a giraffe'}])\n"
        "s.delete(['v0'])\n"
        "s.close()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "new.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert reader.count() == n + 1
    hits = reader.search(x[n:], k=1)
    assert [h[0].id for h in hits] == ["new0", "new1"]
    assert "v0" not in {h.id for h in reader.search(x[:1], k=5)[0]}
    assert "v0" not in reader and "new0" in reader and reader.get(["v0"]) == [None]
    assert reader.ids()[-2:] == ["new0", "new1"] and len(reader.ids()) == n + 1
    np.testing.assert_allclose(reader.vectors(["new1"]), x[n + 1 :], atol=1e-6)
    assert [h[0].id for h in reader.search(x[n:], k=1, filter={"caption": "a giraffe"})] == ["new0", "new1"]
    assert sorted(h.id for h in reader.keyword_search("giraffe", k=5)) == ["new0", "new1"]
    after = {h.id: h.score for h in reader.keyword_search("zebra", k=n)}
    assert set(after) == set(zebra) - {"v0"}
    assert after["v1"] != zebra["v1"]  # BM25 depends on the row count: not the cached terms
    reader.close()
