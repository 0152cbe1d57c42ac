"""Start-up cost of the command line: wall time of fresh processes, as a user runs them.

    python benchmarks/bench_cli_start.py [--index IDX] [--images N] [--runs 7] [--json benchmarks/results/cli_start.json]

Commands timed (each a new ``python -m mmrag.cli`` process, ``--runs`` times; median, min, max):
``mmrag --help``, ``mmrag search --text`` (effnet-minilm's ONNX text path, FAISS) and
``mmrag info`` on a small index (``--index``, else one built once from the first ``--images``
photos of ../shared/data/coco_sample). Also lists which heavy modules the text search imports
(torch, transformers, sentence-transformers, sklearn must not be among them). The load average
is printed: on a busy machine the times are not the start-up cost alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "scipy", "pandas", "pyarrow",
         "onnxruntime", "faiss", "PIL", "ray", "fastapi")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}


def _time(cmd: list[str], runs: int) -> dict:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-500:]}")
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "max_s": round(max(walls), 3), "runs": runs}


def _imports(index: Path) -> list[str]:
    code = ("import sys\nfrom mmrag.cli import app\n"
            f"sys.argv = ['mmrag', 'search', '--index', {str(index)!r}, '--text', 'a dog', '-k', '3']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True)
    return [m for m in r.stderr.strip().splitlines()[-1].split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "cli_start.json")
    a = ap.parse_args()
    tmp = None
    index = a.index
    if index is None:
        photos = REPO.parent / "shared" / "data" / "coco_sample" / "images"
        tmp = Path(tempfile.mkdtemp(prefix="bench_cli_start_"))
        (tmp / "photos").mkdir()
        for p in sorted(photos.glob("*.jpg"))[: a.images]:
            shutil.copy(p, tmp / "photos" / p.name)
        index = tmp / "idx"
        subprocess.run([sys.executable, "-m", "mmrag.cli", "index", str(tmp / "photos"), "--out", str(index)],
                       cwd=REPO, env=_env(), check=True, capture_output=True)
    py = [sys.executable, "-m", "mmrag.cli"]
    load_before = os.getloadavg()[0]
    rows = {
        "python -c pass": _time([sys.executable, "-c", "pass"], a.runs),
        "mmrag --help": _time(py + ["--help"], a.runs),
        "mmrag info": _time(py + ["info", "--index", str(index)], a.runs),
        "mmrag search --text": _time(py + ["search", "--index", str(index), "--text", "a dog", "-k", "5"], a.runs),
    }
    heavy = _imports(index)
    res = {"commands": rows, "text_search_imports": heavy, "index": str(index),
           "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"{'command':<24}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, r in rows.items():
        print(f"{name:<24}{r['median_s']:>10.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}")
    print(f"text search imports: {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}")
    print(f"load average (1 min) before/after: {res['load_average_1min']}")
    write_results(a.json, res)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
