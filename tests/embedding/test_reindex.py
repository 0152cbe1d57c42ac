"""Re-indexing a folder that changed, one writer per index, caption caps, skip accounting, and
a new user's run of the CLI over a messy folder (index -> search -> change files -> re-index -> info)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrag.corpus.readers import read_corpus
from mmrag.embedding import IndexConfig, build_index
from mmrag.embedding.reader import MAX_CAPTION_CHARS
from mmrag.errors import IndexError_
from mmrag.index.collection import Collection, write_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def coco_images(data_dir) -> list[Path]:
    imgs = sorted((data_dir / "coco_sample" / "images").glob("*.jpg"))
    if len(imgs) < 8:
        pytest.skip("coco_sample images not found")
    return imgs


@pytest.fixture
def photos(coco_images, tmp_path) -> Path:
    """Five COCO photos, each with a one-line sidecar caption."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, src in zip("abcde", coco_images):
        shutil.copy(src, root / f"{name}.jpg")
        (root / f"{name}.txt").write_text(f"photo {name}\nsecond caption of {name}\n")
    return root


def _cfg(**kw) -> IndexConfig:
    return IndexConfig(batch_size=4, progress=False, **kw)


def _stored(idx: Path) -> tuple[dict, dict]:
    col = Collection.open(idx)
    try:
        ids = sorted(col.images.ids())
        meta = dict(zip(ids, col.images.get(ids)))
        vecs = dict(zip(ids, col.images.vectors(ids)))
        caps = {c: m for c, m in zip(col.captions.ids(), col.captions.get(col.captions.ids()))}
        return {"meta": meta, "vecs": vecs}, caps
    finally:
        col.close()


def test_reindex_replaces_changed_and_removes_deleted(effnet_minilm, photos, coco_images, tmp_path):
    idx = tmp_path / "idx"
    first = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert first.added == 5
    before, _ = _stored(idx)

    shutil.copy(coco_images[6], photos / "a.jpg")          # another photo under the same name
    (photos / "a.txt").write_text("a new caption\n")       # fewer captions than before
    (photos / "b.jpg").unlink()
    (photos / "b.txt").unlink()
    st = (photos / "c.jpg").stat()                          # same bytes, newer mtime: no re-embed
    os.utime(photos / "c.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    rep = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    d = rep.as_dict()
    assert (d["added"], d["updated"], d["removed"], d["already_indexed"]) == (0, 1, 1, 3), d
    assert d["total_images"] == 4
    after, caps = _stored(idx)
    assert "b.jpg" not in after["meta"] and not any(c.startswith("b.jpg#") for c in caps)
    new_a = effnet_minilm.embed_images([coco_images[6]])[0]
    np.testing.assert_allclose(after["vecs"]["a.jpg"], new_a, atol=1e-5)
    assert after["meta"]["a.jpg"]["sha256"] != before["meta"]["a.jpg"]["sha256"]
    assert [c for c in caps if c.startswith("a.jpg#")] == ["a.jpg#0"]  # old second caption gone
    assert caps["a.jpg#0"]["text"] == "a new caption"
    # c.jpg: vector untouched, stored mtime refreshed (the next run does not hash it again)
    np.testing.assert_array_equal(after["vecs"]["c.jpg"], before["vecs"]["c.jpg"])
    assert after["meta"]["c.jpg"]["file_mtime_ns"] == (photos / "c.jpg").stat().st_mtime_ns
    again = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (again.added, again.updated, again.removed, again.already_indexed) == (0, 0, 0, 4)


def test_reindex_prunes_only_what_is_gone(effnet_minilm, photos, coco_images, tmp_path):
    """--limit runs and --no-prune keep the rest; a moved file is indexed under its new name."""
    idx = tmp_path / "idx"
    build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    rep = build_index(read_corpus("folder", photos, limit=2), idx, effnet_minilm, _cfg())
    assert (rep.removed, rep.total_images) == (0, 5)

    (photos / "e.jpg").rename(photos / "moved.jpg")
    kept = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg(prune=False))
    # without pruning the old entry stays, so its bytes under the new name are a duplicate
    assert (kept.removed, kept.total_images, len(kept.duplicates)) == (0, 5, 1)
    moved = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (moved.removed, moved.added, moved.total_images) == (1, 1, 5)
    col = Collection.open(idx)
    assert "moved.jpg" in col.images and "e.jpg" not in col.images
    col.close()

    # another source of the same index is never pruned by this one
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(coco_images[7], other / "x.jpg")
    build_index(read_corpus("folder", other), idx, effnet_minilm, _cfg())
    (other / "x.jpg").unlink()
    shutil.copy(coco_images[7], other / "y.jpg")
    r = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (r.removed, r.total_images) == (0, 6)


def test_reindex_follows_an_edited_caption(effnet_minilm, photos, tmp_path):
    """Only the sidecar .txt changed (the image's size and mtime did not): the stored captions,
    the caption vectors and the keyword text follow the new file, and nothing of the old stays."""
    from mmrag.retrieval import Searcher

    idx = tmp_path / "idx"
    build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    (photos / "a.txt").write_text("a giraffe beside a fence\n")
    rep = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (rep.added, rep.updated, rep.already_indexed) == (0, 1, 4), rep.as_dict()
    after, caps = _stored(idx)
    assert after["meta"]["a.jpg"]["captions"] == ["a giraffe beside a fence"]
    assert [c for c in caps if c.startswith("a.jpg#")] == ["a.jpg#0"]
    assert caps["a.jpg#0"]["text"] == "a giraffe beside a fence"
    s = Searcher(idx, encoder=effnet_minilm)
    try:
        assert [h.id for h in s.search(text="giraffe", k=3, mode="keyword")] == ["a.jpg"]
        assert "a.jpg" not in [h.id for h in s.search(text="second caption", k=5, mode="keyword")]
    finally:
        s.collection.close()
    again = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (again.updated, again.already_indexed) == (0, 5)


def test_reindex_drops_an_image_whose_file_became_empty(effnet_minilm, photos, tmp_path):
    """A file emptied in place is skipped by the reader; its old vector must go with it rather
    than keep answering searches for bytes that are no longer there."""
    idx = tmp_path / "idx"
    build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    (photos / "b.jpg").write_bytes(b"")
    rep = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    assert (rep.removed, rep.total_images) == (1, 4), rep.as_dict()
    assert any("b.jpg" in s["source"] and "empty" in s["reason"] for s in rep.as_dict()["skipped_reasons"])
    after, caps = _stored(idx)
    assert "b.jpg" not in after["meta"] and not any(c.startswith("b.jpg#") for c in caps)


def _hold_lock(idx: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the index's write lock for ``seconds`` (says 'held' once it has it)."""
    code = ("import sys, time\nfrom mmrag.index.collection import write_lock\n"
            "with write_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(idx), str(seconds)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_refuses_or_waits(effnet_minilm, photos, tmp_path):
    idx = tmp_path / "idx"
    corpus = read_corpus("folder", photos, limit=2)
    with write_lock(idx):
        with pytest.raises(IndexError_, match=rf"being written by another process \(pid {os.getpid()}\).*--wait"):
            build_index(corpus, idx, effnet_minilm, _cfg())
    assert not (idx / "manifest.json").exists()  # the refused writer wrote nothing
    assert build_index(corpus, idx, effnet_minilm, _cfg()).added == 2  # the lock went with the block

    holder = _hold_lock(idx, 120)
    try:
        for args in (["index", photos, "--out", idx], ["remove", "a.jpg", "--index", idx]):
            # wide COLUMNS: rich wraps stderr at the terminal width (how errors wrap is not this test's concern)
            r = subprocess.run([sys.executable, "-m", "mmrag.cli", *map(str, args)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
                               capture_output=True, text=True)
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 2 and len(lines) == 1, r.stderr
            assert lines[0].startswith("error:") and f"pid {holder.pid}" in lines[0], r.stderr
    finally:
        holder.kill()
        holder.wait()
    col = Collection.open(idx)
    assert col.images.count() == 2  # neither refused writer changed anything
    col.close()

    holder = _hold_lock(idx, 3)
    t0 = time.monotonic()
    rep = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg(wait=True))  # queues behind it
    assert holder.poll() is not None, "build_index(wait=True) ran while the lock was held"
    assert holder.wait() == 0 and time.monotonic() - t0 > 1 and rep.added == 3


def _waiting_on_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked waiting for a flock (Linux: a '->' line in /proc/locks)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/locks to see a process waiting for the index lock")
    return any("->" in ln and "FLOCK" in ln and ln.split()[-4] == str(pid) for ln in lines)


def test_ctrl_c_says_how_to_resume(effnet_minilm, photos, tmp_path):
    """Ctrl-C (SIGINT) during `mmrag index`: exit 130 with one line saying the committed work is
    kept and how to resume (typer's own handling exits 130 silently), and the rerun completes."""
    import signal

    idx = tmp_path / "idx"
    holder = _hold_lock(idx, 120)  # the run waits inside build_index: a deterministic point to interrupt
    try:
        p = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "index", str(photos), "--out", str(idx), "--wait"],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not _waiting_on_lock(p.pid):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert lines[-1].startswith("interrupted:") and "run the same command again to resume" in lines[-1], stderr
    assert build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg()).total_images == 5


def test_an_unknown_store_leaves_no_index_behind(effnet_minilm, photos, tmp_path):
    """`--store bogus` is refused without writing a manifest that names it: the next run into
    the same folder with a real store works (it used to fail with 'unknown vector store' forever)."""
    from mmrag.errors import MmragError

    idx = tmp_path / "idx"
    corpus = read_corpus("folder", photos, limit=2)
    with pytest.raises(MmragError, match="unknown vector store 'bogus'"):
        build_index(corpus, idx, effnet_minilm, _cfg(backend="bogus"))
    assert not (idx / "manifest.json").exists()
    assert build_index(corpus, idx, effnet_minilm, _cfg()).added == 2


def test_giant_caption_is_capped_with_a_warning(effnet_minilm, photos, tmp_path):
    (photos / "a.txt").write_text("word " * 400_000 + "\nshort one\n")  # one 2 MB line
    (photos / "b.txt").write_text("".join(f"caption {i}\n" for i in range(500)))
    idx = tmp_path / "idx"
    rep = build_index(read_corpus("folder", photos), idx, effnet_minilm, _cfg())
    warned = {Path(s).name: r for s, r in rep.warnings}
    assert set(warned) == {"a.txt", "b.txt"} and rep.skipped == [], rep.warnings
    assert "longer than 1000 characters" in warned["a.txt"] and "first 100 of 500" in warned["b.txt"]
    assert rep.added == 5
    stored, caps = _stored(idx)
    assert max(len(c) for c in stored["meta"]["a.jpg"]["captions"]) == MAX_CAPTION_CHARS
    assert len(stored["meta"]["b.jpg"]["captions"]) == 100
    assert sum(1 for c in caps if c.startswith("b.jpg#")) == 100
    size = sum(f.stat().st_size for f in idx.rglob("*") if f.is_file())
    assert size < 2_000_000, size  # the 2 MB caption is not stored (twice)


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "mmrag.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_new_user_on_a_messy_folder(coco_images, tmp_path):
    """What a new user does, through the real CLI: index a folder with broken files, a duplicate
    and a giant caption; search; overwrite one photo and delete another; index again; info."""
    root = tmp_path / "photos"
    root.mkdir()
    for i, src in enumerate(coco_images[:6]):
        shutil.copy(src, root / f"p{i}.jpg")
    data = coco_images[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[:200])               # cut off in the header
    (root / "notes.jpg").write_text("this is a text file, not a photo")
    (root / "empty.jpg").write_bytes(b"")
    shutil.copy(coco_images[1], root / "copy_of_p1.jpg")
    (root / "p2.txt").write_text("x" * 3_000_000)                   # a giant caption
    (root / "p3.txt").write_bytes(b"caf\xe9 au lait\n")              # not UTF-8: image kept
    idx = tmp_path / "idx"

    r = _cli("index", root, "--out", idx, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["added"], d["duplicates"], d["skipped"], d["warnings"]) == (6, 1, 3, 2), d
    by_name = {Path(s["source"]).name: s["reason"] for s in d["skipped_reasons"]}
    assert set(by_name) == {"truncated.jpg", "notes.jpg", "empty.jpg"}
    assert all(str(root) not in reason for reason in by_name.values()), by_name  # path not repeated

    r = _cli("search", "--index", idx, "--text", "a photo", "-k", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) < 6_000 and "xxxx" in r.stdout  # the giant caption shown cut, not whole

    shutil.copy(coco_images[7], root / "p4.jpg")                    # overwritten with another photo
    (root / "p5.jpg").unlink()
    r = _cli("index", root, "--out", idx, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "+0 images" in r.stdout and "1 updated, 1 removed; 4 unchanged" in r.stdout, r.stdout

    r = _cli("search", "--index", idx, "--image", coco_images[7], "-k", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] == "p4.jpg", r.stdout + r.stderr
    r = _cli("info", "--index", idx, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["images"], info["skipped"], info["duplicates"], info["warnings"]) == (5, 3, 1, 2), info
    r = _cli("index", tmp_path / "nowhere", "--out", idx, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
