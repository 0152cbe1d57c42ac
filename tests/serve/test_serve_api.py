"""The HTTP service on real data: a small Flickr8k index built here, the real app (FastAPI
TestClient, and uvicorn on loopback where a real socket matters), the real encoder."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install fastapi uvicorn python-multipart)")
pytest.importorskip("uvicorn", reason="the service needs uvicorn")
pytest.importorskip("multipart", reason="uploads need python-multipart")
pytest.importorskip("prometheus_client", reason="/metrics needs prometheus-client")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from serve_helpers import build_serve_index, running_server  # noqa: E402

from mmrag.serve import ServeConfig, create_app  # noqa: E402
from mmrag.serve.batching import MicroBatcher  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, flickr8k_dir, effnet_minilm):
    """(app, client, items): one app over a 20-image index, shared by the module's tests."""
    idx, items = build_serve_index(flickr8k_dir, tmp_path_factory.mktemp("serve") / "idx", effnet_minilm)
    app = create_app(idx, ServeConfig(max_upload_bytes=2 * 1024 * 1024, chat_max_sessions=3),
                     encoder=effnet_minilm)
    client = TestClient(app)  # no lifespan: the module closes the service itself
    yield app, client, items
    app.state.mmrag.service.close()


def _jpeg(item) -> bytes:
    return item.path.read_bytes()


def test_health_openapi_and_page(served):
    _, c, items = served
    h = c.get("/healthz").json()
    assert h["status"] == "ok" and h["images"] == len(items) and h["captions"] == 5 * len(items)
    assert h["features"]["search"] and h["features"]["caption"] and h["features"]["chat"]
    assert h["features"]["url_fetch"] is False
    paths = c.get("/openapi.json").json()["paths"]
    for p in ("/api/search", "/api/search/upload", "/knn-service", "/api/caption", "/v1/chat/completions",
              "/api/chat/sessions", "/api/chat/sessions/{session_id}/answer", "/images/{image_id}"):
        assert p in paths, p
    page = c.get("/")
    assert page.status_code == 200 and "<title>mmrag</title>" in page.text
    assert c.get("/static/app.js").status_code == 200


def test_text_search_matches_the_searcher_and_finds_the_described_image(served):
    app, c, items = served
    searcher = app.state.mmrag.service.searcher
    found = 0
    for it in items[:8]:
        r = c.post("/api/search", json={"text": it.captions[0], "k": 5})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        direct = searcher.search(text=it.captions[0], k=5, mode="auto")  # the API default
        assert [x["id"] for x in res] == [h.id for h in direct]  # batched path == direct path
        assert np.allclose([x["score"] for x in res], [h.score for h in direct], atol=1e-5)
        assert all(a["score"] >= b["score"] for a, b in zip(res, res[1:]))
        found += it.id in [x["id"] for x in res]
        assert "path" not in res[0]["metadata"] and "sha256" not in res[0]["metadata"]  # no server paths
    assert found >= 5, f"only {found}/8 images found in the top 5 by one of their own captions"
    r = c.get("/api/search", params={"q": items[0].captions[1], "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_image_upload_finds_itself_and_weighting_interpolates(served):
    _, c, items = served
    it = items[3]
    r = c.post("/api/search/upload", files={"image": ("q.jpg", _jpeg(it), "image/jpeg")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["id"] == it.id and res[0]["score"] > 0.99 and len(res) == 4
    text = "people on a snowy mountain"
    both = {}
    for w in ("0", "1", "0.5"):
        rr = c.post("/api/search/upload", files={"image": ("q.jpg", _jpeg(it), "image/jpeg")},
                    data={"k": "20", "text": text, "weight": w})
        both[w] = [x["id"] for x in rr.json()["results"]]
    # weighting is a vector-mode notion (a text-only query defaults to hybrid search)
    only_text = [x["id"] for x in c.post("/api/search", json={"text": text, "k": 20, "mode": "vector"}).json()["results"]]
    only_image = [x["id"] for x in c.post("/api/search/upload", files={"image": ("q.jpg", _jpeg(it), "image/jpeg")},
                                          data={"k": "20"}).json()["results"]]
    assert both["1"] == only_text and both["0"] == only_image
    # JSON with base64 and with a data: URL give the same ranking as the upload
    b64 = base64.b64encode(_jpeg(it)).decode()
    for image in (b64, "data:image/jpeg;base64," + b64):
        rj = c.post("/api/search", json={"image": image, "k": 20}).json()["results"]
        assert [x["id"] for x in rj] == only_image
    # an indexed image as the query: by id
    rid = c.post("/api/search", json={"image_id": it.id, "k": 2}).json()["results"]
    assert rid[0]["id"] == it.id


def test_image_network_runs_on_image_threads(served):
    """``image_threads`` (default 1) reaches the image network's ONNX Runtime session, so image
    searches leave the other core to text queries."""
    app, c, items = served
    assert app.state.mmrag.service.config.image_threads == 1
    r = c.post("/api/search/upload", files={"image": ("q.jpg", _jpeg(items[0]), "image/jpeg")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    featurizer = app.state.mmrag.service.encoder.raw.featurizer
    if featurizer.backend != "onnx":
        pytest.skip("the image network runs on torch here")
    assert featurizer.session.get_session_options().intra_op_num_threads == 1


def test_filters_k_and_caption_target(served):
    _, c, items = served
    r = c.post("/api/search", json={"text": "a dog", "k": 50, "filter": {"split": "dev"}})
    res = r.json()["results"]
    assert len(res) == 10 and {x["metadata"]["split"] for x in res} == {"dev"}
    r = c.post("/api/search", json={"text": "a dog", "k": 5, "filter": {"split": ["dev", "test"]}})
    assert len(r.json()["results"]) == 5
    assert c.post("/api/search", json={"text": "a dog", "filter": {"split": "train"}}).json()["results"] == []
    assert c.post("/api/search", json={"text": "a dog", "k": 1000}).status_code == 400  # above max_k
    # image -> captions (hubness-corrected, as Searcher does): the best caption is the image's own
    own = 0
    for it in items[:5]:
        r = c.post("/api/search/upload", files={"image": ("q.jpg", _jpeg(it), "image/jpeg")},
                   data={"k": "5", "target": "captions"})
        caps = r.json()["results"]
        assert len(caps) == 5 and all(x["caption"] and "#" in x["id"] for x in caps)
        own += caps[0]["image_id"] == it.id
    direct = c.app.state.mmrag.service.searcher.search(image=items[4].path, k=5, target="captions")
    assert [x["id"] for x in caps] == [h.id for h in direct]
    assert own >= 4, f"own caption ranked first for only {own}/5 images"


def test_knn_service_is_clip_retrieval_compatible(served):
    _, c, items = served
    r = c.post("/knn-service", json={"text": items[0].captions[0], "modality": "image", "num_images": 5,
                                     "indice_name": "idx", "use_safety_model": False, "deduplicate": True})
    assert r.status_code == 200, r.text
    res = r.json()
    assert 1 <= len(res) <= 5
    assert set(res[0]) >= {"id", "similarity", "caption", "url"} and res[0]["url"].startswith("http")
    img = base64.b64encode(_jpeg(items[2])).decode()
    r = c.post("/knn-service", json={"image": img, "modality": "image", "num_images": 3})
    assert r.json()[0]["id"] == items[2].id
    r = c.post("/knn-service", json={"image": img, "modality": "text", "num_images": 5})
    assert all("#" in x["id"] for x in r.json())  # caption ids
    vec = c.app.state.mmrag.service.stored_vector(items[4].id).tolist()
    assert c.post("/knn-service", json={"embedding_input": vec, "modality": "image",
                                        "num_images": 1}).json()[0]["id"] == items[4].id
    assert c.post("/knn-service", json={"embedding_input": [0.1, 0.2], "modality": "image",
                                        "num_images": 1}).status_code == 400
    r = c.post("/knn-service", json={"image_url": "http://127.0.0.1:9/x.jpg", "modality": "image", "num_images": 1})
    assert r.status_code == 400 and "disabled" in r.json()["detail"]  # URL fetching is off by default
    assert c.get("/indices-list").json() == ["idx"]
    meta = c.post("/metadata", json={"ids": [items[0].id, "nope"]}).json()  # clip_back's list of {id, metadata}
    assert [m["id"] for m in meta] == [items[0].id] and meta[0]["metadata"]["caption"] == items[0].captions[0]


def test_images_by_id_only(served):
    _, c, items = served
    it = items[1]
    r = c.get(f"/images/{it.id}")
    assert r.status_code == 200 and r.content == it.path.read_bytes()
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"
    t = c.get(f"/thumbnails/{it.id}")
    im = Image.open(io.BytesIO(t.content))
    assert t.headers["content-type"] == "image/jpeg" and max(im.size) <= 256
    assert c.get(f"/api/images/{it.id}").json()["metadata"]["captions"] == it.captions
    for bad in ("/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd", "/images/../../etc/passwd",
                f"/images/{it.path}", "/thumbnails/..%2Fmanifest.json", "/images/nope.jpg",
                "/images/%2e%2e/%2e%2e/etc/passwd"):
        r = c.get(bad)
        assert r.status_code == 404, (bad, r.status_code)
        assert b"root:" not in r.content


def test_hardening_uploads_and_json(served, tmp_path):
    _, c, items = served

    def upload(data: bytes, name="x.jpg", ctype="image/jpeg"):
        return c.post("/api/search/upload", files={"image": (name, data, ctype)})

    big = upload(b"\xff\xd8\xff" + b"0" * (3 * 1024 * 1024))  # limit is 2 MiB here
    assert big.status_code == 413 and "limit" in big.json()["detail"]

    def chunks():  # no Content-Length: the limit must still hold while streaming
        for _ in range(40):
            yield b"x" * 100_000

    streamed = c.post("/api/search/upload", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert streamed.status_code == 413
    r = upload(b"just some text, not a picture", "notes.txt", "text/plain")
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    assert r.json()["detail"] == "unreadable image: the uploaded file: not an image or unsupported format"
    assert upload(b"").status_code == 400
    trunc = upload(_jpeg(items[0])[:2000])
    assert trunc.status_code == 400 and "unreadable image" in trunc.json()["detail"]
    # decompression bomb: 10,000 x 10,000 pixels in a ~15 kB PNG -> refused before decoding
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 2 * 1024 * 1024
    bomb = upload(buf.getvalue(), "bomb.png", "image/png")
    assert bomb.status_code == 400 and "too large" in bomb.json()["detail"]
    bad = c.post("/api/search", content=b'{"text": "a dog", ', headers={"content-type": "application/json"})
    assert bad.status_code == 422
    assert c.post("/api/search", json={"text": "a dog", "k": "many"}).status_code == 422
    assert c.post("/api/search", json={"text": "a dog", "colour": "red"}).status_code == 422
    assert c.post("/api/search", json={}).status_code == 400
    assert c.post("/api/search", json={"image": "not base64!!"}).status_code == 400
    assert c.post("/api/search", json={"text": "x", "filter": {"a\"b": 1}}).status_code == 400
    assert c.get("/healthz").status_code == 200  # still serving


@pytest.mark.parametrize("path,body,field", [
    ("/api/search", '{"text": "dog", "k": NaN}', "k"),
    ("/api/search", '{"text": "dog", "image_id": "x", "weight": Infinity}', "weight"),
    ("/api/search", '{"text": "dog", "image_id": "x", "weight": -Infinity}', "weight"),
    ("/api/search", '{"text": "dog", "weight": NaN}', "weight"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "dog"}], "temperature": NaN}', "temperature"),
    ("/api/chat/sessions", '{"description": "a dog", "k": Infinity}', "k"),
    ("/knn-service", '{"text": "dog", "num_images": NaN}', "num_images"),
])
def test_nan_and_infinity_are_a_readable_422(served, path, body, field):
    """Python's JSON parser takes NaN/Infinity; the 422 must still be JSON (it was an HTTP 500)."""
    _, c, _ = served
    r = c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    d = r.json()
    message = d["error"]["message"] if path.startswith("/v1/") else d["message"]
    assert message.startswith(field + ":"), message
    assert any(err.get("input") in ("NaN", "Infinity", "-Infinity") for err in d["detail"]), d


def test_knn_embedding_input_must_be_finite(served):
    _, c, items = served
    vec = c.app.state.mmrag.service.stored_vector(items[0].id).tolist()
    body = json.dumps({"embedding_input": vec, "num_images": 1}).replace(str(vec[0]), "NaN", 1)
    r = c.post("/knn-service", content=body)
    assert r.status_code == 400 and "finite" in r.json()["detail"]


def test_caption_with_evidence(served):
    _, c, items = served
    it = items[7]
    r = c.post("/api/caption", files={"image": ("q.jpg", _jpeg(it), "image/jpeg")})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["caption"] and d["generator"].startswith("consensus") and len(d["evidence"]) >= 5
    all_caps = {c_ for x in items for c_ in x.captions}
    assert d["caption"] in all_caps  # consensus picks one of the retrieved captions
    r = c.post("/api/caption", data={"image_id": it.id})
    d = r.json()
    assert d["caption"] not in it.captions and all(e["image_id"] != it.id for e in d["evidence"])
    assert c.post("/api/caption", data={"image_id": "nope"}).status_code == 404
    assert c.post("/api/caption", data={}).status_code == 400


def test_chat_session_resource(served):
    _, c, items = served
    r = c.post("/api/chat/sessions", json={"description": "a dog running on grass", "k": 5})
    assert r.status_code == 201, r.text
    t0 = r.json()
    sid = t0["session_id"]
    assert t0["round"] == 0 and len(t0["hits"]) == 5 and t0["hits"][0]["thumbnail_url"].startswith("/thumbnails/")
    assert t0["question"], "the split questioner asks about the candidates' captions"
    assert t0["question_topic"] or len(t0["question_options"]) == 2  # yes/no, or either-or with two options
    t1 = c.post(f"/api/chat/sessions/{sid}/answer", json={"answer": "yes"}).json()
    assert t1["round"] == 1 and t1["query"] != t0["query"]
    d = c.get(f"/api/chat/sessions/{sid}").json()
    assert len(d["turns"]) == 2 and d["dialog"]["rounds"][0]["answer"] == "yes"
    assert c.post(f"/api/chat/sessions/{sid}/answer", json={"answer": ""}).status_code == 422
    assert c.delete(f"/api/chat/sessions/{sid}").status_code == 204
    assert c.post(f"/api/chat/sessions/{sid}/answer", json={"answer": "no"}).status_code == 404
    # at most chat_max_sessions (3) at once
    sids = [c.post("/api/chat/sessions", json={"description": f"a man {i}"}).json()["session_id"] for i in range(3)]
    assert c.post("/api/chat/sessions", json={"description": "one too many"}).status_code == 429
    for s in sids:
        c.delete(f"/api/chat/sessions/{s}")


def test_chat_sessions_expire():
    from mmrag.serve.routes.chat import ChatSessions
    from mmrag.serve.service import NotFoundError

    seen = []
    s = ChatSessions(max_sessions=2, ttl_s=0.2, on_change=seen.append)
    a = s.add("A")
    assert s.get(a) == "A"
    time.sleep(0.3)
    with pytest.raises(NotFoundError, match="expired"):
        s.get(a)
    s.add("B"), s.add("C")  # the expired one no longer counts
    assert len(s) == 2 and seen[-1] == 2


def test_openai_facade(served):
    _, c, items = served
    all_caps = {c_ for x in items for c_ in x.captions}
    msg = {"role": "user", "content": "a dog playing in the water"}
    r = c.post("/v1/chat/completions", json={"model": "mmrag", "messages": [msg]})
    assert r.status_code == 200, r.text
    d = r.json()
    answer = d["choices"][0]["message"]["content"]
    assert d["object"] == "chat.completion" and answer in all_caps and d["mmrag"]["evidence"]
    # streamed: the same answer in SSE chunks, ending with [DONE]
    with c.stream("POST", "/v1/chat/completions", json={"model": "mmrag-consensus", "messages": [msg],
                                                         "stream": True}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "") for ln in lines[:-1])
    assert text == answer
    e = c.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [msg]})
    assert e.status_code == 404 and "unknown model" in e.json()["error"]["message"]
    e = c.post("/v1/chat/completions", json={"model": "mmrag-openai", "messages": [msg]})
    assert e.status_code == 503 and "base_url" in e.json()["error"]["message"]  # never calls itself
    assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 422
    assert {m["id"] for m in c.get("/v1/models").json()["data"]} >= {"mmrag", "mmrag-consensus", "mmrag-local"}
    # an image that is not one: the message names the client's upload, never the reader's "<bytes>"
    not_image = "data:image/jpeg;base64," + base64.b64encode(b"hello, not a picture").decode()
    e = c.post("/v1/chat/completions", json={"model": "mmrag", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": not_image}}]}]})
    assert e.status_code == 400, e.text
    assert e.json()["error"]["message"] == "unreadable image: the uploaded file: not an image or unsupported format"


def test_openai_generator_talks_to_the_real_server(served):
    """mmrag's own ``openai`` generator against this server on loopback (real HTTP)."""
    from mmrag.generators import GenerationRequest, create_generator

    app, _, items = served
    all_caps = {c_ for x in items for c_ in x.captions}
    with running_server(app) as base:
        gen = create_generator("openai", base_url=base + "/v1", model="mmrag-consensus", retries=0)
        res = gen.generate(GenerationRequest.from_prompt("two dogs playing"))
        assert res.text in all_caps and res.raw["mmrag"]["evidence"]
        # an image attached by the generator (data: URL) drives the retrieval
        it = items[6]
        res = gen.generate(GenerationRequest.from_prompt("what is shown?", images=[it.path.read_bytes()]))
        assert res.raw["mmrag"]["evidence"][0]["id"] == it.id and res.text in all_caps


def test_local_generator_through_the_facade(served):
    _, c, _ = served
    r = c.post("/v1/chat/completions", json={"model": "mmrag-local", "max_tokens": 24,
                                             "messages": [{"role": "user", "content": "What animal is shown?"}]})
    if r.status_code == 503:
        pytest.skip(f"local generator unavailable: {r.json()['error']['message']}")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip()


def test_concurrent_requests_are_batched_and_metrics_count_them(served):
    app, c, items = served
    queries = [x.captions[1] for x in items[:16]]
    expected = {q: [h["id"] for h in c.post("/api/search", json={"text": q, "k": 5}).json()["results"]]
                for q in queries}
    import httpx

    async def burst(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            rs = await asyncio.gather(*(client.post("/api/search", json={"text": q, "k": 5}) for q in queries))
        return rs

    with running_server(app) as base:
        rs = asyncio.run(burst(base))
    assert all(r.status_code == 200 for r in rs)
    assert {q: [h["id"] for h in r.json()["results"]] for q, r in zip(queries, rs)} == expected
    text = c.get("/metrics").text
    assert 'mmrag_http_requests_total{method="POST",route="/api/search",status="200"}' in text
    count = float(next(ln.split()[-1] for ln in text.splitlines()
                       if ln.startswith('mmrag_batch_size_count{batcher="embed_texts"}')))
    total = float(next(ln.split()[-1] for ln in text.splitlines()
                       if ln.startswith('mmrag_batch_size_sum{batcher="embed_texts"}')))
    assert total > count  # some batch held more than one query


def test_micro_batcher_groups_calls_and_isolates_errors():
    calls = []

    def fn(items):
        calls.append(list(items))
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]

    b = MicroBatcher(fn, max_batch=8, max_wait_ms=200)

    async def go():
        return await asyncio.gather(*(b.submit(x) for x in [1, 2, -3, 4]), return_exceptions=True)

    out = asyncio.run(go())
    assert out[:2] == [10, 20] and isinstance(out[2], ValueError) and out[3] == 40
    assert calls == [[1, 2, -3, 4]]  # one call for the four concurrent submissions
    assert b.call(5) == 50  # blocking form, from a plain thread
    b.close()
    one = MicroBatcher(fn, max_batch=1)
    results = []
    ts = [threading.Thread(target=lambda x=x: results.append(one.call(x))) for x in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sorted(results) == [0, 10, 20, 30] and all(len(cl) == 1 for cl in calls[2:])
    one.close()
    multi = MicroBatcher(fn, workers=3)
    assert multi.call(2) == 20
    t = time.monotonic()
    multi.close()  # every worker gets its own stop signal
    assert time.monotonic() - t < 5 and not any(th.is_alive() for th in multi._threads)
    from mmrag.serve.batching import BatcherClosedError

    with pytest.raises(BatcherClosedError):
        multi.call(3)


def test_serve_cli_help():
    from typer.testing import CliRunner

    from mmrag.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0
    for opt in ("--index", "--host", "--port", "--no-batching", "--allow-url-fetch", "--max-upload-mb"):
        assert opt in r.output
    for bad in ({"image_threads": 0}, {"model_threads": -1}):
        with pytest.raises(ValueError, match="must be >= 1"):
            ServeConfig(**bad)


# --------------------------------------------------------------------------- ask and compose


def test_ask_with_reverse_image_retrieval(tmp_path, vqa_rad_dir, effnet_minilm, served):
    from mmrag.tasks.rir import index_vqa, read_vqa_rad
    from mmrag.corpus.vqa_rad import VQADataset

    vqa = vqa_rad_dir
    keep = ["synpic100176.jpg", "synpic100228.jpg", "synpic12210.jpg", "synpic16170.jpg", "synpic16407.jpg"]
    train = read_vqa_rad(vqa, "train")
    index_vqa(VQADataset("five", [q for q in train.questions if q.image_id in keep]), tmp_path / "vqa",
              effnet_minilm, progress=False)
    app = create_app(tmp_path / "vqa", encoder=effnet_minilm)
    try:
        c = TestClient(app)
        img = (vqa / "images" / keep[1]).read_bytes()
        r = c.post("/api/ask", files={"image": ("scan.jpg", img, "image/jpeg")},
                   data={"question": "Is this a PA or AP film?", "k": "3"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["answer"] and d["answerer"] == "knn" and d["rir"] is True
        ids = [e["id"] for e in d["evidence"]]
        assert keep[1] not in ids  # an uploaded copy of an indexed image is treated as unseen
        assert all("path" not in e and e["image_url"].startswith("/images/") for e in d["evidence"])
        assert c.post("/api/ask", data={"question": "Is there a fracture?", "image_id": keep[0]}).status_code == 200
        assert c.post("/api/ask", data={"question": "Is there a fracture?"}).status_code == 400
    finally:
        app.state.mmrag.service.close()
    # the Flickr8k index has no QA pairs: the default answers from the neighbours' captions
    _, fc, items = served
    assert fc.get("/healthz").json()["features"]["ask"] is True
    r = fc.post("/api/ask", data={"question": "What is the dog doing?", "image_id": items[0].id})
    assert r.status_code == 200, r.text
    d = r.json()
    caps = {c for it in items if it.id in {e["id"] for e in d["evidence"]} for c in it.captions}
    assert d["answerer"] == "captions" and d["answer"] in caps  # a caption of a retrieved image
    r = fc.post("/api/ask", data={"question": "Is there a dog?", "image_id": items[0].id})
    assert r.status_code == 200 and r.json()["answer"] in ("yes", "no")


def test_uncaptioned_index_says_what_cannot_work(tmp_path, flickr8k_dir, effnet_minilm):
    """A photo index (no captions, no QA): healthz turns ask and chat completions off and says
    why; the calls fail with that reason instead of a generic error."""
    import dataclasses

    from mmrag.corpus.items import Corpus
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    items = [dataclasses.replace(it, captions=[]) for it in
             read_corpus("flickr8k", flickr8k_dir, split="dev", limit=4).items]
    build_index(Corpus("photos", flickr8k_dir, items), tmp_path / "photos", effnet_minilm, IndexConfig(progress=False))
    app = create_app(tmp_path / "photos", encoder=effnet_minilm)
    try:
        c = TestClient(app)
        f = c.get("/healthz").json()["features"]
        assert f["ask"] is False and "neither QA pairs nor captions" in f["unavailable"]["ask"]
        assert f["chat_completions"] is False and "captions" in f["unavailable"]["chat_completions"]
        assert f["caption"] is False and "caption" in f["unavailable"]
        r = c.post("/api/ask", data={"question": "Is there a dog?", "image_id": items[0].id})
        assert r.status_code == 503 and "neither QA pairs nor captions" in r.json()["detail"]
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a dog"}]})
        assert r.status_code == 400 and "no captions" in r.json()["error"]["message"]
    finally:
        app.state.mmrag.service.close()


def test_compose_with_images_in_place(tmp_path, data_dir, effnet_minilm, served):
    from mmrag.tasks.imageref import read_documents
    from mmrag.tasks.imageref.ingest import ingest_documents

    chapter = data_dir / "d2l" / "chapter_recurrent-modern" / "gru.md"
    if not chapter.exists():
        pytest.skip("d2l chapters not in the shared data")
    ingest_documents(read_documents(chapter).documents, tmp_path / "docs", encoder=effnet_minilm)
    app = create_app(tmp_path / "docs", encoder=effnet_minilm)
    try:
        c = TestClient(app)
        assert c.get("/healthz").json()["features"]["compose"] is True
        r = c.post("/api/compose", json={"query": "How do the reset gate and update gate of a GRU work?"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["blocks"][0] == {"type": "heading", "level": 1, "text": d["title"]}
        figs = [b for b in d["blocks"] if b["type"] == "image"]
        assert figs and all(f"({b['key']})" in d["markdown"] for b in figs)
        for b in figs:  # every placed image can be fetched from this server
            img = c.get(b["image_url"])
            assert img.status_code == 200 and img.content[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1",
                                                                   b"<?xm", b"<svg")
        assert all("path" not in im for im in d["images"])
        assert c.post("/api/compose", json={"query": ""}).status_code == 422
        assert c.get("/api/compose/images/0123abcd").status_code == 404
    finally:
        app.state.mmrag.service.close()
    _, fc, _ = served
    assert fc.get("/healthz").json()["features"]["compose"] is False
    r = fc.post("/api/compose", json={"query": "what is a dog?"})
    assert r.status_code == 503 and "no documents" in r.json()["detail"]


VAGUE = "a photo of something outside"  # many images fit it about equally: a question is offered


def test_search_offers_a_clarifying_question_when_asked(served):
    _, c, items = served
    plain = c.post("/api/search", json={"text": VAGUE, "k": 6}).json()
    assert plain["clarify"] is None  # off unless asked: the response of old clients is unchanged
    d = c.post("/api/search", json={"text": VAGUE, "k": 6, "clarify": True}).json()
    assert [h["id"] for h in d["results"]] == [h["id"] for h in plain["results"]]  # asking never re-ranks
    q = d["clarify"]
    assert q and q["question"].endswith("?") and q["closeness"] >= q["threshold"]
    ids = [h["id"] for h in d["results"]]
    answers = [o["answer"] for o in q["options"]]
    assert answers[-1] in ("neither", "no") and len(answers) >= 2
    for o in q["options"]:  # each answer re-orders the shown results: a click needs no new search
        assert sorted(o["hit_ids"]) == sorted(ids) and set(o["kept_ids"]) <= set(ids)
    assert c.get("/api/search", params={"q": VAGUE, "k": 6, "clarify": "true"}).json()["clarify"] == q
    # a clear query (the image caption whose best hit is the most relevant) gets no question
    text = max((cap for it in items for cap in it.captions),
               key=lambda t: c.post("/api/search", json={"text": t, "k": 1}).json()["results"][0]["relevance"])
    clear = c.post("/api/search", json={"text": text, "clarify": True}).json()
    assert clear["results"][0]["relevance"] > 1 - q["threshold"] and clear["clarify"] is None
    # image queries: no question, and no error
    assert c.post("/api/search", json={"image_id": items[0].id, "clarify": True}).json()["clarify"] is None
    assert c.post("/api/search", json={"text": VAGUE, "clarify": "maybe"}).status_code == 422
    schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert "clarify" in schema["SearchRequest"]["properties"] and "Clarify" in schema
