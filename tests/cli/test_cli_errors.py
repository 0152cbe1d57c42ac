"""Bad values on the command line: one line ``error: ...`` on stderr, exit 2, never a traceback
(every verb, run as the user runs it: ``python -m mmrag.cli`` in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def idx(tmp_path_factory, flickr8k_dir, effnet_minilm):
    from serve_helpers import build_serve_index

    out, items = build_serve_index(flickr8k_dir, tmp_path_factory.mktemp("cli_errors") / "idx", effnet_minilm)
    return out, items


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "mmrag.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


# (argv with {idx} and {img} placeholders, a word the message must contain)
BAD = [
    (["search", "--index", "{idx}"], "give a text"),
    (["bridge", "image-prior", "x", "--gate-quantile", "2"], "--gate-quantile must be within"),
    (["bridge", "image-prior", "x", "--alpha", "0"], "--alpha and --beta must be > 0"),
    (["search", "--index", "{idx}", "--text", ""], "empty text"),
    (["search", "--index", "{idx}", "--text", " "], "empty text"),
    (["search", "--index", "{idx}", "--text", "dog", "--weight", "2"], "weight"),
    (["search", "--index", "{idx}", "--text", "dog", "--weight", "nan"], "weight"),
    (["search", "--index", "{idx}", "--text", "dog", "--target", "bogus"], "target"),
    (["search", "--index", "{idx}", "--text", "dog", "-k", "0"], "k must"),
    (["search", "--index", "{idx}", "--text", "dog", "-k", "-1"], "k must"),
    (["search", "--index", "{idx}", "--text", "dog", "-k", "many"], "-k"),
    (["search", "--index", "{idx}", "--text", "dog", "--where", "split"], "--where"),
    (["search", "--index", "{idx}", "--text", "dog", "--where", "=x"], "--where: filter keys must be non-empty"),
    (["search", "--index", "{idx}", "--text", "dog", "-k", "99999999999999999999"], "k must be a whole number in [1,"),
    (["search", "--index", "{idx}", "--text", "dog", "--mode", "keyword", "-k", "9223372036854775808"], "k must"),
    (["search", "--index", "{idx}", "--image", "/no/such.jpg"], "no such image"),
    (["search", "--index", "/no/such/index", "--text", "dog"], "not an mmrag index"),
    (["search", "--text", "dog"], "--index"),
    (["search", "--index", "{idx}", "--bogus"], "No such option"),
    (["info", "--index", "/no/such/index"], "not an mmrag index"),
    (["nonverb"], "No such command"),
    (["index", "/no/such/folder", "--out", "{tmp}/o"], "/no/such/folder"),
    (["index", "{flickr}", "--out", "{tmp}/o2", "--engine", "bogus"], "--engine"),
    (["index", "{flickr}", "--out", "{tmp}/o3", "--limit", "0"], "--limit"),
    (["index", "{flickr}", "--out", "{tmp}/o4", "--batch-size", "0"], "--batch-size"),
    (["index", "{flickr}", "--kind", "flickr8k", "--split", "test", "--limit", "1", "--out", "{file}"],
     "is a file, not an index directory"),
    (["index", "{flickr}", "--out", "{tmp}/o5", "--encoder", "bogus"], "unknown encoder 'bogus'"),
    (["caption", "/no/such.jpg"], "no such image file: /no/such.jpg"),
    (["chat", "--index", "{idx}", "-d", "a dog", "-k", "0"], "-k"),
    (["chat", "--index", "{idx}", "-d", "a dog", "--rounds", "-1"], "--rounds"),
    (["chat", "--index", "{idx}", "-d", "a dog", "--questioner", "bogus"], "questioner"),
    (["chat", "--index", "{idx}", "-d", "a dog", "--rescore-weight", "inf"], "rescore_weight must be a finite number"),
    (["chat", "--index", "{idx}", "-d", "a dog", "--captions", "bogus"], "unknown caption source 'bogus'"),
    (["ask", "--index", "{idx}", "/no/such.jpg", "what is it?"], "no such image"),
    (["ask", "--index", "{idx}", "{img}", " "], "question"),
    (["ask", "--index", "{idx}", "{img}", "what is it?", "--k", "0"], "k must be at least 1"),
    (["compose", "what is attention?"], "--docs"),
    (["compose", "--docs", "{tmp}", "q", "--render", "bogus"], "--render"),
    (["compose", "--docs", "{tmp}", "q", "--ocr"], "--ocr needs --ingest"),
    (["compose", "--docs", "{tmp}", "q", "--use-ocr"], "--use-ocr needs --index"),
    (["compose", "--docs", "{tmp}", "q", "--threshold", "nan"], "--threshold must be a finite number"),
    (["compose", "--docs", "{tmp}", "q", "--threshold", "inf"], "--threshold must be a finite number"),
    (["compose", "--docs", "{tmp}", "q", "--top-chunks", "0"], "--top-chunks must be at least 1"),
    (["compose", "--docs", "{tmp}", "q", "--max-images", "-1"], "--max-images must be 0 or more"),
    (["serve", "--index", "/no/such/index"], "/no/such/index"),
    (["serve", "--index", "{idx}", "--max-wait-ms", "nan"], "max_wait_ms must be a finite number"),
    (["serve", "--index", "{idx}", "--max-wait-ms", "-1"], "max_wait_ms must be a finite number"),
    (["serve", "--index", "{idx}", "--text-workers", "0"], "text_workers must be >= 1"),
    (["serve", "--index", "{idx}", "--max-upload-mb", "inf"], "--max-upload-mb must be a finite number"),
    (["serve", "--index", "{idx}", "--max-upload-mb", "nan"], "--max-upload-mb must be a finite number"),
    (["serve", "--index", "{idx}", "--max-k", "0"], "max_k must be >= 1"),
    (["serve", "--index", "{idx}", "--port", "99999"], "--port must be within"),
    (["eval", "retrieval", "/no/such/folder"], "/no/such/folder"),
    (["eval", "retrieval", "{idx}", "--kind", "bogus"], "bogus"),
    (["eval", "chat", "{flickr}", "--search-space", "bogus"], "--search-space"),
    (["eval", "imageref", "{tmp}", "--placement", "bogus"], "--placement"),
    (["eval", "imageref", "{tmp}", "--capacity", "0"], "--capacity"),
    (["eval", "imageref", "{tmp}", "--capacity-rule", "bogus"], "--capacity-rule"),
    (["eval", "imageref", "{tmp}", "--slot-penalty", "-1"], "--slot-penalty"),
    (["eval", "imageref", "{tmp}", "--threshold", "nan"], "--threshold must be a finite number"),
    (["bridge", "fit", "/no/such/folder", "--out", "{tmp}/b.npz"], "/no/such/folder"),
]


@pytest.mark.parametrize("argv,word", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_errors(idx, tmp_path, flickr8k_dir, argv, word):
    index_dir, items = idx
    (tmp_path / "file.txt").write_text("not an index\n")
    subst = {"{idx}": str(index_dir), "{img}": str(items[0].path), "{tmp}": str(tmp_path),
             "{flickr}": str(flickr8k_dir), "{file}": str(tmp_path / "file.txt")}
    args = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    p = run_cli(*args)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr[-1500:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, p.stderr
    assert word in errors[0], errors[0]


@pytest.mark.parametrize("broken", ["bridge", "image prior"])
def test_an_unreadable_bridge_or_image_prior_is_a_one_line_error(tmp_path, flickr8k_dir, broken):
    """A corrupt bridge file, or a corrupt image-prior sidecar beside a good one, names the file."""
    import shutil

    from mmrag.encoders.effnet_minilm import resolve_bridge

    bridge = tmp_path / "mine.npz"
    shutil.copy(resolve_bridge(None), bridge)
    bad = bridge if broken == "bridge" else tmp_path / "mine.image_prior.npz"
    bad.write_bytes(b"not an npz file")
    p = run_cli("index", str(flickr8k_dir), "--out", str(tmp_path / "o"), "--limit", "2", "--bridge", str(bridge))
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.returncode == 2, (p.returncode, p.stderr[-1500:])
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and f"{broken} '{bad}'" in errors[0] and "unreadable" in errors[0], p.stderr


HELP_SCRIPT = r"""
import contextlib, io, json, sys
import typer
from mmrag.cli import app, main

def walk(cmd, path):
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from walk(sub, path + [name])
    else:
        names = [o for p in cmd.params if not getattr(p, "hidden", False) for o in (*p.opts, *p.secondary_opts)
                 if o.startswith("-")]
        yield path, names

out = []
for path, names in walk(typer.main.get_command(app), []):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(path + ["--help"])
        except SystemExit:
            pass
    out.append({"verb": " ".join(path), "names": names, "help": buf.getvalue()})
print(json.dumps(out))
"""


def test_help_shows_every_option_name_in_full_at_80_columns():
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    p = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    verbs = json.loads(p.stdout)
    assert len(verbs) >= 15 and {"search", "serve", "eval imageref"} <= {v["verb"] for v in verbs}
    for v in verbs:
        assert v["help"].strip(), v["verb"]
        words = set(v["help"].replace(",", " ").replace("/", " ").split())
        missing = [n for n in v["names"] if n not in words]
        assert not missing, f"mmrag {v['verb']} --help at 80 columns lacks {missing}"
        assert "…" not in v["help"], f"mmrag {v['verb']} --help cuts text"
