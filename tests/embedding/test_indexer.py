"""Indexing end to end: bad inputs, duplicates, resume after kill -9, search, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrag.corpus.readers import read_corpus
from mmrag.errors import CorpusError
from mmrag.index.collection import Collection
from mmrag.embedding import IndexConfig, build_index
from mmrag.retrieval import Searcher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def messy_folder(sample_corpus, tmp_path):
    """The sample photos plus the kinds of files real folders contain."""
    root = tmp_path / "photos"
    shutil.copytree(sample_corpus.root, root)
    first = sorted(root.glob("*.jpg"))[0]
    (root / "sub").mkdir()
    shutil.copy(first, root / "sub" / "copy_of_first.jpg")  # identical bytes: stored once
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage" * 10)
    data = first.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "notes.jpg").write_text("this is text, not an image")
    (root / "readme.md").write_text("ignored: not an image suffix")
    return root


def test_index_messy_folder_and_search(effnet_minilm, messy_folder, tmp_path):
    corpus = read_corpus("folder", messy_folder)
    out = tmp_path / "idx"
    rep = build_index(corpus, out, effnet_minilm, IndexConfig(batch_size=8, progress=False))
    d = rep.as_dict()
    reasons = {Path(s["source"]).name: s["reason"] for s in d["skipped_reasons"]}
    assert {"corrupt.jpg", "notes.jpg"} <= set(reasons), reasons
    assert "copy_of_first.jpg" not in reasons  # a duplicate is counted as one, not as skipped
    # the reason does not repeat the path the report already names
    assert reasons["notes.jpg"] == "not an image or unsupported format", reasons
    dups = {Path(s["source"]).name: s["reason"] for s in d["duplicate_reasons"]}
    assert list(dups) == ["copy_of_first.jpg"] and "duplicate of" in dups["copy_of_first.jpg"]
    assert d["duplicates"] == 1 and d["warnings"] == 0
    n_good = 14 + ("truncated.jpg" not in reasons)  # PIL may or may not decode a partial JPEG
    assert d["total_images"] == d["added"] == n_good
    assert d["total_captions"] > 14 * 2

    s = Searcher(out, encoder=effnet_minilm)
    assert s.search(text="a cat lying down", k=1)[0].id == "chelsea.jpg"
    # 14 out-of-domain photos (the bridge knows Flickr8k scenes): the right one within the top 2
    assert "coffee.jpg" in [h.id for h in s.search(text="a cup of coffee", k=2)]
    assert "coins.jpg" in [h.id for h in s.search(text="coins on a table", k=2)]
    hits = s.search(image=messy_folder / "coffee.jpg", k=1)
    assert hits[0].id == "coffee.jpg" and hits[0].score > 0.99
    caps = s.search(image=messy_folder / "chelsea.jpg", k=3, target="captions")
    assert all(h.metadata["image_id"] == "chelsea.jpg" for h in caps[:1])
    both = s.search(text="a cat", image=messy_folder / "coffee.jpg", weight=0.5, k=2)
    assert {h.id for h in both} == {"chelsea.jpg", "coffee.jpg"}
    s.close()

    # Running again adds nothing and loses nothing.
    rep2 = build_index(read_corpus("folder", messy_folder), out, effnet_minilm, IndexConfig(progress=False))
    assert rep2.added == 0 and rep2.total_images == n_good


def _index_contents(index_dir: Path) -> dict:
    col = Collection.open(index_dir)
    try:
        out = {name: (ids, store.get(ids), store.vectors(ids))
               for name, store in (("images", col.images), ("captions", col.captions)) for ids in [store.ids()]}
        out["skipped"] = [(s["source"], s["reason"]) for s in col.skipped()]
        return out
    finally:
        col.close()


def test_shard_path_commits_like_the_local_path(effnet_minilm, messy_folder, tmp_path):
    """One committer: embedding shards then index_from_embeddings give the local path's index,
    report and skip reasons -- also for two identical undecodable files in one batch (the second
    is a duplicate of the first on both paths; shards of 5, one commit batch) -- and the local
    path writes no shard folder."""
    from mmrag.embedding import EmbeddingJob, IndexReport, index_from_embeddings, run_embedding
    from mmrag.index.collection import IndexManifest

    shutil.copy(messy_folder / "corrupt.jpg", messy_folder / "corrupt_again.jpg")
    corpus = read_corpus("folder", messy_folder)
    local = build_index(corpus, tmp_path / "local", effnet_minilm, IndexConfig(batch_size=64, progress=False))
    assert not (tmp_path / "local" / "embeddings").exists()
    assert dict(local.duplicates)[str(messy_folder / "corrupt_again.jpg")] == "duplicate of corrupt.jpg (same bytes)"

    run_embedding(corpus.items, tmp_path / "emb", encoder=effnet_minilm,
                  job=EmbeddingJob(distributor="sequential", shard_size=5, progress=False))
    name, options = effnet_minilm.spec()
    col = Collection.create_or_open(tmp_path / "shards", IndexManifest(encoder=name, encoder_options=options,
                                                                        dim=effnet_minilm.dim))
    rep = IndexReport()
    for s in corpus.skipped:  # what build_index records before committing
        rep.skipped.append((s.source, s.reason))
        col.record_skipped(s.source, s.reason)
    for s in corpus.warnings:
        rep.warnings.append((s.source, s.reason))
        col.record_skipped(s.source, s.reason, "warning")
    index_from_embeddings(tmp_path / "emb", col, rep, {}, batch_size=64, progress=False)
    col.save()
    rep.total_images, rep.total_captions = col.images.count(), col.captions.count()
    col.close()
    assert rep.as_dict() == local.as_dict()
    a, b = _index_contents(tmp_path / "local"), _index_contents(tmp_path / "shards")
    assert a["skipped"] == b["skipped"]
    for store in ("images", "captions"):
        (ids_a, meta_a, vec_a), (ids_b, meta_b, vec_b) = a[store], b[store]
        # other batch sizes: vectors and the priors computed from them within batched-inference noise
        prior_a, prior_b = [m.pop("prior", 0.0) for m in meta_a], [m.pop("prior", 0.0) for m in meta_b]
        assert ids_a == ids_b and meta_a == meta_b
        np.testing.assert_allclose(prior_a, prior_b, rtol=0, atol=1e-5)
        np.testing.assert_allclose(vec_a, vec_b, rtol=0, atol=1e-5)


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no images"):
        read_corpus("folder", tmp_path / "empty")


def test_refuses_to_mix_encoders(effnet_minilm, sample_corpus, tmp_path):
    from mmrag.errors import IndexError_
    from mmrag.index.collection import IndexManifest

    out = tmp_path / "idx"
    out.mkdir()
    IndexManifest(encoder="clip", encoder_options={"model": "x"}, dim=512).save(out)
    with pytest.raises(IndexError_, match="refusing to mix"):
        build_index(sample_corpus, out, effnet_minilm, IndexConfig(progress=False))



def test_an_index_from_before_the_default_bridge_changed_keeps_its_bridge(effnet_minilm, sample_corpus, tmp_path):
    """Manifests used to leave the default bridge unnamed ({}); that default was flickr8k-train.
    Such an index is searched with flickr8k-train and refuses vectors of today's default."""
    import json

    from mmrag.errors import IndexError_
    from mmrag.index.collection import MANIFEST, IndexManifest
    from mmrag.retrieval import Searcher

    assert effnet_minilm.spec() == ("effnet-minilm", {"bridge": "flickr8k-train-v2"})  # named from now on
    out = tmp_path / "idx"
    build_index(sample_corpus, out, effnet_minilm, IndexConfig(progress=False))
    m = json.loads((out / MANIFEST).read_text())
    assert m["encoder_options"] == {"bridge": "flickr8k-train-v2"}
    m["encoder_options"] = {}  # what an index built before the change says
    (out / MANIFEST).write_text(json.dumps(m))
    assert IndexManifest.load(out).encoder_options == {"bridge": "flickr8k-train"}
    s = Searcher(out)  # the encoder comes from the manifest
    try:
        assert s.encoder.spec() == ("effnet-minilm", {"bridge": "flickr8k-train"})
        assert s.encoder.fingerprint() != effnet_minilm.fingerprint()
    finally:
        s.close()
    with pytest.raises(IndexError_, match="refusing to mix"):
        build_index(sample_corpus, out, effnet_minilm, IndexConfig(progress=False))
    # one bridge, two names (default or explicit): one fingerprint, so one relevance fit and cache
    from mmrag.encoders import create_encoder

    assert create_encoder("effnet-minilm", bridge="flickr8k-train-v2").fingerprint() == effnet_minilm.fingerprint()

KILLER = r"""
import sys
from mmrag.corpus.readers import read_corpus
from mmrag.encoders import create_encoder
from mmrag.embedding import IndexConfig, build_index
c = read_corpus("flickr8k", sys.argv[1], split="dev", limit=int(sys.argv[3]))
enc = create_encoder("effnet-minilm")
print("ready", flush=True)
build_index(c, sys.argv[2], enc, IndexConfig(batch_size=8, progress=False),
            on_progress=lambda done, total: print("batch", done, flush=True))
print("finished", flush=True)
"""


@pytest.mark.slow
def test_kill_9_then_resume_gives_complete_index(effnet_minilm, flickr8k_dir, tmp_path):
    n = 48
    out = tmp_path / "idx"
    for stop_after in (1, 3):  # kill twice, at different points
        p = subprocess.Popen([sys.executable, "-c", KILLER, str(flickr8k_dir), str(out), str(n)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
        batches = 0
        for line in p.stdout:
            if line.startswith("batch"):
                batches += 1
                if batches >= stop_after:
                    os.kill(p.pid, signal.SIGKILL)
                    break
        p.wait(timeout=60)
        assert p.returncode == -signal.SIGKILL
        col = Collection.open(out)  # consistent after the crash: every stored id is searchable
        ids = col.images.ids()
        assert len(ids) == col.images.count() >= 8 * (stop_after if stop_after == 1 else 1)
        hits = col.images.search(col.images.vectors(ids), k=1)
        assert [h[0].id for h in hits] == ids
        col.close()
    corpus = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=n)
    rep = build_index(corpus, out, effnet_minilm, IndexConfig(batch_size=8, progress=False))
    assert rep.already_indexed >= 8
    assert rep.total_images == n and rep.total_captions == 5 * n
    col = Collection.open(out)
    assert sorted(col.images.ids()) == sorted(it.id for it in corpus.items)
    # Same vectors as a clean, uninterrupted embedding of the same images.
    ref = effnet_minilm.embed_images([it.path for it in corpus.items[:8]])
    got = col.images.vectors([it.id for it in corpus.items[:8]])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    col.close()


def run_cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "mmrag.cli", *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "COLUMNS": "200"})
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.mark.slow
def test_cli_index_search_info(sample_corpus, tmp_path):
    out = tmp_path / "idx"
    r = run_cli("index", str(sample_corpus.root), "--out", str(out), "--json")
    rep = json.loads(r.stdout)
    assert rep["total_images"] == 14
    r = run_cli("search", "--index", str(out), "--text", "a cat", "-k", "3", "--json")
    hits = json.loads(r.stdout)
    assert hits[0]["id"] == "chelsea.jpg" and len(hits) == 3
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    r = run_cli("info", "--index", str(out), "--json")
    assert json.loads(r.stdout)["images"] == 14
    r = run_cli("remove", "coffee.jpg", "--index", str(out))
    assert "removed 1 images and 3 captions" in r.stdout
    r = run_cli("search", "--index", str(out), "--text", "a cup of coffee", "-k", "13", "--json")
    assert "coffee.jpg" not in [h["id"] for h in json.loads(r.stdout)]
    r = run_cli("search", "--index", str(out), "--image", str(sample_corpus.root / "coffee.jpg"),
                "--target", "captions", "-k", "50", "--json")
    assert all(h["metadata"]["image_id"] != "coffee.jpg" for h in json.loads(r.stdout))
    r = run_cli("search", "--index", str(tmp_path / "nope"), "--text", "x", check=False)
    assert r.returncode == 2 and "not an mmrag index" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("index", str(tmp_path / "empty"), "--out", str(tmp_path / "i2"), check=False)
    assert r.returncode == 2 and "no images" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_quickstart_runs_offline(tmp_path):
    env = {**os.environ, "MMRAG_CACHE": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "mmrag.cli", "quickstart"], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "14 sample photos" in p.stdout
    # the cat query finds the cat photo first
    line = next(l for l in p.stdout.splitlines() if "│ a cat" in l)
    assert line.split("│")[2].strip().startswith("chelsea.jpg"), line


def test_mapper_embeds_a_batch_in_one_call_and_reports_per_mini_batch(messy_folder, effnet_minilm):
    """The indexer's bar moves per embedding mini-batch, yet the encoder gets the whole batch in
    one call (a call per mini-batch drained its decode-ahead at every boundary); unreadable
    files count as done too."""
    from mmrag.embedding.mapper import EmbeddingMapper
    from mmrag.embedding.reader import item_records

    rows = item_records(read_corpus("folder", messy_folder).items)
    calls, done = [], []
    real = effnet_minilm.embed_images_safe

    class Counting(type(effnet_minilm)):  # the real encoder, its calls counted
        def __init__(self):
            self.__dict__.update(effnet_minilm.__dict__)

        def embed_images_safe(self, images, batch_size=32, progress=False):
            calls.append(len(images))
            return real(images, batch_size=batch_size, progress=progress)

    batch = EmbeddingMapper(Counting(), embed_batch_size=4, on_rows=done.append)(rows)
    assert calls == [len(rows)]
    assert sum(done) == len(rows) and len(done) >= len(rows) // 4, done
    bad = {r["path"].rsplit("/", 1)[-1] for r, e in zip(rows, batch.errors) if e}
    assert {"corrupt.jpg", "truncated.jpg", "notes.jpg"} <= bad
    good = [i for i, e in enumerate(batch.errors) if not e]
    assert np.allclose(np.linalg.norm(batch.img_emb[good], axis=1), 1, atol=1e-4)
