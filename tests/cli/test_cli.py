"""The command-line conventions shared by every verb: --gen-opt values, naming a corpus (PATH,
--kind, --split default/all, the hidden --dataset/--data-dir aliases) and encoders chosen once
(a task verb on an index uses the encoder recorded in the index's manifest)."""

from __future__ import annotations

import json

import typer
import pytest
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.cli.common import parse_gen_opts, parse_generator_options


def _run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


# ---------------------------------------------------------------------- --gen-opt

def test_gen_opt_values_are_json_when_they_parse():
    opts = parse_gen_opts(["max_tokens=64", "model=foo", "temperature=0.5", "stream=false", 'stop=["\\n"]',
                           "base_url=http://127.0.0.1:8080/v1", "empty=", "eq=a=b"])
    assert opts == {"max_tokens": 64, "model": "foo", "temperature": 0.5, "stream": False, "stop": ["\n"],
                    "base_url": "http://127.0.0.1:8080/v1", "empty": "", "eq": "a=b"}
    with pytest.raises(typer.Exit) as e:
        parse_gen_opts(["no-equals-sign"])
    assert e.value.exit_code == 2
    # serve keeps GENERATOR.KEY=VALUE, with the same value rule
    assert parse_generator_options(["openai.base_url=http://h:1/v1", "openai.timeout=30", "local.max_tokens=8"]) == {
        "openai": {"base_url": "http://h:1/v1", "timeout": 30}, "local": {"max_tokens": 8}}
    with pytest.raises(typer.Exit):
        parse_generator_options(["timeout=30"])


def test_gen_opt_error_is_one_line(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.jpg")  # a readable image: the option is what fails
    r = _run("caption", tmp_path / "x.jpg", "--datastore", tmp_path / "none.npz", "--gen-opt", "oops")
    assert r.exit_code == 2 and "error: --gen-opt takes KEY=VALUE, got 'oops'" in r.output


# ---------------------------------------------------------------------- corpus and split

@pytest.fixture(scope="module")
def coco_sample(data_dir):
    p = data_dir / "coco_sample"
    if not (p / "captions_val2017_sample.json").exists():
        pytest.skip("coco_sample not found")
    return p


@pytest.fixture(scope="module")
def own_photos(coco_sample, tmp_path_factory):
    """A JSONL manifest of one's own photos: real COCO images and captions, no split field."""
    from mmrag.corpus.readers import read_corpus

    items = read_corpus("coco", coco_sample / "captions_val2017_sample.json").items[:12]
    p = tmp_path_factory.mktemp("own") / "my.jsonl"
    p.write_text("".join(json.dumps({"image": str(it.path), "captions": it.captions[:2]}) + "\n" for it in items))
    return p, items


def test_split_default_and_all_on_a_corpus_without_splits(own_photos, tmp_path):
    from mmrag.corpus.readers import read_corpus, resolve_split

    path, items = own_photos
    assert resolve_split("jsonl", path, "default") is None and resolve_split("auto", path, "all") is None
    assert len(read_corpus("jsonl", path, split="default")) == len(items)
    assert len(read_corpus("auto", path, split="all")) == len(items)
    # with split fields, default means test
    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps({"image": str(it.path), "captions": it.captions, "split": s}) + "\n"
                             for it, s in zip(items, ["train"] * 8 + ["test"] * 4)))
    assert resolve_split("jsonl", split, "default") == "test"
    assert [it.id for it in read_corpus("jsonl", split, split="default").items] == \
        [it.id for it in read_corpus("jsonl", split, split="test").items]
    assert len(read_corpus("jsonl", split, split="all")) == 12
    assert resolve_split("flickr8k", "unused", "default") == "test"
    assert resolve_split("folder", "unused", "default") is None and resolve_split("coco", "x", "dev") == "dev"


def test_split_default_on_a_folder_holding_a_manifest(own_photos, tmp_path):
    """A folder with a captions.jsonl (as ../shared/data/coco_dev) is auto-detected as that manifest,
    also when the default split looks at its rows (it was read as a folder: 'needs the manifest file')."""
    from mmrag.corpus.readers import read_corpus, resolve_split

    _, items = own_photos
    (tmp_path / "captions.jsonl").write_text("".join(
        json.dumps({"image": str(it.path), "captions": it.captions, "split": s}) + "\n"
        for it, s in zip(items, ["dev"] * 8 + ["test"] * 4)))
    assert resolve_split("auto", tmp_path, "default") == "test"
    assert len(read_corpus("auto", tmp_path, split=resolve_split("auto", tmp_path, "default"))) == 4


def test_eval_retrieval_on_own_photos_evaluates_all(own_photos, tmp_path):
    path, items = own_photos
    out = tmp_path / "r.json"
    r = _run("eval", "retrieval", path, "--kind", "jsonl", "--json", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_images"] == len(items) and res["split"] is None
    # the old spelling still works (hidden aliases) and gives the same numbers
    out2 = tmp_path / "r2.json"
    r = _run("eval", "retrieval", "--dataset", "jsonl", "--data-dir", path, "--split", "all", "--json", out2)
    assert r.exit_code == 0, r.output
    assert json.loads(out2.read_text())["t2i"] == res["t2i"]
    r = _run("eval", "retrieval", "--kind", "jsonl")
    assert r.exit_code == 2 and "give the corpus PATH" in r.output


# ---------------------------------------------------------------------- encoders chosen once

@pytest.fixture(scope="module")
def bridged_index(coco_sample, tmp_path_factory):
    """An effnet-minilm index built with a non-default bridge, fitted on the 100 COCO sample images
    (at least 384 captions: fewer give a bridge whose text space has fewer dimensions than it reports)."""
    root = tmp_path_factory.mktemp("bridged")
    bridge = root / "b.npz"
    r = _run("bridge", "fit", coco_sample, "--kind", "coco", "--split", "all", "--out", bridge)
    assert r.exit_code == 0, r.output
    idx = root / "idx"
    r = _run("index", coco_sample, "--kind", "coco", "--limit", "8", "--bridge", bridge, "--out", idx)
    assert r.exit_code == 0, r.output
    return idx, bridge


def test_caption_uses_the_index_encoder(bridged_index, coco_sample, tmp_path):
    from mmrag.corpus.readers import read_corpus
    from mmrag.encoders import create_encoder
    from mmrag.index.collection import Collection
    from mmrag.tasks.captioning import CaptionDatastore

    idx, bridge = bridged_index
    m = Collection.open(idx).manifest
    assert m.encoder == "effnet-minilm" and m.encoder_options.get("bridge")
    enc = create_encoder("effnet-minilm", bridge=str(bridge))
    corpus = read_corpus("coco", coco_sample / "captions_val2017_sample.json")
    ds = CaptionDatastore.from_corpus(corpus, enc, cache=False).save(tmp_path / "ds.npz")
    img = corpus.items[50].path

    def evidence(*opts):
        r = _run("caption", img, "--datastore", ds, "--k", "5", "--json", *opts)
        assert r.exit_code == 0, r.output
        return [(h["text"], h["score"]) for h in json.loads(r.stdout)[0]["evidence"]], r.output

    by_index, said = evidence("--index", idx)
    assert "warning" not in said  # the datastore's encoder is the index's
    by_bridge, _ = evidence("--bridge", bridge)
    default, said = evidence()
    assert by_index == by_bridge and by_index != default
    assert "was built with encoder" in said  # the shipped bridge is not the datastore's
    r = _run("caption", img, "--datastore", ds, "--index", idx, "--encoder", "clip")
    assert r.exit_code == 2 and "do not apply" in r.output


def test_chat_and_ask_search_with_the_index_encoder(bridged_index, tmp_path):
    from mmrag.encoders import create_encoder
    from mmrag.retrieval import Searcher

    idx, bridge = bridged_index
    enc = create_encoder("effnet-minilm", bridge=str(bridge))
    expected = Searcher(idx, encoder=enc).search(text="a dog on a couch", k=3)
    out = tmp_path / "chat.json"
    r = _run("chat", "--index", idx, "-d", "a dog on a couch", "-k", "3", "--rounds", "0", "-a", "yes",
             "--captions", "index", "--json", out)
    assert r.exit_code == 0, r.output
    hits = json.loads(out.read_text())["turns"][0]["hits"]
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert [round(h["score"], 4) for h in hits] == [round(h.score, 4) for h in expected]
    # ask builds its provider from the index directory alone: it searches with the manifest's encoder
    from mmrag.tasks.rir.providers import create_provider

    prov = create_provider("index", index_dir=idx)
    assert prov.encoder.fingerprint() == enc.fingerprint() != create_encoder("effnet-minilm").fingerprint()


# ---------------------------------------------------------------------- a photo index (no captions)

@pytest.fixture(scope="module")
def photo_index(coco_sample, tmp_path_factory):
    """``mmrag index`` over a plain folder of 4 photos: no captions, no QA pairs."""
    import shutil

    root = tmp_path_factory.mktemp("photos")
    (root / "pics").mkdir()
    for p in sorted((coco_sample / "images").glob("*.jpg"))[:4] if (coco_sample / "images").is_dir() else \
            sorted(coco_sample.rglob("*.jpg"))[:4]:
        shutil.copy(p, root / "pics" / p.name)
    r = _run("index", root / "pics", "--out", root / "idx")
    assert r.exit_code == 0, r.output
    return root / "idx", sorted((root / "pics").glob("*.jpg"))


def test_photo_index_output_is_readable_and_says_what_cannot_work(photo_index, tmp_path):
    idx, pics = photo_index
    r = _run("info", "--index", idx)
    assert r.exit_code == 0 and "{'" not in r.stdout and "['" not in r.stdout, r.stdout  # no Python reprs
    r = _run("search", "--index", idx, "--text", "a photo", "-k", "2")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "score" in line)  # the table's header row
    assert "caption" not in header and "path" in header and str(pics[0].parent) in r.stdout.replace("\n", "")
    # errors as the user sees them (main() turns library errors into one line, exit 2)
    from tests.cli.test_cli_errors import run_cli

    r = run_cli("search", "--index", str(idx), "--image", str(pics[0]), "--target", "captions")
    assert r.returncode == 2 and "no captions" in r.stderr, r.stderr
    r = run_cli("ask", str(pics[0]), "Is there a dog?", "--index", str(idx))
    assert r.returncode == 2 and "neither QA pairs nor captions" in r.stderr, r.stderr
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    # the image is checked before the index (and its model) is opened: a missing index is not reached
    r = run_cli("ask", str(bad), "Is there a dog?", "--index", str(tmp_path / "no-such-index"))
    assert r.returncode == 2 and "broken.jpg" in r.stderr and "no-such-index" not in r.stderr, r.stderr
