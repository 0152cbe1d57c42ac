"""Captioning metrics as the COCO caption evaluation computes them (``pycocoevalcap``).

:func:`caption_scores` returns, for a set of predicted captions and their reference captions,
BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and (when its jars are there) SPICE, all ×100, in the way
published captioning results are computed:

* Captions are tokenised with Stanford's PTBTokenizer (Java, the jar ships with pycocoevalcap),
  lower-cased, and the tokens in :data:`PTB_PUNCTUATIONS` are dropped. Without Java a Python
  tokeniser that mimics it (:func:`simple_ptb_tokenize`) is used instead; the result says which
  (``"tokenizer"``).
* BLEU (``closest`` reference length), ROUGE-L and CIDEr-D are pycocoevalcap's own scorers
  (pycocoevalcap's ``Cider`` is CIDEr-D: clipped n-gram counts, Gaussian length penalty,
  σ = 6, ×10; document frequencies come from the references of the evaluated images).
* Every reference caption is kept, empty ones too (``""`` or only spaces: an empty token
  list), as coco-caption keeps them: an empty reference adds nothing to an image's summed
  similarity but counts in CIDEr-D's division by the number of references (and takes part in
  BLEU's closest-length choice, ROUGE-L's and METEOR's maximum over references), so it lowers
  the score. The result counts them in ``"n_empty_references"`` (present when any). An image
  whose references are *all* empty, or a reference that is not a string, is an error (for
  coco-caption an all-empty image silently scores 0; a non-string crashes its tokeniser).
* METEOR 1.5 runs pycocoevalcap's jar in ``-stdio`` mode through :class:`MeteorProcess`, a wrapper
  that fixes the known failure modes of pycocoevalcap's own (hangs when Java writes to a full
  stderr pipe or dies; "could not convert string to float" under a locale with decimal commas;
  newlines or ``|||`` in a caption desynchronising the protocol; no clean shutdown).
* SPICE needs Stanford CoreNLP 3.6.0 (``stanford-corenlp-3.6.0.jar`` and
  ``stanford-corenlp-3.6.0-models.jar``), which pycocoevalcap downloads on first use. mmrag never
  downloads it: SPICE runs when both jars are in pycocoevalcap's ``spice/lib`` folder (or in
  ``$MMRAG_SPICE_LIB``) and is skipped with the reason otherwise.

A metric that cannot run (no Java, a jar missing, the Java process failing) is left out of the
result and named in ``result["skipped"]`` with the reason; the other metrics are still computed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Hashable

from mmrag.errors import MmragError

__all__ = [
    "DEFAULT_METRICS",
    "MeteorProcess",
    "PTB_PUNCTUATIONS",
    "caption_scores",
    "cider_d_per_image",
    "find_java",
    "ptb_tokenize",
    "simple_ptb_tokenize",
]

DEFAULT_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")

#: Tokens that pycocoevalcap's PTBTokenizer wrapper removes after tokenising (its own list).
#: Note that the tokeniser is run with ``-lowerCase``, so brackets come out as ``-lrb-`` etc.
#: and, as in every published COCO-style number, are *not* removed by the upper-case entries.
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_ALIASES = {
    "bleu": "BLEU",
    "meteor": "METEOR",
    "rouge_l": "ROUGE_L", "rouge-l": "ROUGE_L", "rougel": "ROUGE_L", "rouge": "ROUGE_L",
    "cider": "CIDEr", "cider-d": "CIDEr", "cider_d": "CIDEr", "ciderd": "CIDEr",
    "spice": "SPICE",
}

# Characters Java's line reader (or Python's splitlines) may treat as line ends: a caption
# containing one would shift every later line of the tokeniser's output.
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


class CaptionMetricError(MmragError):
    """Captioning metrics could not be computed (bad input, or a Java scorer failed)."""


# --------------------------------------------------------------------------- Java


def find_java(java: str | None = "auto") -> str | None:
    """The ``java`` executable to use, or None.

    ``"auto"``: ``$MMRAG_JAVA`` if set, else ``java`` on ``PATH``; ``None``: never use Java (the
    Python fallbacks are used); any other string: that executable (None if it does not exist).
    """
    if java is None:
        return None
    if java == "auto":
        java = os.environ.get("MMRAG_JAVA") or "java"
    return shutil.which(java)


def _pycocoevalcap_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise CaptionMetricError(
            "pycocoevalcap is not installed; install it with `pip install pycocoevalcap`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _java_env() -> dict[str, str]:
    # Java's number formatting follows the locale: under e.g. de_DE METEOR prints "0,5" and the
    # Scanner it reads its own stats back with fails. -Duser.* on the command line fixes Java's
    # side; LC_ALL fixes anything the JVM takes from the environment.
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.pop("JAVA_TOOL_OPTIONS", None)  # it makes the JVM print a banner on stderr
    return env


_JAVA_PROPS = ["-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8"]


def _one_line(text: str) -> str:
    return " ".join(_LINE_BREAKS.sub(" ", str(text)).split())


# --------------------------------------------------------------------------- tokenisation

_CONTRACTION = re.compile(r"(?i)(\w)(n't)\b|(\w)('(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"\.\.\.|--|n't\b|'(?:s|re|ve|ll|d|m)\b|(?:[^\W\d_]\.){2,}|\w+(?:[-./]\w+)*|\S", re.UNICODE
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def simple_ptb_tokenize(text: str) -> str:
    """Python stand-in for pycocoevalcap's Java tokenisation (used when Java is missing).

    Mimics ``PTBTokenizer -preserveLines -lowerCase`` followed by the removal of
    :data:`PTB_PUNCTUATIONS`: lower-cases; splits off clitics (``dog's`` -> ``dog 's``,
    ``can't`` -> ``ca n't``); splits punctuation and symbols off words while keeping hyphenated
    words, decimals and ``a/b`` whole; turns brackets into ``-lrb-`` etc.; drops quotes and the
    listed punctuation. It agrees with the Java tokeniser on nearly all plain captions; rare
    forms (abbreviations such as ``e.g.``, URLs) may differ.
    """
    s = _one_line(text).lower()

    def split_clitic(m: re.Match) -> str:
        if m.group(1):  # "can't" -> "ca n't", "won't" -> "wo n't" (what PTB emits)
            return f"{m.group(1)} {m.group(2)}"
        return f"{m.group(3)} {m.group(4)}"  # "dog's" -> "dog 's"

    s = _CONTRACTION.sub(split_clitic, s)
    out = []
    for tok in _TOKEN.findall(s):
        tok = _BRACKETS.get(tok, tok)
        if tok in PTB_PUNCTUATIONS or tok == '"':
            continue
        out.append(tok)
    return " ".join(out)


def _tokenize_java(texts: Sequence[str], java: str, timeout: float) -> list[str]:
    jar_dir = _pycocoevalcap_dir() / "tokenizer"
    jar = jar_dir / "stanford-corenlp-3.4.1.jar"
    if not jar.exists():
        raise CaptionMetricError(f"{jar} is missing (broken pycocoevalcap install)")
    lines = [_one_line(t) for t in texts]
    with tempfile.TemporaryDirectory(prefix="mmrag-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cmd = [java, *_JAVA_PROPS, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(src)]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, env=_java_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CaptionMetricError(f"PTBTokenizer did not finish within {timeout:.0f} s") from None
        except OSError as e:
            raise CaptionMetricError(f"cannot run {java}: {e}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise CaptionMetricError(f"PTBTokenizer exited with {proc.returncode}: {tail}")
    out = proc.stdout.decode("utf-8", "replace").split("\n")
    if len(out) >= len(lines) + 1 and not any(out[len(lines):]):
        out = out[: len(lines)]
    if len(out) != len(lines):
        raise CaptionMetricError(
            f"PTBTokenizer returned {len(out)} lines for {len(lines)} captions"
        )
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATIONS)
            for line in out]


def ptb_tokenize(texts: Sequence[str], java: str | None = "auto",
                 timeout: float | None = None) -> tuple[list[str], str]:
    """Tokenise captions as pycocoevalcap does; returns ``(tokenised, how)``.

    ``how`` is ``"PTBTokenizer (Java)"``, or ``"python fallback (<reason>)"`` when Java is not
    available or the Java tokeniser failed.
    """
    texts = list(texts)
    java_path = find_java(java)
    if java_path is None:
        reason = "Java disabled" if java is None else "Java not found"
    else:
        try:
            t = timeout if timeout is not None else 120.0 + len(texts) / 2000.0
            return _tokenize_java(texts, java_path, t), "PTBTokenizer (Java)"
        except CaptionMetricError as e:
            reason = str(e)
    return [simple_ptb_tokenize(t) for t in texts], f"python fallback ({reason})"


# --------------------------------------------------------------------------- METEOR


class MeteorProcess:
    """METEOR 1.5 (pycocoevalcap's jar) in ``-stdio`` mode, robust to the known failure modes.

    * the JVM locale is forced to en_US, so scores are printed and read back with a decimal point;
    * stderr goes to a file, so a chatty or failing JVM can never block on a full pipe;
    * stdout is drained by a reader thread and every answer is awaited with a deadline, so a dead
      or stuck JVM is an error (with its stderr) instead of a hang;
    * captions are put on one line and ``|||`` (the field separator) is removed from them;
    * :meth:`close` (or leaving the ``with`` block) ends the JVM: stdin closed, then wait, then
      kill.

    ``score(hyps, refs)`` returns ``(corpus_score, per_item_scores)`` in 0..1, like
    pycocoevalcap's ``Meteor.compute_score`` (the corpus score is METEOR over the pooled
    statistics, not the mean of the per-item scores).
    """

    def __init__(self, java: str | None = "auto", memory: str = "2G", timeout: float = 120.0):
        java_path = find_java(java)
        if java_path is None:
            raise CaptionMetricError("METEOR needs Java (not found)")
        jar_dir = _pycocoevalcap_dir() / "meteor"
        jar = jar_dir / "meteor-1.5.jar"
        if not jar.exists() or not (jar_dir / "data" / "paraphrase-en.gz").exists():
            raise CaptionMetricError(f"METEOR jar or its paraphrase table is missing under {jar_dir}")
        self.timeout = float(timeout)
        self._stderr = tempfile.TemporaryFile()
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        cmd = [java_path, f"-Xmx{memory}", *_JAVA_PROPS, "-jar", str(jar),
               "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self._proc = subprocess.Popen(cmd, cwd=str(jar_dir), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr,
                                          env=_java_env())
        except OSError as e:
            self._stderr.close()
            raise CaptionMetricError(f"cannot start METEOR ({java_path}): {e}") from None
        self._reader = threading.Thread(target=self._read, name="meteor-stdout", daemon=True)
        self._reader.start()
        self._lock = threading.Lock()

    def _read(self) -> None:
        out = self._proc.stdout
        try:
            for line in iter(out.readline, b""):
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)  # EOF

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text[-600:]

    def _readline(self, deadline: float) -> str:
        left = deadline - time.monotonic()
        try:
            line = self._lines.get(timeout=max(left, 0.0))
        except queue.Empty:
            self.close()
            raise CaptionMetricError(
                f"METEOR gave no answer within {self.timeout:.0f} s; the JVM was stopped"
            ) from None
        if line is None:
            self._lines.put(None)
            code = self._proc.poll()
            raise CaptionMetricError(
                f"METEOR stopped (exit code {code}): {self._stderr_tail() or 'no message'}"
            )
        return line.decode("utf-8", "replace").strip()

    def _write(self, line: str) -> None:
        try:
            self._proc.stdin.write((line + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise CaptionMetricError(
                f"METEOR is not running: {self._stderr_tail() or 'the JVM exited'}"
            ) from None

    @staticmethod
    def _clean(text: str) -> str:
        return _one_line(str(text).replace("|||", " "))

    def score(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
        if len(hyps) != len(refs):
            raise ValueError("hyps and refs differ in length")
        if not hyps:
            raise CaptionMetricError("METEOR: nothing to score")
        with self._lock:
            deadline = time.monotonic() + self.timeout + 0.01 * len(hyps)
            stats = []
            # The reader thread drains stdout, so all requests can be written before reading.
            for h, rs in zip(hyps, refs):
                fields = [self._clean(r) for r in rs] + [self._clean(h)]
                self._write(" ||| ".join(["SCORE", *fields]))
            for _ in hyps:
                stats.append(self._readline(deadline))
            self._write(" ||| ".join(["EVAL", *stats]))
            try:
                per_item = [float(self._readline(deadline)) for _ in hyps]
                corpus = float(self._readline(deadline))
            except ValueError as e:
                raise CaptionMetricError(f"METEOR answered something unexpected: {e}") from None
        return corpus, per_item

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        try:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()  # METEOR exits at end of input
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
        self._reader.join(timeout=5)
        self._stderr.close()
        self._proc = None

    def __enter__(self) -> "MeteorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten process must not outlive the scorer
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- SPICE

_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _spice_lib_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("MMRAG_SPICE_LIB")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_pycocoevalcap_dir() / "spice" / "lib")
    return dirs


def _find_corenlp() -> Path | None:
    for d in _spice_lib_dirs():
        if all((d / j).is_file() for j in _CORENLP_JARS):
            return d
    return None


def _run_spice(java: str, hyps: Sequence[str], refs: Sequence[Sequence[str]],
               memory: str = "8G", timeout: float = 1800.0) -> tuple[float, list[float]]:
    spice_dir = _pycocoevalcap_dir() / "spice"
    corenlp = _find_corenlp()
    assert corenlp is not None
    cp = [str(spice_dir / "spice-1.0.jar"), str(spice_dir / "lib" / "*")]
    if corenlp != spice_dir / "lib":
        cp.append(str(corenlp / "*"))
    with tempfile.TemporaryDirectory(prefix="mmrag-spice-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        data = [{"image_id": i, "test": h, "refs": list(rs)} for i, (h, rs) in enumerate(zip(hyps, refs))]
        src.write_text(json.dumps(data), encoding="utf-8")
        cmd = [java, f"-Xmx{memory}", *_JAVA_PROPS, "-cp", os.pathsep.join(cp),
               "edu.anu.spice.SpiceScorer", str(src), "-out", str(dst), "-subset", "-silent"]
        try:
            proc = subprocess.run(cmd, cwd=str(spice_dir), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_java_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CaptionMetricError(f"SPICE did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not dst.exists():
            tail = proc.stderr.decode("utf-8", "replace").strip()[-500:]
            raise CaptionMetricError(f"SPICE exited with {proc.returncode}: {tail}")
        results = json.loads(dst.read_text(encoding="utf-8"))
    by_id = {r["image_id"]: r["scores"]["All"]["f"] for r in results}
    per = [float(by_id[i]) if by_id.get(i) is not None else float("nan") for i in range(len(hyps))]
    import math

    finite = [p for p in per if not math.isnan(p)]
    return (sum(finite) / len(finite) if finite else float("nan")), per


# --------------------------------------------------------------------------- the API


def _normalize_metrics(metrics: Iterable[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    out = []
    for m in metrics:
        key = _ALIASES.get(str(m).lower())
        if key is None:
            raise CaptionMetricError(
                f"unknown captioning metric {m!r}; choose from {', '.join(DEFAULT_METRICS)}"
            )
        if key not in out:
            out.append(key)
    return out


def _prepare(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]):
    if not predictions:
        raise CaptionMetricError("no predictions to evaluate")
    ids = list(predictions)
    missing = [i for i in ids if not references.get(i)]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise CaptionMetricError(
            f"{len(missing)} predicted image(s) have no reference captions: {shown}"
        )
    preds = []
    refs = []
    for i in ids:
        p = predictions[i]
        if not isinstance(p, str):
            raise CaptionMetricError(f"prediction for {i!r} is not a string: {type(p).__name__}")
        rs = references[i]
        if isinstance(rs, str):
            rs = [rs]
        rs = list(rs)
        bad = [r for r in rs if not isinstance(r, str)]
        if bad:
            raise CaptionMetricError(f"a reference caption of {i!r} is not a string: {type(bad[0]).__name__}")
        # Empty references stay, as in coco-caption (they lower CIDEr-D: module docstring).
        if not any(r.strip() for r in rs):
            raise CaptionMetricError(f"image {i!r} has only empty reference captions")
        preds.append(p)
        refs.append(rs)
    return ids, preds, refs


def _n_empty(refs: Sequence[Sequence[str]]) -> int:
    return sum(1 for rs in refs for r in rs if not _one_line(r))


def _tokenized(preds, refs, java, timeout):
    flat = list(preds) + [r for rs in refs for r in rs]
    tok, how = ptb_tokenize(flat, java=java, timeout=timeout)
    tpreds = tok[: len(preds)]
    trefs, k = [], len(preds)
    for rs in refs:
        trefs.append(tok[k : k + len(rs)])
        k += len(rs)
    return tpreds, trefs, how


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    java: str | None = "auto",
    meteor_memory: str = "2G",
    meteor: MeteorProcess | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """COCO-style captioning scores (×100) of ``predictions`` against ``references``.

    ``predictions`` maps image id -> one predicted caption; ``references`` maps image id -> its
    human captions (ids not predicted are ignored; a predicted id without references is an
    error). ``metrics`` picks among ``BLEU`` (gives BLEU-1..4), ``METEOR``, ``ROUGE_L``, ``CIDEr``
    (gives ``CIDEr-D``) and ``SPICE``. ``java``: ``"auto"``, a path, or None to use no Java.

    Returns ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE",
    "n_images", "skipped", "tokenizer"}`` (only the metrics asked for and computed);
    ``skipped`` maps a metric that could not run to the reason. Empty reference captions are
    kept, as coco-caption keeps them, and counted in ``"n_empty_references"`` (present when any).

    ``meteor``: a running :class:`MeteorProcess` to reuse (starting one costs seconds, mostly
    loading METEOR's paraphrase table); by default one is started and stopped for this call.
    """
    wanted = _normalize_metrics(metrics)
    ids, preds, refs = _prepare(predictions, references)
    java_path = find_java(java)
    tpreds, trefs, how = _tokenized(preds, refs, java, timeout)
    keys = list(range(len(ids)))  # pycocoevalcap wants identical key order in gts and res
    gts = {k: trefs[k] for k in keys}
    res = {k: [tpreds[k]] for k in keys}

    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, b in enumerate(bleu, 1):
            out[f"BLEU-{n}"] = 100.0 * float(b)
    if "METEOR" in wanted:
        if java_path is None:
            skipped["METEOR"] = "Java not found (METEOR 1.5 runs on Java; install a JRE)" if java \
                else "Java disabled (java=None)"
        else:
            try:
                if meteor is not None:
                    score, _ = meteor.score(tpreds, trefs)
                else:
                    with MeteorProcess(java_path, memory=meteor_memory,
                                       timeout=timeout if timeout is not None else 300.0) as m:
                        score, _ = m.score(tpreds, trefs)
                out["METEOR"] = 100.0 * score
            except CaptionMetricError as e:
                skipped["METEOR"] = str(e)
    if "ROUGE_L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        score, _ = Rouge().compute_score(gts, res)
        out["ROUGE-L"] = 100.0 * float(score)
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        score, _ = Cider().compute_score(gts, res)
        out["CIDEr-D"] = 100.0 * float(score)
    if "SPICE" in wanted:
        if java_path is None:
            skipped["SPICE"] = "Java not found (SPICE runs on Java 8+)" if java else "Java disabled (java=None)"
        elif _find_corenlp() is None:
            where = " or ".join(str(d) for d in _spice_lib_dirs())
            skipped["SPICE"] = (
                f"Stanford CoreNLP 3.6.0 jars ({', '.join(_CORENLP_JARS)}) not found in {where}; "
                "mmrag does not download them (run pycocoevalcap's spice/get_stanford_models.py "
                "once, or set MMRAG_SPICE_LIB to a folder holding them)"
            )
        else:
            try:
                score, _ = _run_spice(java_path, tpreds, trefs)
                out["SPICE"] = 100.0 * score
            except CaptionMetricError as e:
                skipped["SPICE"] = str(e)
    out["n_images"] = len(ids)
    if _n_empty(refs):
        out["n_empty_references"] = _n_empty(refs)  # kept, as coco-caption does
    out["skipped"] = skipped
    out["tokenizer"] = how
    return out


def cider_d_per_image(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    java: str | None = "auto",
    timeout: float | None = None,
) -> dict[Hashable, float]:
    """CIDEr-D (×100) of each predicted caption, as pycocoevalcap computes it per image.

    Document frequencies come from the references of all the images given, exactly as in
    :func:`caption_scores`, so the mean of the returned values equals its ``"CIDEr-D"``. (CIDEr-D
    needs several images to be meaningful: with one image every n-gram has zero idf.)
    """
    from pycocoevalcap.cider.cider import Cider

    ids, preds, refs = _prepare(predictions, references)
    tpreds, trefs, _ = _tokenized(preds, refs, java, timeout)
    keys = list(range(len(ids)))
    _, scores = Cider().compute_score({k: trefs[k] for k in keys}, {k: [tpreds[k]] for k in keys})
    return {i: 100.0 * float(s) for i, s in zip(ids, scores)}
