"""The ecosystem's real clients against a real ``mmrag serve`` on loopback: clip-retrieval's
``ClipClient`` (``/knn-service``) and the official ``openai`` SDK (``/v1``)."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi")
pytest.importorskip("uvicorn", reason="the service needs uvicorn")
pytest.importorskip("multipart", reason="uploads need python-multipart")
pytest.importorskip("prometheus_client", reason="/metrics needs prometheus-client")

from serve_helpers import build_serve_index, running_server  # noqa: E402

from mmrag.serve import ServeConfig, create_app  # noqa: E402


def load_clip_client():
    """clip-retrieval's ``clip_client.py`` loaded by its path: the package's ``__init__`` imports
    its server (flask, torch, ...), the client needs only ``requests``."""
    pytest.importorskip("requests", reason="clip-retrieval's ClipClient needs requests")
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-retrieval is not installed (pip install --no-deps clip-retrieval==2.45.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "clip_client.py"
    mod_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server(tmp_path_factory, flickr8k_dir, effnet_minilm):
    """(base URL, app, items): a real uvicorn server over a 20-image Flickr8k index."""
    idx, items = build_serve_index(flickr8k_dir, tmp_path_factory.mktemp("clients") / "idx", effnet_minilm)
    app = create_app(idx, ServeConfig(), encoder=effnet_minilm)
    with running_server(app) as base:
        yield base, app, items
    app.state.mmrag.service.close()


# ---------------------------------------------------------------------- clip-retrieval


@pytest.fixture(scope="module")
def clip_client_mod():
    return load_clip_client()


def _client(mod, base, **kw):
    # the client's defaults are kept (deduplicate, use_safety_model, use_violence_detector: True)
    return mod.ClipClient(url=base + "/knn-service", indice_name="idx", **kw)


def test_clip_client_text_query_finds_the_described_image(server, clip_client_mod):
    base, _, items = server
    client = _client(clip_client_mod, base, num_images=5)
    found = 0
    for it in items[:6]:
        res = client.query(text=it.captions[0])
        assert isinstance(res, list) and 1 <= len(res) <= 5, res
        assert set(res[0]) >= {"id", "similarity", "url", "caption"}
        assert all(a["similarity"] >= b["similarity"] for a, b in zip(res, res[1:]))
        assert res[0]["url"].startswith(base + "/images/")
        found += it.id in [r["id"] for r in res]
    assert found >= 4, f"only {found}/6 images found in the top 5 by one of their own captions"


def test_clip_client_image_embedding_and_text_modality(server, clip_client_mod):
    base, app, items = server
    it = items[3]
    res = _client(clip_client_mod, base, num_images=3).query(image=str(it.path))  # a file path, sent as base64
    assert res[0]["id"] == it.id and res[0]["similarity"] > 0.99
    vec = app.state.mmrag.service.stored_vector(items[7].id).tolist()
    res = _client(clip_client_mod, base, num_images=2).query(embedding_input=vec)
    assert res[0]["id"] == items[7].id
    caps = _client(clip_client_mod, base, num_images=5, modality=clip_client_mod.Modality.TEXT)
    res = caps.query(text=items[1].captions[2])
    assert all("#" in r["id"] for r in res)  # caption ids
    assert res[0]["caption"] == items[1].captions[2]


def test_clip_client_ignored_fields_are_reported(server, clip_client_mod, monkeypatch):
    base, _, items = server
    mod = clip_client_mod
    seen = []
    real_post = mod.requests.post

    def recording_post(*a, **kw):  # the real request, its response kept to read the headers
        r = real_post(*a, **kw)
        seen.append(r)
        return r

    monkeypatch.setattr(mod.requests, "post", recording_post)
    _client(mod, base, num_images=4).query(text=items[0].captions[0])
    assert seen[-1].headers.get("content-type", "").startswith("application/json")
    assert seen[-1].request.headers.get("content-type") is None  # what made the old endpoint answer 422
    # the client's defaults ask for filters and an aesthetic bias this server does not have
    assert seen[-1].headers["x-mmrag-ignored"] == ("use_safety_model, use_violence_detector, "
                                                   "aesthetic_score, aesthetic_weight")
    plain = _client(mod, base, num_images=4, use_safety_model=False, use_violence_detector=False,
                    aesthetic_score=None, aesthetic_weight=None)
    plain.query(text=items[0].captions[0])
    assert seen[-1].status_code == 200 and "x-mmrag-ignored" not in seen[-1].headers
    _client(mod, base, num_images=4, use_mclip=True, use_safety_model=False, use_violence_detector=False,
            aesthetic_score=9, aesthetic_weight=0.5).query(text="a dog")
    assert seen[-1].headers["x-mmrag-ignored"] == "use_mclip, aesthetic_score, aesthetic_weight"
    # an index that is not this server's: a readable 404, not a silent answer from another index
    r = _client(mod, base, num_images=2)
    r.indice_name = "laion5B"
    out = r.query(text="a dog")
    assert seen[-1].status_code == 404 and "laion5B" in out["detail"] and "idx" in out["detail"]


def test_clip_retrieval_indices_list_and_metadata(server):
    import requests

    base, _, items = server
    assert requests.get(base + "/indices-list", timeout=30).json() == ["idx"]
    # clip-retrieval's front end posts JSON text without a JSON content type too
    body = json.dumps({"ids": [items[0].id, "nope"], "indice_name": "idx"})
    metas = requests.post(base + "/metadata", data=body, timeout=30).json()
    assert [m["id"] for m in metas] == [items[0].id]
    assert metas[0]["metadata"]["caption"] == items[0].captions[0]
    bad = requests.post(base + "/knn-service", data="{not json", timeout=30)
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["message"]
    bad = requests.post(base + "/knn-service", data=json.dumps({"text": "x", "num_images": 0}), timeout=30)
    assert bad.status_code == 422 and "num_images" in bad.json()["message"]


# ---------------------------------------------------------------------- openai SDK


@pytest.fixture(scope="module")
def oai(server):
    openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install openai)")
    base, _, _ = server
    return openai, openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_openai_sdk_models_chat_image_and_stream(server, oai):
    _, _, items = server
    openai, client = oai
    all_caps = {c for x in items for c in x.captions}
    assert {m.id for m in client.models.list()} >= {"mmrag", "mmrag-consensus", "mmrag-local"}
    msg = [{"role": "user", "content": "two dogs playing in the grass"}]
    r = client.chat.completions.create(model="mmrag", messages=msg)
    answer = r.choices[0].message.content
    assert answer in all_caps and r.choices[0].finish_reason == "stop" and r.usage.total_tokens > 0
    assert r.model_extra["mmrag"]["evidence"]  # mmrag's extra field survives the SDK's parsing
    # an image as a data URL drives the retrieval
    it = items[5]
    url = "data:image/jpeg;base64," + base64.b64encode(it.path.read_bytes()).decode()
    r = client.chat.completions.create(model="mmrag-consensus", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert r.model_extra["mmrag"]["evidence"][0]["id"] == it.id
    # streaming: the same text as the whole answer, the last chunk says why it ended
    chunks = list(client.chat.completions.create(model="mmrag", messages=msg, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer and chunks[-1].choices[0].finish_reason == "stop"


def test_openai_sdk_errors_are_the_sdk_exceptions(server, oai):
    openai, client = oai
    msg = [{"role": "user", "content": "a dog"}]
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.chat.completions.create(model="gpt-9", messages=msg)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.chat.completions.create(model="mmrag", messages=msg, temperature=7)
    with pytest.raises(openai.BadRequestError, match="base64"):
        client.chat.completions.create(model="mmrag", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}])
    with pytest.raises(openai.InternalServerError, match="base_url"):  # 503: no upstream configured
        client.chat.completions.create(model="mmrag-openai", messages=msg)


def test_openai_sdk_finish_reason_length_when_max_tokens_cuts(server, oai):
    """SmolLM2 through the facade: 5 tokens cannot hold an answer -> "length"; room -> "stop"."""
    from mmrag.generators import GenerationRequest, create_generator
    from mmrag.errors import ModelUnavailableError

    base, _, _ = server
    openai, client = oai
    msg = [{"role": "user", "content": "Describe the dogs in the pictures."}]
    try:
        r = client.chat.completions.create(model="mmrag-local", messages=msg, max_tokens=5)
    except openai.InternalServerError as e:
        pytest.skip(f"local generator unavailable: {e}")
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    chunks = list(client.chat.completions.create(model="mmrag-local", messages=msg, max_tokens=5, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="mmrag-local", max_tokens=200, messages=[
        {"role": "user", "content": "Answer with one word: what animal is shown?"}])
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 200
    # mmrag's own openai generator passes the upstream's finish_reason on
    try:
        gen = create_generator("openai", base_url=base + "/v1", model="mmrag-local", retries=0)
    except ModelUnavailableError as e:  # pragma: no cover
        pytest.skip(str(e))
    res = gen.generate(GenerationRequest.from_prompt("Describe the dogs in the pictures.", max_tokens=5))
    assert res.finish_reason == "length"


def _readme_snippet(marker: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {marker!r}"
    return found[0]


def test_readme_snippets_run_against_the_server(server, clip_client_mod, oai, monkeypatch, capsys):
    """The README's two client snippets, as written, pointed at this server."""
    import sys
    import types

    base, _, _ = server
    # the README imports clip_retrieval.clip_client as a full install allows; here the package's
    # __init__ (its server: flask, torch) is not importable, so the client module stands in by path
    pkg = types.ModuleType("clip_retrieval")
    pkg.__path__ = []
    monkeypatch.setitem(sys.modules, "clip_retrieval", pkg)
    monkeypatch.setitem(sys.modules, "clip_retrieval.clip_client", clip_client_mod)
    for marker in ("from clip_retrieval.clip_client import", "from openai import OpenAI"):
        code = _readme_snippet(marker).replace("http://127.0.0.1:8000", base)
        exec(compile(code, f"README:{marker}", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) >= 2 and base + "/images/" in out[0]
