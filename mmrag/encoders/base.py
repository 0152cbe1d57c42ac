"""The Encoder base class and the registry of implementations, chosen by name.

An encoder puts images and texts in one vector space. Subclasses implement the two embedding
methods; the rest of what callers use is declared here with defaults, so no caller needs to
probe for optional members:

* :meth:`embed_images_safe` -- embedding that skips unreadable images with a reason each;
* :meth:`spec` -- the registry name and options that rebuild the encoder (stored in manifests);
* :meth:`fingerprint` -- a short stable id of what the vectors depend on (cache keys);
* :meth:`caption_prior` -- an optional per-caption hubness prior for image->caption scoring;
* :meth:`image_prior` / :meth:`image_prior_gate` -- its mirror image, an optional per-image prior
  for text->image scoring and the gate that says which queries it is applied to;
* :meth:`set_threads` / :meth:`set_image_threads` -- intra-op thread control.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar, Union

import numpy as np
from PIL import Image

from mmrag.registry import Registry

ImageInput = Union[str, Path, bytes, Image.Image]
T = TypeVar("T")


class Encoder(ABC):
    """Puts images and texts in one vector space.

    Both embedding methods return float32 arrays of shape [n, dim] whose rows have unit L2 norm,
    so the inner product is the cosine similarity.

    ``progress`` of the embedding methods: True shows a bar on stderr; a callable is called with
    the number of inputs done so far after each mini-batch, so a caller with its own bar (the
    indexer) can embed a whole batch in one call, keeping decode-ahead running across
    mini-batches, and still move per mini-batch.
    """

    name: str
    dim: int

    @abstractmethod
    def embed_images(
        self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        """Embed images; raises :class:`mmrag.errors.ImageError` if any is unreadable."""

    @abstractmethod
    def embed_texts(
        self, texts: Sequence[str], batch_size: int = 128, progress: bool = False
    ) -> np.ndarray: ...

    def embed_images_safe(
        self, images: Sequence[ImageInput], batch_size: int = 32, progress: bool = False
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Like :meth:`embed_images`, but an unreadable image gives a zero row and a reason in
        the returned ``{position: reason}`` instead of failing the batch."""
        from mmrag.corpus.images import open_image
        from mmrag.errors import ImageError

        errors: dict[int, str] = {}
        opened: list[Image.Image | None] = []
        for i, im in enumerate(images):
            try:
                opened.append(open_image(im))
            except ImageError as e:
                errors[i] = str(e)
                opened.append(None)
        ok = [i for i, im in enumerate(opened) if im is not None]
        out = np.zeros((len(opened), self.dim), np.float32)
        if ok:
            out[ok] = self.embed_images([opened[i] for i in ok], batch_size=batch_size, progress=progress)
        return out, errors

    def spec(self) -> tuple[str, dict]:
        """Registry name and options that rebuild the same encoder (an index's manifest). A
        class without a ``name`` is named by its import path, which rebuilds it too."""
        return getattr(self, "name", None) or f"{type(self).__module__}:{type(self).__qualname__}", {}

    def fingerprint(self) -> str:
        """A short stable id of what this encoder's vectors (and priors) depend on: its spec,
        plus whatever :meth:`_fingerprint_update` adds (e.g. fitted weights)."""
        name, kwargs = self._fingerprint_spec()
        h = hashlib.sha1()
        h.update(json.dumps([name, kwargs], sort_keys=True, default=str).encode())
        self._fingerprint_update(h)
        return f"{name}-{h.hexdigest()[:12]}"

    def _fingerprint_spec(self) -> tuple[str, dict]:
        """The part of :meth:`spec` the fingerprint hashes (an option that only names state
        :meth:`_fingerprint_update` hashes anyway can be left out, so two names of the same
        weights share one id)."""
        return self.spec()

    def _fingerprint_update(self, h) -> None:
        """Hook: feed state the spec does not name (e.g. a bridge's statistics) into ``h``."""

    def caption_prior(self, text_vectors: np.ndarray) -> np.ndarray | None:
        """Per-caption prior subtracted from image->caption cosines (``cos - prior``), or None
        when the encoder has none."""
        return None

    def image_prior(self, image_vectors: np.ndarray) -> np.ndarray | None:
        """Per-image prior subtracted from text->image cosines (``cos - prior``, for the queries
        :meth:`image_prior_gate` admits), or None when the encoder has none (the index stores
        nothing, and search ranks by cosine as if every prior were 0)."""
        return None

    def image_prior_gate(self) -> float | None:
        """A text query is ranked by ``cos - prior`` only when the prior of its best image by
        cosine is above this; None: every query (when there is a prior)."""
        return None

    def set_threads(self, threads: int | None) -> None:
        """Intra-op threads of the text model (None: the runtime's default). No-op by default."""

    def set_image_threads(self, threads: int | None) -> None:
        """Intra-op threads of the image model (None: the runtime's default). No-op by default."""


ENCODERS: Registry[Encoder] = Registry("encoder", entry_points="mmrag.encoders")

# Options an index manifest left out because they were the default when it was written; the
# default has changed since, so reading the old manifest must name the old one.
_MANIFEST_IMPLIED_OPTIONS = {"effnet-minilm": {"bridge": "flickr8k-train"}}


def manifest_encoder_options(name: str, options: dict) -> dict:
    """The options that rebuild the encoder a stored manifest was written by (``options`` plus
    what such manifests left implied, see ``_MANIFEST_IMPLIED_OPTIONS``)."""
    return {**_MANIFEST_IMPLIED_OPTIONS.get(name, {}), **(options or {})}


def create_encoder(name: str = "effnet-minilm", **kwargs) -> Encoder:
    """Build an encoder by registry name (see ``ENCODERS.names()``), by an installed package's
    ``mmrag.encoders`` entry point, or by ``module:Class`` of the user's own."""
    import mmrag.encoders  # noqa: F401  (registers the built-in encoders)
    from mmrag.registry import is_import_path

    enc = ENCODERS.create(name, **kwargs)
    if not isinstance(enc, Encoder):  # a duck-typed class fails later, deep in a task, on a missing default
        from mmrag.errors import InvalidInputError

        raise InvalidInputError(f"encoder {name!r} built a {type(enc).__name__}, not an mmrag.encoders.Encoder: "
                                "subclass it (it supplies spec, fingerprint, the priors and safe embedding)")
    if is_import_path(name) and getattr(enc, "name", None) != name:
        # spec() (the manifest) names the encoder the way it was built, so a later search or
        # serve rebuilds it without the flag; a class-level or decorator name lives only in
        # the process that imported its module
        enc.name = name
    return enc


def check_same_encoder(encoder: Encoder, name: str, dim: int, where) -> None:
    """Raise :class:`~mmrag.errors.IndexError_` unless ``encoder`` is the kind that wrote
    ``where`` (manifest ``name``, ``dim``): another encoder's vectors of the same size would be
    searched without a word, and every score would be noise."""
    from mmrag.errors import IndexError_, UnknownNameError

    given = encoder.spec()[0]
    same = given == name
    if not same:
        try:  # the same class under another of its names (a decorator name vs its import path)
            same = type(encoder) is ENCODERS.factory(name)
        except UnknownNameError:
            pass
    if not same or encoder.dim != dim:
        raise IndexError_(f"{where} was built with encoder {name} (dim {dim}); the encoder given is {given} "
                          f"(dim {encoder.dim}), whose vectors cannot be compared with it: pass the same "
                          "encoder, or none (the index's own is built from its manifest)")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32, copy=False)


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress_bar(iterable: Iterable[T], total: int | None, desc: str, enabled) -> Iterable[T]:
    """A tqdm bar on stderr when ``enabled`` is true; when it is a callable (an encoder's
    ``progress`` callback, see :class:`Encoder`), it is called with the number of items done so
    far after each chunk of the iterable has been processed."""
    if callable(enabled):
        return _report_done(iterable, enabled)
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def _report_done(chunks: Iterable[T], report: Callable[[int], None]) -> Iterator[T]:
    done = 0
    for chunk in chunks:
        yield chunk  # resumed once the consumer has processed the chunk
        done += len(chunk)
        report(done)
