"""A user's own encoder, store and generator, plugged in by ``module:Name`` or an entry point.

The parts are the user's code: a small module written to a folder on ``sys.path`` (the user's
working directory), implementing the public base classes -- not mocks of mmrag's own parts.
The encoder is real but tiny: colour histograms for images, hashed words for texts (48-d).
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from mmrag.cli import app

USER_MODULE = '''
import hashlib
import numpy as np
from mmrag.encoders import Encoder
from mmrag.corpus.images import open_image

DIM = 48

def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

class HistEncoder(Encoder):
    name = "hist"   # a name of the user's: the manifest must record how to rebuild it instead
    dim = DIM

    def embed_images(self, images, batch_size=32, progress=False):
        rows = []
        for im in images:
            a = np.asarray(open_image(im).convert("RGB").resize((32, 32)), np.float32)
            rows.append(np.concatenate([np.histogram(a[..., c], 16, (0, 255))[0] for c in range(3)]) + 1.0)
        return _unit(rows) if rows else np.zeros((0, DIM), np.float32)

    def embed_texts(self, texts, batch_size=128, progress=False):
        out = np.full((len(texts), DIM), 0.01, np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1
        return _unit(out)


class Projected(HistEncoder):
    """An encoder with weights: a matrix from a file (model=) applied to both sides."""

    def __init__(self, model):
        self.model = str(model)
        self.w = np.load(self.model)

    def spec(self):  # the option that rebuilds it goes into the manifest
        return super().spec()[0], {"model": self.model}

    def embed_images(self, images, batch_size=32, progress=False):
        return _unit(super().embed_images(images) @ self.w)

    def embed_texts(self, texts, batch_size=128, progress=False):
        return _unit(super().embed_texts(texts) @ self.w)


class Nameless(Encoder):
    """A user class that never says a name."""
    dim = DIM

    def embed_images(self, images, batch_size=32, progress=False):
        return HistEncoder().embed_images(images)

    def embed_texts(self, texts, batch_size=128, progress=False):
        return HistEncoder().embed_texts(texts)


class ImageOnly(HistEncoder):
    """An encoder without a text side (an image model alone)."""

    def embed_texts(self, texts, batch_size=128, progress=False):
        raise NotImplementedError("ImageOnly has no text side")


class Plain:
    """The two embedding methods, without the base class."""
    dim = DIM

    def embed_images(self, images, batch_size=32, progress=False):
        return HistEncoder().embed_images(images)

    def embed_texts(self, texts, batch_size=128, progress=False):
        return HistEncoder().embed_texts(texts)


from mmrag.generators.base import GenerationResult, Generator

class Shout(Generator):
    reads_messages = True
    reads_evidence = True
    name = "shout"

    def generate(self, request):
        said = request.evidence[0] if request.evidence else request.messages[-1]["content"]
        return GenerationResult(text=said.upper())


from mmrag.index.faiss_store import FaissStore

class CountingStore(FaissStore):
    """The user's store: FAISS that counts the searches it answered."""
    searches = 0

    def search(self, *args, **kwargs):
        type(self).searches += 1
        return super().search(*args, **kwargs)
'''

EVIL_MODULE = '''
import pathlib, os
pathlib.Path(os.environ["MMRAG_TEST_MARKER"]).write_text("imported")
def make(**kwargs):
    raise AssertionError("built")
'''


def run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"mmrag {' '.join(map(str, args))} -> {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res.stdout


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    d = tmp_path / "user"
    d.mkdir()
    (d / "my_parts.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    (d / "evil_parts.py").write_text(textwrap.dedent(EVIL_MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(d))
    return d


@pytest.fixture(scope="module")
def coco(data_dir):
    path = data_dir / "coco_sample" / "captions_val2017_sample.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def test_encoder_by_import_path_is_recorded_and_reused(user_dir, coco, tmp_path):
    """`--encoder my_parts:HistEncoder`: indexed with it, recorded in the manifest under that
    path, and `search`/`info` rebuild it from there without the flag."""
    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 6, "--out", idx, "--encoder", "my_parts:HistEncoder")
    m = json.loads((idx / "manifest.json").read_text())
    assert m["encoder"] == "my_parts:HistEncoder" and m["dim"] == 48
    from my_parts import HistEncoder

    from mmrag.corpus.readers import read_corpus

    first = read_corpus("coco", coco, limit=6).items[0]
    hits = json.loads(run("search", "--index", idx, "--image", first.path, "-k", 2, "--json"))
    assert hits[0]["id"] == first.id and hits[0]["score"] > 0.999  # the user's vectors, the user's query
    want = HistEncoder().embed_images([first.path])[0]
    from mmrag.retrieval import Searcher

    s = Searcher(idx)  # the Python API rebuilds it from the manifest too
    assert type(s.encoder).__name__ == "HistEncoder"
    np.testing.assert_allclose(s.encoder.embed_images([first.path])[0], want, atol=1e-6)
    assert "my_parts:HistEncoder" in run("info", "--index", idx)


def test_encoder_by_entry_point(user_dir, coco, tmp_path):
    """An installed package's `mmrag.encoders` entry point is a name like the built-in ones."""
    dist = user_dir / "my_parts-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-parts\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmrag.encoders]\nhist = my_parts:HistEncoder\n")
    assert "hist" in run("encoders")
    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 4, "--out", idx, "--encoder", "hist")
    assert json.loads((idx / "manifest.json").read_text())["encoder"] == "hist"
    assert len(json.loads(run("search", "--index", idx, "--text", "a dog", "-k", 2, "--json"))) == 2


@pytest.mark.parametrize("name, says", [
    ("no_such_module:Enc", "cannot import 'no_such_module'"),
    ("my_parts:Nope", "module 'my_parts' has no 'Nope'"),
    ("my_parts:DIM", "is not a class or function"),
    ("bogus", "unknown encoder 'bogus'"),
])
def test_bad_user_names_are_one_line_errors(user_dir, coco, tmp_path, name, says, capsys):
    from mmrag.cli import main

    with pytest.raises(SystemExit) as e:
        main(["index", str(coco), "--kind", "coco", "--limit", "2", "--out", str(tmp_path / "i"), "--encoder", name])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "Traceback" not in err and err.count("\n") == 1, err


def test_store_and_generator_by_import_path(user_dir, coco, tmp_path):
    """`--store my_parts:CountingStore` is recorded and reopened by search; `--generator
    my_parts:Shout` writes the caption and the RIR answer."""
    import my_parts

    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 6, "--out", idx, "--encoder", "my_parts:HistEncoder",
        "--store", "my_parts:CountingStore")
    assert json.loads((idx / "manifest.json").read_text())["backend"] == "my_parts:CountingStore"
    before = my_parts.CountingStore.searches
    assert len(json.loads(run("search", "--index", idx, "--text", "a dog", "-k", 2, "--mode", "vector", "--json"))) == 2
    assert my_parts.CountingStore.searches > before  # the user's store answered
    from mmrag.corpus.readers import read_corpus

    img = read_corpus("coco", coco, limit=6).items[0].path
    (r,) = json.loads(run("caption", img, "--index", idx, "--generator", "my_parts:Shout", "--json"))
    assert r["caption"] and r["caption"] == r["caption"].upper() and r["caption"] != r["caption"].lower()
    d = json.loads(run("ask", "--index", idx, img, "what is it?", "--generator", "my_parts:Shout", "--json"))
    assert d["answer"] == d["answer"].upper() and d["answer"].strip()


def test_serve_uses_the_operators_generator_but_never_imports_a_requested_path(user_dir, coco, tmp_path,
                                                                                monkeypatch):
    """The server's own --generator may be MODULE:NAME; a request naming one is refused before
    anything is imported (it would import any module on the server)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmrag.serve.app import create_app
    from mmrag.serve.config import ServeConfig

    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 6, "--out", idx, "--encoder", "my_parts:HistEncoder")
    marker = tmp_path / "imported"
    monkeypatch.setenv("MMRAG_TEST_MARKER", str(marker))
    c = TestClient(create_app(idx, ServeConfig(generator="my_parts:Shout")))
    r = c.post("/v1/chat/completions", json={"model": "mmrag", "messages": [{"role": "user", "content": "two dogs"}]})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert text.strip() and text == text.upper()
    r = c.post("/v1/chat/completions", json={"model": "mmrag-evil_parts:make",
                                             "messages": [{"role": "user", "content": "two dogs"}]})
    assert r.status_code == 404, r.text
    r = c.post("/api/caption", data={"image_id": "x", "generator": "evil_parts:make"})
    assert r.status_code == 400 and "unknown generator" in r.text, r.text
    r = c.post("/api/ask", data={"question": "what?", "image_id": "x", "answerer": "evil_parts:make"})
    assert r.status_code in (400, 404), r.text
    r = c.post("/api/compose", json={"query": "what?", "generator": "evil_parts:make"})
    assert r.status_code == 400 and "unknown generator" in r.text, r.text  # before the documents load
    assert not marker.exists()  # nothing a request named was imported


def test_searching_with_another_encoder_is_refused(user_dir, coco, tmp_path):
    """An encoder passed to Searcher must be the index's kind: a 48-d encoder of another kind was
    searched without a word (every score noise); the same class under its own name is accepted."""
    import my_parts

    from mmrag.errors import IndexError_
    from mmrag.retrieval import Searcher

    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 4, "--out", idx, "--encoder", "my_parts:HistEncoder")

    class Reversed(my_parts.HistEncoder):  # another user encoder of the same size
        def embed_texts(self, texts, batch_size=128, progress=False):
            return super().embed_texts(texts)[:, ::-1].copy()

    with pytest.raises(IndexError_, match="built with encoder my_parts:HistEncoder .* the encoder given is"):
        Searcher(idx, encoder=Reversed())
    assert Searcher(idx, encoder=my_parts.HistEncoder()).search(text="a dog", k=2)  # "hist", the same class


def _main_fails(capsys, *args) -> str:
    from mmrag.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_an_encoder_without_a_text_side(user_dir, coco, tmp_path, capsys):
    """An image-only encoder indexes a folder without captions and answers image queries; a text
    query is a one-line error on the command line and a 501 with the reason over HTTP."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((coco.parent / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    idx = tmp_path / "idx"
    run("index", folder, "--out", idx, "--encoder", "my_parts:ImageOnly")
    img = sorted(folder.glob("*.jpg"))[0]
    assert json.loads(run("search", "--index", idx, "--image", img, "-k", 1, "--json"))[0]["score"] > 0.999
    err = _main_fails(capsys, "search", "--index", idx, "--text", "a dog")
    assert "not supported" in err and "ImageOnly has no text side" in err
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmrag.serve.app import create_app

    r = TestClient(create_app(idx)).post("/api/search", json={"text": "a dog", "k": 2, "mode": "vector"})
    assert r.status_code == 501 and "ImageOnly has no text side" in r.json()["detail"], r.text


def test_a_class_that_is_not_an_encoder(user_dir, coco, tmp_path, capsys):
    err = _main_fails(capsys, "index", coco, "--kind", "coco", "--limit", 2, "--out", tmp_path / "i",
                      "--encoder", "my_parts:Plain")
    assert "built a Plain, not an mmrag.encoders.Encoder" in err
    assert not (tmp_path / "i" / "manifest.json").exists()
    from mmrag.errors import InvalidInputError
    from mmrag.generators import create_generator

    with pytest.raises(InvalidInputError, match="built a Plain, not an mmrag.generators.Generator"):
        create_generator("my_parts:Plain")


def test_an_encoder_with_a_model_option(user_dir, coco, tmp_path, capsys):
    """`--encoder-model` is a user encoder's model= option, kept in the manifest so search
    rebuilds the same weights; a class that takes no such option is a one-line error."""
    w = tmp_path / "w.npy"
    np.save(w, np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32))
    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 4, "--out", idx, "--encoder", "my_parts:Projected",
        "--encoder-model", w)
    m = json.loads((idx / "manifest.json").read_text())
    assert (m["encoder"], m["encoder_options"]) == ("my_parts:Projected", {"model": str(w)})
    from mmrag.corpus.readers import read_corpus

    img = read_corpus("coco", coco, limit=4).items[1]
    hits = json.loads(run("search", "--index", idx, "--image", img.path, "-k", 1, "--json"))
    assert hits[0]["id"] == img.id and hits[0]["score"] > 0.999
    err = _main_fails(capsys, "index", coco, "--kind", "coco", "--limit", 2, "--out", tmp_path / "i2",
                      "--encoder", "my_parts:HistEncoder", "--encoder-model", w)
    assert "encoder 'my_parts:HistEncoder' does not take these options (model)" in err


def test_text_cache_of_a_user_embedder_keeps_its_width(user_dir, tmp_path):
    """CachedTextEmbedder (compose's placement takes any embedder) around a 48-d user model:
    no texts are 0 rows of 48, as the rows of some texts are."""
    import my_parts

    from mmrag.retrieval import CachedTextEmbedder

    class Texts:  # the user's text model with the embed() the cache wraps
        dim = 48

        def embed(self, texts, batch_size=128, progress=False):
            return my_parts.HistEncoder().embed_texts(texts)

    c = CachedTextEmbedder(Texts(), model_key="hist", path=tmp_path / "t.npz")
    assert c.embed(["a dog"]).shape == (1, 48) and c.embed([]).shape == (0, 48)
    Texts.dim = None  # an embedder that does not say: its width is measured
    assert c.embed([]).shape == (0, 48)


@pytest.mark.parametrize("name, says", [("bogus", "unknown generator 'bogus'"),
                                        ("no_such_module:Gen", "cannot import 'no_such_module'")])
def test_serve_refuses_an_unknown_generator_before_it_loads(user_dir, tmp_path, capsys, name, says):
    """`mmrag serve --generator NAME` that no registry builds: one line before the index loads
    (it served, and every caption and chat completion failed)."""
    pytest.importorskip("fastapi")
    err = _main_fails(capsys, "serve", "--index", tmp_path / "nothing", "--generator", name)
    assert says in err


def test_rir_answerer_named_by_a_user_generator(user_dir, coco, tmp_path):
    """`ask --answerer my_parts:Shout`: a generator name is an answerer, the user's too."""
    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 4, "--out", idx, "--encoder", "my_parts:HistEncoder")
    from mmrag.corpus.readers import read_corpus

    img = read_corpus("coco", coco, limit=4).items[0].path
    d = json.loads(run("ask", "--index", idx, img, "what is it?", "--answerer", "my_parts:Shout", "--json"))
    assert d["answer"].strip() and d["answer"] == d["answer"].upper()


def test_serve_generator_options_for_a_dotted_user_generator():
    """`--generator-opt my.pkg:Gen.max_len=5` names the option of the generator `my.pkg:Gen`."""
    from mmrag.cli.common import parse_generator_options

    assert parse_generator_options(["my.pkg:Gen.max_len=5", "openai.base_url=http://h/v1"]) == {
        "my.pkg:Gen": {"max_len": 5}, "openai": {"base_url": "http://h/v1"}}


def test_python_api_with_a_nameless_user_class(user_dir, coco, tmp_path):
    """build_index(corpus, idx, MyEncoder()) records a class without a name by its import path,
    so Searcher(idx) alone (and `mmrag search`) rebuild it."""
    import my_parts

    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.retrieval import Searcher

    idx = tmp_path / "idx"
    build_index(read_corpus("coco", coco, limit=3), idx, my_parts.Nameless(), IndexConfig(progress=False))
    assert json.loads((idx / "manifest.json").read_text())["encoder"] == "my_parts:Nameless"
    assert isinstance(Searcher(idx).encoder, my_parts.Nameless)
    assert len(json.loads(run("search", "--index", idx, "--text", "a dog", "-k", 2, "--json"))) == 2


def test_encoder_flag_on_an_index_names_the_user_encoder_cleanly(user_dir, coco, tmp_path, capsys):
    """The one-line refusals that name the index's encoder read 'built with my_parts:HistEncoder,'
    and '... HistEncoder (dim 48)' (a stray space stood where options without any were printed)."""
    idx = tmp_path / "idx"
    run("index", coco, "--kind", "coco", "--limit", 3, "--out", idx, "--encoder", "my_parts:HistEncoder")
    err = _main_fails(capsys, "eval", "chat", "--index", idx, "--encoder", "effnet-minilm")
    assert "it was built with my_parts:HistEncoder, which is used" in err
    err = _main_fails(capsys, "index", coco, "--kind", "coco", "--limit", 3, "--out", idx, "--encoder", "my_parts:Nameless")
    assert "built with encoder my_parts:HistEncoder (dim 48); refusing to mix in my_parts:Nameless vectors" in err


def test_installed_parts_are_read_once_per_import_path(user_dir, monkeypatch):
    """The server checks a generator name per request: the installed packages' metadata (~10 ms
    to read) is read once, and again only when sys.path changes."""
    import importlib.metadata as md

    from mmrag.generators import GENERATORS

    reads = []
    real = md.entry_points

    def counting(**kw):
        reads.append(kw)
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", counting)
    monkeypatch.syspath_prepend(str(user_dir / "empty"))  # a new import path: read again
    for _ in range(5):
        assert "consensus" in GENERATORS.names()
    assert len(reads) == 1
