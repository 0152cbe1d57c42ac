"""Every task runs on any registered encoder: each verb end to end on the tiny random CLIP export.

Function, not quality (the weights are random): the task runs from the command line, the vectors
that reach its store are CLIP's (dimension 32, the index's manifest names ``clip``), and it
returns results. Before the redesign every task but ``search`` silently used ``effnet-minilm``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the clip encoder runs on ONNX Runtime")

from mmrag.cli import app  # noqa: E402

pytestmark = pytest.mark.any_encoder
CLIP_DIM = 32  # the tiny export's projection_dim; MiniLM's space is 384-d
N_IMAGES = 12


def run(*args: str) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"mmrag {' '.join(map(str, args))} -> {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res.stdout


@pytest.fixture(scope="module")
def clip_encoder(tiny_clip_dir):
    from mmrag.encoders import create_encoder

    return create_encoder("clip", model=str(tiny_clip_dir))


@pytest.fixture(scope="module")
def coco(data_dir):
    from mmrag.corpus.readers import read_corpus

    path = data_dir / "coco_sample" / "captions_val2017_sample.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path, read_corpus("coco", path, limit=N_IMAGES)


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory, tiny_clip_dir, coco):
    """`mmrag index` of 12 captioned COCO photos with `--encoder clip`."""
    path, _ = coco
    idx = tmp_path_factory.mktemp("clip") / "idx"
    run("index", path, "--kind", "coco", "--limit", N_IMAGES, "--out", idx, "--encoder", "clip",
        "--encoder-model", tiny_clip_dir)
    return idx


def _stored(idx: Path, store: str = "images"):
    from mmrag.index.collection import Collection

    col = Collection.open(idx)
    try:
        s = col.store(store)
        ids = s.ids()
        return col.manifest, ids, s.vectors(ids)
    finally:
        col.close()


def test_search(clip_index, clip_encoder, coco):
    manifest, ids, vecs = _stored(clip_index)
    assert manifest.encoder == "clip" and manifest.dim == CLIP_DIM and vecs.shape == (N_IMAGES, CLIP_DIM)
    _, corpus = coco
    first = corpus.items[0]
    want = clip_encoder.embed_images([first.path])[0]
    np.testing.assert_allclose(vecs[ids.index(first.id)], want, atol=1e-5)  # CLIP's own vector was stored
    hits = json.loads(run("search", "--index", clip_index, "--image", first.path, "-k", 3, "--json"))
    assert hits[0]["id"] == first.id and hits[0]["score"] > 0.999
    assert len(json.loads(run("search", "--index", clip_index, "--text", "a photo", "-k", 5, "--json"))) == 5


def test_caption(clip_index, clip_encoder, coco, tmp_path):
    """mRAG-gim captioning with a datastore embedded by CLIP (the index's encoder)."""
    from mmrag.retrieval import CaptionDatastore

    _, corpus = coco
    ds = CaptionDatastore.from_corpus(corpus, clip_encoder, cache=False)
    assert ds.dim == CLIP_DIM and ds.info["encoder"] == clip_encoder.fingerprint()
    ds_file = ds.save(tmp_path / "ds.npz")
    img = corpus.items[3].path
    res = CliRunner().invoke(app, ["caption", str(img), "--index", str(clip_index), "--datastore", str(ds_file),
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert "built with encoder" not in res.stderr  # the datastore matches the index's encoder
    (r,) = json.loads(res.stdout)
    assert not r.get("error") and r["caption"] in ds.texts and r["evidence"]
    # the evidence is the datastore's nearest captions to CLIP's vector of the image
    best = ds.search(clip_encoder.embed_images([img]), k=1)[0][0]
    assert r["evidence"][0]["text"] == best.text


def test_chat(clip_index, tmp_path):
    out = tmp_path / "chat.json"
    run("chat", "--index", clip_index, "-d", "a photo of something", "--rounds", 1, "-a", "yes", "--json", out)
    transcript = json.loads(out.read_text())
    turns = transcript["turns"]
    assert len(turns) >= 2 and all(t["hits"] for t in turns) and turns[0]["question"]
    manifest, ids, _ = _stored(clip_index)
    assert manifest.encoder == "clip" and {h["id"] for t in turns for h in t["hits"]} <= set(ids)


def test_ask(tmp_path, vqa_rad_dir, clip_encoder, tiny_clip_dir):
    """RIR over a knowledge index built with CLIP (a few VQA-RAD train images with their QA pairs)."""
    from mmrag.corpus.vqa_rad import VQADataset, read_vqa_rad
    from mmrag.tasks.rir import index_vqa

    vqa = vqa_rad_dir
    train = read_vqa_rad(vqa, split="train")
    keep = list(dict.fromkeys(q.image_id for q in train.questions))[:8]
    small = VQADataset("vqa-rad-small", [q for q in train.questions if q.image_id in keep])
    kidx = tmp_path / "knowledge"
    index_vqa(small, kidx, clip_encoder, progress=False)
    manifest, _, vecs = _stored(kidx)
    assert manifest.encoder == "clip" and vecs.shape[1] == CLIP_DIM
    query = small.questions[0]
    d = json.loads(run("ask", "--index", kidx, query.image, query.question, "--json"))
    assert str(d["answer"]).strip(), d
    assert d["evidence"] and all(e["id"] in keep for e in d["evidence"]), d  # neighbours from the CLIP index


def test_compose(tmp_path, data_dir, tiny_clip_dir):
    """ImageRef-VL compose: documents ingested with CLIP (chunks and figures), answered from the index."""
    chapter = data_dir / "d2l" / "chapter_attention-mechanisms-and-transformers"
    if not chapter.is_dir():
        pytest.skip("the d2l chapters are absent")
    docs = tmp_path / "docs"
    docs.mkdir()
    for md in sorted(chapter.glob("*.md"))[:2]:  # two sections keep the ingest quick
        (docs / md.name).write_text(md.read_text(encoding="utf-8"), encoding="utf-8")
    # the figures are referenced as ../img/x: give them the same relative place
    (tmp_path / "img").symlink_to(data_dir / "d2l" / "img")
    idx = tmp_path / "docidx"
    run("compose", "how does attention pool values?", "--docs", docs, "--ingest", idx, "--encoder", "clip",
        "--encoder-model", tiny_clip_dir, "--json")
    manifest, chunk_ids, chunk_vecs = _stored(idx, "chunks")
    assert manifest.encoder == "clip" and chunk_ids and chunk_vecs.shape[1] == CLIP_DIM
    d = json.loads(run("compose", "how does attention pool values?", "--index", idx, "--json"))
    assert d["markdown"].strip() and d["sources"]
    refs = re.findall(r"IMAGE_(\d+)", d["markdown"])
    assert all(0 <= int(k) < len(d["images"]) + 1 for k in refs)
