"""The Generator protocol and the registry of implementations, chosen by name.

Every task that writes text (captioning, chat questions, answering, composing) goes through one
interface: a :class:`GenerationRequest` in, a :class:`GenerationResult` out. Language-model
generators read ``messages`` (chat style) and ``images``; generators without a language model
(``consensus``) read ``evidence``, the retrieved texts, and ignore the messages.
"""

from __future__ import annotations

import base64
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import numpy as np

from mmrag.errors import MmragError
from mmrag.registry import Registry

ImageInput = Union[str, Path, bytes]


class GeneratorError(MmragError):
    """A generator could not produce text (bad request, model or endpoint failure)."""


class EndpointError(GeneratorError):
    """An HTTP endpoint answered with an error, an unreadable answer, or not in time."""

    def __init__(self, message: str, url: str = "", status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class EndpointUnreachableError(EndpointError):
    """Nothing answers at the endpoint's address (connection refused, unknown host, ...)."""


class EndpointTimeoutError(EndpointError):
    """The endpoint accepted the connection but did not answer within the read timeout."""


@dataclass
class GenerationRequest:
    """What to generate from.

    ``messages``: chat messages ``{"role": "system"|"user"|"assistant", "content": str}``.
    ``images``: images for the (last) user turn, as paths or encoded bytes (JPEG, PNG, ...).
    ``evidence``: retrieved texts (e.g. captions of similar images), for generators that choose
    or combine them instead of running a language model; ``evidence_scores``: their retrieval
    similarities (same order); ``evidence_vectors``: their embeddings, shape ``[k, dim]``.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageInput] = field(default_factory=list)
    max_tokens: int = 128
    temperature: float = 0.0
    stop: list[str] | None = None
    evidence: list[str] = field(default_factory=list)
    evidence_scores: Sequence[float] | None = None
    evidence_vectors: np.ndarray | None = None

    @classmethod
    def from_prompt(cls, prompt: str, system: str | None = None, **kwargs) -> "GenerationRequest":
        """A one-turn request: an optional system message and one user message."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return cls(messages=messages, **kwargs)


@dataclass
class GenerationResult:
    """The generated ``text``; ``raw``: the backend's own answer or details (for logging and
    showing evidence); ``usage``: token counts when the backend reports them; ``finish_reason``:
    OpenAI's terms, ``"stop"`` (ended by itself or a stop string) or ``"length"`` (cut at
    ``max_tokens``), which chat clients read to tell a whole answer from a cut one."""

    text: str
    raw: Any = None
    usage: dict[str, Any] | None = None
    finish_reason: str = "stop"


class Generator(ABC):
    """Writes text for a request. Implementations are registered in :data:`GENERATORS`.

    Each declares what it reads from a :class:`GenerationRequest`, so callers build the request
    it needs (and refuse what it cannot do) without knowing generators by name:

    ``reads_messages``  the chat messages (a language model's prompt)
    ``reads_images``    the images of the last user turn
    ``reads_evidence``  the retrieved texts, which it chooses from or combines (no language model)
    """

    name: str
    reads_messages: ClassVar[bool] = True
    reads_images: ClassVar[bool] = False
    reads_evidence: ClassVar[bool] = False

    @abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult: ...


GENERATORS: Registry[Generator] = Registry("generator", entry_points="mmrag.generators")


def create_generator(name: str = "consensus", **kwargs) -> Generator:
    """Build a generator by registry name (see ``GENERATORS.names()``)."""
    import mmrag.generators  # noqa: F401  (registers the built-in generators)

    gen = GENERATORS.create(name, **kwargs)
    if not isinstance(gen, Generator):  # every task reads the reads_* declarations
        from mmrag.errors import InvalidInputError

        raise InvalidInputError(f"generator {name!r} built a {type(gen).__name__}, not an "
                                "mmrag.generators.Generator: subclass it")
    return gen


def check_messages(messages: Sequence[dict[str, Any]]) -> None:
    """Raise a :class:`GeneratorError` unless ``messages`` is a list of role/content dicts."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise GeneratorError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise GeneratorError(f"message {i} has an unknown role {m['role']!r}")


_MAGIC = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
]


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their signature; re-encode unknown ones."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


def image_to_data_url(image: ImageInput) -> str:
    """A ``data:`` URL for an image given as a path or encoded bytes.

    JPEG, PNG, GIF and WebP bytes are passed through unchanged; any other format Pillow can read
    (TIFF, BMP, ...) is re-encoded as PNG, since chat endpoints accept only the common ones.
    """
    if isinstance(image, (str, Path)):
        p = Path(image)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise GeneratorError(f"{p}: cannot read image ({e.strerror or e})") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise GeneratorError(f"images must be paths or bytes, got {type(image).__name__}")
    mime = image_mime(data)
    if mime in ("", "image/bmp"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
        except (UnidentifiedImageError, OSError) as e:
            raise GeneratorError(f"not a readable image ({e})") from None
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
