"""Crash-safe resume, deterministically: a commit fails at each step of an indexing run, the run
is resumed, and every image has all its captions.

The kill -9 test in test_indexer.py is timing based and rarely lands between a batch's two
commits. Here the crash is injected at an exact commit: the real store's ``add`` is wrapped so
that its N-th call raises before writing anything (as if the process died there); everything else
is the real indexing path. The promise guarded: captions are committed before their images (the
image rows are the batch's commit mark), so an image that is in the index always has its captions.
"""

from __future__ import annotations

import pytest

from mmrag.corpus.readers import read_corpus
from mmrag.embedding import IndexConfig, build_index
from mmrag.index.collection import Collection, caption_id
from mmrag.index.faiss_store import FaissStore

N_IMAGES, BATCH = 12, 4
STEPS = 2 * N_IMAGES // BATCH  # two commits per batch: captions, then images


class Crash(Exception):
    """The injected failure (stands for the process dying at that commit)."""


def _images_without_all_captions(index_dir, corpus) -> dict[str, int]:
    """Stored images that lack some of their captions -> how many captions they have."""
    want = {it.id: len(it.captions) for it in corpus.items}
    col = Collection.open(index_dir)
    try:
        caps = set(col.captions.ids())
        out = {}
        for id_ in col.images.ids():
            have = sum(caption_id(id_, k) in caps for k in range(want[id_]))
            if have != want[id_]:
                out[id_] = have
        return out
    finally:
        col.close()


@pytest.fixture(scope="module")
def corpus(flickr8k_dir):
    c = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=N_IMAGES)
    assert len(c.items) == N_IMAGES and all(len(it.captions) == 5 for it in c.items)
    return c


@pytest.mark.parametrize("fail_at", range(1, STEPS + 1))
def test_commit_failing_at_each_step_then_resume(fail_at, corpus, effnet_minilm, tmp_path, monkeypatch):
    real_add = FaissStore.add
    calls = {"n": 0}

    def add(self, ids, vectors, metadata=None):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Crash(f"injected failure at commit {fail_at}")
        return real_add(self, ids, vectors, metadata)

    out = tmp_path / "idx"
    cfg = IndexConfig(batch_size=BATCH, progress=False)
    monkeypatch.setattr(FaissStore, "add", add)
    with pytest.raises(Crash):
        build_index(corpus, out, effnet_minilm, cfg)
    monkeypatch.setattr(FaissStore, "add", real_add)

    # After the crash: every stored image already has all its captions.
    assert _images_without_all_captions(out, corpus) == {}
    col = Collection.open(out)
    n_before = col.images.count()
    col.close()
    assert n_before == BATCH * ((fail_at - 1) // 2)  # the batches whose image commit happened

    rep = build_index(corpus, out, effnet_minilm, cfg)
    assert rep.already_indexed == n_before and rep.added == N_IMAGES - n_before
    assert rep.total_images == N_IMAGES and rep.total_captions == 5 * N_IMAGES
    assert _images_without_all_captions(out, corpus) == {}
