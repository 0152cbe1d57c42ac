"""The text-query path of the command line stays light: `import mmrag.cli` and a text search on an
effnet-minilm index load no torch/transformers/sentence-transformers/sklearn (their import is
most of a slow start; the ONNX path needs none of them). A behaviour test, not a timing one:
the timing is benchmarks/bench_cli_start.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn")


def _loaded_after(code: str) -> list[str]:
    code += f"\nimport sys\nprint('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_import_cli_loads_no_heavy_module():
    assert _loaded_after("import mmrag.cli") == []


def test_text_search_loads_no_heavy_module(effnet_minilm, data_dir, tmp_path):
    from mmrag.corpus.readers import read_corpus
    from mmrag.embedding import IndexConfig, build_index

    if effnet_minilm.text.backend != "onnx":
        pytest.skip("MiniLM runs on sentence-transformers here (no onnxruntime): torch is needed")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((data_dir / "coco_sample" / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, photos / p.name)
    build_index(read_corpus("folder", photos), tmp_path / "idx", effnet_minilm, IndexConfig(progress=False))
    code = ("from mmrag.cli import app\n"
            f"try:\n    app(['search', '--index', {str(tmp_path / 'idx')!r}, '--text', 'a dog', '-k', '2'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code")
    assert _loaded_after(code) == []
