"""Verbs and paths no other test runs, through the real entry point (``python -m mmrag.cli``) on
real data: ``eval retrieval``, ``caption-refine``, ``serve`` started and stopped, ``info`` /
``remove`` on a folder that is not an index, ``search --where``; and the service's
``allow_url_fetch`` against a loopback HTTP server. (``bridge fit``: tests/test_bridge_fit.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve_helpers import build_serve_index, free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLUMNS": "200"}


def cli(*args: str, code: int = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mmrag.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=REPO, env=ENV, timeout=timeout)
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    if code == 2:  # bad input: one line saying what is wrong, never a traceback
        assert p.stderr.lstrip().startswith("error:") and "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture(scope="module")
def index(flickr8k_dir, effnet_minilm, tmp_path_factory):
    """20 Flickr8k images: 10 dev + 10 test (the split is in each row's metadata)."""
    return build_serve_index(flickr8k_dir, tmp_path_factory.mktemp("verbs") / "idx", effnet_minilm)


def test_search_where_filters_by_metadata(index):
    idx, items = index
    for split in ("dev", "test"):
        hits = json.loads(cli("search", "--index", idx, "--text", "a dog", "-k", "20", "--where", f"split={split}",
                              "--json").stdout)
        assert len(hits) == 10 and {h["metadata"]["split"] for h in hits} == {split}
    every = json.loads(cli("search", "--index", idx, "--text", "a dog", "-k", "20", "--json").stdout)
    assert len(every) == 20
    # two keys are AND-ed: one image by id and split
    first = items[0]
    one = json.loads(cli("search", "--index", idx, "--text", "a dog", "-k", "5", "--where", "split=dev",
                         "--where", f"path={first.path}", "--json").stdout)
    assert [h["id"] for h in one] == [first.id]
    assert json.loads(cli("search", "--index", idx, "--text", "a dog", "--where", "split=nope", "--json").stdout) == []
    p = cli("search", "--index", idx, "--text", "a dog", "--where", "split", code=2)
    assert "--where takes key=value" in p.stderr


def test_info_and_remove_on_a_folder_that_is_not_an_index(index, tmp_path):
    idx, items = index
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not an index")
    for where in (tmp_path / "plain", tmp_path / "missing"):
        assert "not an mmrag index" in cli("info", "--index", where, code=2).stderr
        assert "not an mmrag index" in cli("remove", "some.jpg", "--index", where, code=2).stderr
    assert not (tmp_path / "missing").exists()  # nothing created
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["notes.txt"]
    # an id that is not in the index: said so, nothing removed
    p = cli("remove", "no-such-image.jpg", "--index", idx)
    assert "removed 0 images and 0 captions" in p.stdout and "1 of the ids were not in the index" in p.stderr
    assert json.loads(cli("info", "--index", idx, "--json").stdout)["images"] == len(items)


def test_eval_retrieval_matches_the_library(flickr8k_dir, effnet_minilm, tmp_path):
    from mmrag.corpus.readers import read_corpus
    from mmrag.eval.retrieval import evaluate_retrieval

    out = tmp_path / "r.json"
    p = cli("eval", "retrieval", flickr8k_dir, "--kind", "flickr8k", "--split", "test", "--limit", "30", "--json", out)
    assert "t2i" in p.stdout and f"wrote {out}" in p.stderr
    res = json.loads(out.read_text())
    ref = evaluate_retrieval(read_corpus("flickr8k", flickr8k_dir, split="test", limit=30), effnet_minilm,
                             progress=False)
    assert res["split"] == "test" and res["n_images"] == 30 and res["n_captions"] == 150
    for d in ("t2i", "i2t"):
        for key in ("R@1", "R@5", "R@10"):
            assert res[d][key] == pytest.approx(ref[d][key], abs=1e-6), (d, key)
    assert res["i2t"]["R@1"] > 0  # 30 images: chance R@1 is 3 %
    cli("eval", "retrieval", flickr8k_dir, "--kind", "flickr8k", "--split", "nosuchsplit", code=2)


def test_caption_refine_writes_a_datastore_and_a_log(flickr8k_dir, effnet_minilm, tmp_path):
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import CaptionDatastore

    start = CaptionDatastore.from_corpus(read_corpus("flickr8k", flickr8k_dir, split="train", limit=60),
                                         effnet_minilm, cache=False, split="train")
    start.save(tmp_path / "start.npz")
    log = tmp_path / "log.json"
    p = cli("caption-refine", flickr8k_dir, "--kind", "flickr8k", "--datastore", tmp_path / "start.npz",
            "--out", tmp_path / "grown.npz", "--train-limit", "15", "--dev-limit", "8", "--max-iterations", "1",
            "--json", log)
    assert "refinement: dev CIDEr-D" in p.stdout
    rep = json.loads(log.read_text())
    assert len(rep["iterations"]) == 1 and rep["best_dev_CIDEr-D"] >= rep["initial_dev_CIDEr-D"] > 0
    grown = CaptionDatastore.load(tmp_path / "grown.npz")
    assert len(grown) == len(start) + rep["added_total"]
    assert int(grown.synthetic.sum()) == rep["added_total"]
    cli("caption-refine", flickr8k_dir, "--kind", "flickr8k", "--datastore", tmp_path / "nope.npz",
        "--out", tmp_path / "x.npz", code=2)


def test_caption_reports_an_unreadable_image_on_one_line(flickr8k_dir, effnet_minilm, index, tmp_path):
    """One `error: PATH: reason` line per unreadable image (exit 1, the others captioned), the path
    said once; --k out of the captioner's bounds (0 no longer means 'the default') is exit 2."""
    from mmrag.corpus.readers import read_corpus
    from mmrag.tasks.captioning import CaptionDatastore

    CaptionDatastore.from_corpus(read_corpus("flickr8k", flickr8k_dir, split="train", limit=30),
                                 effnet_minilm, cache=False, split="train").save(tmp_path / "ds.npz")
    bad = tmp_path / "notes.jpg"
    bad.write_text("a text file with an image's name\n")
    good = index[1][0].path
    p = cli("caption", good, bad, "--datastore", tmp_path / "ds.npz", code=1)
    assert f"{good}:" in p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {bad}: not an image or unsupported format"], p.stderr
    for k in ("0", "1001"):
        assert "--k must be within [1, 1000]" in cli("caption", good, "--datastore", tmp_path / "ds.npz",
                                                      "--k", k, code=2).stderr


def test_serve_starts_answers_and_stops(index):
    pytest.importorskip("uvicorn", reason="the service needs uvicorn")
    idx, items = index
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "mmrag.cli", "serve", "--index", str(idx), "--port", str(port),
                          "--log-level", "warning"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 180, None
        while health is None:
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "server did not answer /healthz in 180 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert health["status"] == "ok" and health["images"] == len(items)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/search", method="POST",
                                     data=json.dumps({"text": "a dog", "k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert len(json.loads(r.read())["results"]) == 3
    finally:
        p.send_signal(signal.SIGINT)  # what Ctrl-C sends: uvicorn shuts down cleanly
        try:
            _, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    assert p.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr


@pytest.fixture
def loopback_files(flickr8k_dir, tmp_path):
    """A real HTTP server on 127.0.0.1 serving a photo and a file above the size cap."""
    from mmrag.corpus.readers import read_corpus

    item = read_corpus("flickr8k", flickr8k_dir, split="dev", limit=1).items[0]
    (tmp_path / "photo.jpg").write_bytes(item.path.read_bytes())
    (tmp_path / "big.jpg").write_bytes(item.path.read_bytes() + b"\0" * (2 * 1024 * 1024))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(tmp_path)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", item
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/moved":  # a relative redirect to the photo
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_allow_url_fetch_against_a_loopback_server(index, loopback_files, effnet_minilm):
    pytest.importorskip("fastapi", reason="the service needs fastapi")
    from fastapi.testclient import TestClient

    from mmrag.serve import ServeConfig, create_app

    idx, _ = index
    base, item = loopback_files
    off = create_app(idx, ServeConfig(), encoder=effnet_minilm)
    public_only = create_app(idx, ServeConfig(allow_url_fetch=True), encoder=effnet_minilm)
    on = create_app(idx, ServeConfig(allow_url_fetch=True, url_fetch_private=True, max_upload_bytes=1024 * 1024),
                    encoder=effnet_minilm)
    try:
        c_off, c_on, c_public = TestClient(off), TestClient(on), TestClient(public_only)
        r = c_off.post("/knn-service", json={"image_url": f"{base}/photo.jpg", "num_images": 3})
        assert r.status_code == 400 and "disabled" in r.text  # off by default: no outbound request
        # URL fetching on, private addresses not allowed (the default): loopback and private
        # addresses are refused before any request, also when a public-looking hop redirects there
        port = base.rsplit(":", 1)[1]
        for url in (f"{base}/photo.jpg", f"http://localhost:{port}/photo.jpg", "http://10.0.0.1/x.jpg",
                    "http://169.254.169.254/latest/meta-data", "http://[::1]/x.jpg"):
            r = c_public.post("/knn-service", json={"image_url": url, "num_images": 3})
            assert r.status_code == 400 and "non-public address" in r.text, (url, r.text)
        # redirects are followed by hand (each hop checked): a redirect to the photo still finds it
        r = c_on.post("/knn-service", json={"image_url": f"{base}/moved", "num_images": 3})
        assert r.status_code == 200 and r.json()[0]["image_id"] == item.id, r.text
        r = c_on.post("/knn-service", json={"image_url": f"{base}/photo.jpg", "num_images": 3})
        assert r.status_code == 200, r.text
        assert r.json()[0]["image_id"] == item.id and r.json()[0]["similarity"] > 0.99  # the photo is indexed
        r = c_on.post("/knn-service", json={"image_url": f"{base}/big.jpg", "num_images": 3})
        assert r.status_code == 400 and f"larger than {1024 * 1024} bytes" in r.text
        r = c_on.post("/knn-service", json={"image_url": f"{base}/missing.jpg", "num_images": 3})
        assert r.status_code == 400 and "HTTP 404" in r.text
        for url in (f"file://{item.path}", "ftp://127.0.0.1/x.jpg", "gopher://x"):
            r = c_on.post("/knn-service", json={"image_url": url, "num_images": 3})
            assert r.status_code == 400 and "http(s)" in r.text, url
    finally:
        for app in (off, on, public_only):
            app.state.mmrag.service.close()


def test_ask_help_states_the_default_k_the_code_uses():
    """`ask --help` and `eval ask --help` name the knn and generator defaults of k that RIRPipeline applies
    (they said 20 after the dev choice moved to 10)."""
    from mmrag.tasks.rir.pipeline import DEFAULT_K, GENERATOR_K

    for verb in (["ask"], ["eval", "ask"]):
        text = " ".join(cli(*verb, "--help").stdout.split())
        assert f"default {DEFAULT_K} for knn" in text and f"{GENERATOR_K} for generators" in text, (verb, text)
