"""What every benchmark script shares: one description of the machine and one way to write results.

    from common import machine, write_results   # scripts run as ``python benchmarks/X.py``

    write_results(a.json, {"rows": rows})        # adds "machine", "command", "date"; prints "wrote PATH"
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmrag.paths import write_json  # noqa: E402

# Taken when the script imports this module, i.e. before it starts measuring: a busy machine at
# the start explains slow figures better than the load the benchmark itself caused by the end.
_LOAD_AT_START = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None

# module name -> distribution names to try when the module is not imported yet
_PACKAGES = {"numpy": ("numpy",), "torch": ("torch",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
             "faiss": ("faiss-cpu", "faiss-gpu", "faiss")}


def _version(module: str) -> str | None:
    # The loaded module's own version when the script imported it (what actually ran); otherwise
    # the installed distribution's, read from its metadata so that torch is not imported for it.
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    from importlib.metadata import PackageNotFoundError, version

    for dist in _PACKAGES[module]:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _processor() -> str:
    # platform.processor() is empty or just "x86_64" on Linux; the model name says more.
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _git() -> dict:
    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None}
    # uncommitted changes to tracked files mean the commit alone does not reproduce the run
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def machine(**extra) -> dict:
    """The machine a benchmark ran on, in one shape for every script; ``extra`` keys are added last."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    out = {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "processor": _processor(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "versions": {m: v for m in _PACKAGES if (v := _version(m)) is not None},
    }
    if os.environ.get("OPENBLAS_CORETYPE"):
        out["openblas_coretype"] = os.environ["OPENBLAS_CORETYPE"]
    out["load_avg_start"] = _LOAD_AT_START
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    out.update(_git())
    out.update(extra)
    return out


def command() -> str:
    """The command line that produced this run, as one would type it from the repository root."""
    argv = list(sys.argv)
    if argv:
        p = Path(argv[0]).resolve()
        if p.is_relative_to(ROOT):
            argv[0] = p.relative_to(ROOT).as_posix()
    return "python " + shlex.join(argv)


def write_results(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as JSON atomically, with ``machine`` (unless given), ``command`` and ``date``.

    Prints ``wrote PATH`` on stderr, so stdout keeps only the script's table."""
    out = dict(data)
    out.setdefault("machine", machine())
    out.setdefault("command", command())
    out.setdefault("date", datetime.now().astimezone().isoformat(timespec="seconds"))
    path = write_json(path, out)
    print(f"wrote {path}", file=sys.stderr)
    return path
