"""The Encoder protocol and the registry of implementations, chosen by name."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence, TypeVar, Union, runtime_checkable

import numpy as np
from PIL import Image

from mmrag.registry import Registry

ImageInput = Union[str, Path, bytes, Image.Image]
T = TypeVar("T")


@runtime_checkable
class Encoder(Protocol):
    """Puts images and texts in one vector space.

    Both methods return float32 arrays of shape [n, dim] whose rows have unit L2 norm, so the
    inner product is the cosine similarity.
    """

    name: str
    dim: int

    def embed_images(
        self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray: ...

    def embed_texts(
        self, texts: Sequence[str], batch_size: int = 128, progress: bool = False
    ) -> np.ndarray: ...


ENCODERS: Registry[Encoder] = Registry("encoder")


def create_encoder(name: str = "effnet-minilm", **kwargs) -> Encoder:
    """Build an encoder by registry name (see ``ENCODERS.names()``)."""
    import mmrag.encoders  # noqa: F401  (registers the built-in encoders)

    return ENCODERS.create(name, **kwargs)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32, copy=False)


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress_bar(iterable: Iterable[T], total: int | None, desc: str, enabled: bool) -> Iterable[T]:
    """A tqdm bar on stderr when enabled and the input is long enough to be worth one."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)
