"""benchmarks/common.py: one machine description and one way to write results, used by every script."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _common():
    # benchmarks/ is a folder of scripts, not a package: load the helper the way a script sees it
    spec = importlib.util.spec_from_file_location("bench_common_under_test", BENCH / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_results_adds_machine_command_date(tmp_path, capsys, monkeypatch):
    common = _common()
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_x.py"), "--size", "two words"])
    out = tmp_path / "sub" / "x.json"
    data = {"rows": [{"a": 1}]}
    assert common.write_results(out, data) == out
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["rows"] == [{"a": 1}] and "machine" not in data  # the caller's dict is left alone
    m = got["machine"]
    for key in ("platform", "processor", "cpu_cores", "memory_gib", "python", "versions", "load_avg_start",
                "git_commit"):
        assert key in m, key
    assert m["cpu_cores"] >= 1 and m["versions"]["numpy"]
    # the command as typed from the repository root, quoted so that it can be pasted back
    assert got["command"] == "python benchmarks/bench_x.py --size 'two words'"
    assert datetime.fromisoformat(got["date"]).tzinfo is not None
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]  # no temp file left behind


def test_given_machine_is_kept_and_extra_keys_added(tmp_path, capsys):
    common = _common()
    p = common.write_results(tmp_path / "y.json", {"machine": common.machine(faiss_omp_threads=3)})
    m = json.loads(p.read_text())["machine"]
    assert m["faiss_omp_threads"] == 3 and "platform" in m


def test_no_benchmark_writes_json_its_own_way():
    """Every script's JSON goes through write_results (so it carries machine, command and date)."""
    offenders = []
    for f in sorted(BENCH.glob("*.py")):
        if f.name == "common.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            # json.dumps(...) handed to a write, or json.dump(...) straight into a file
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "write_text" and any(
                        isinstance(a, ast.Call) and getattr(a.func, "attr", "") == "dumps" for a in node.args):
                    offenders.append(f"{f.name}:{node.lineno}")
                elif node.func.attr == "dump" and getattr(node.func.value, "id", "") == "json":
                    offenders.append(f"{f.name}:{node.lineno}")
    assert not offenders, f"write results with common.write_results: {offenders}"
