"""A multimodal index on disk: image vectors, caption vectors, and what built them.

    INDEX_DIR/
      manifest.json      encoder name + options, dim, backend, counts (written atomically)
      images/            VectorStore: one row per unique image (id = corpus item id)
      captions/          VectorStore: one row per caption (id = "<image id>#<k>")
      skipped.jsonl      every input left out or warned about: {source, reason, kind, time}, kind
                         "skipped" (not indexed), "duplicate" (same bytes as an indexed image) or
                         "warning" (indexed, with a problem: e.g. an unreadable caption file)
      .lock              held (fcntl.flock) by the one process writing the index; holds its pid

Both stores commit each batch durably, so indexing that is killed at any point resumes from the
last committed batch when run again (images already present are not embedded twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mmrag.index.base import VectorStore, open_store

MANIFEST = "manifest.json"
LOCK = ".lock"
SKIP_KINDS = ("skipped", "duplicate", "warning")


@contextlib.contextmanager
def write_lock(root: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the index directory's write lock for the block: one writer at a time, so the
    manifest and the stores never come from two interleaved runs. Another holder makes this
    raise IndexError_ naming its pid, or, with ``wait``, block until it is done. An OS lock
    (flock): it goes away with the process, so a killed writer leaves no stale lock."""
    import fcntl

    from mmrag.errors import IndexError_

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise IndexError_(f"{root} is a file, not an index directory; name a folder (new or an index) instead")
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise IndexError_(f"{root} is being written by another process (pid {holder}); "
                              "wait for it to finish, or pass --wait to queue behind it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # before the unlock: a waiter then writes its own pid
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def caption_id(image_id: str, k: int) -> str:
    """Id of caption ``k`` of image ``image_id`` in the captions store (the one place it is spelled)."""
    return f"{image_id}#{k}"


def caption_image_id(cid: str) -> str:
    """The image id a caption id belongs to (inverse of :func:`caption_id`; image ids may hold '#')."""
    return cid.rpartition("#")[0]


@dataclass
class IndexManifest:
    encoder: str
    encoder_options: dict[str, Any]
    dim: int
    backend: str = "faiss"
    backend_options: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    sources: list[str] = field(default_factory=list)
    mmrag_version: str = ""
    enrichers: list[str] = field(default_factory=list)  # per-image analyses run at index time ("ocr", "safety")

    def encoder_label(self) -> str:
        """``clip {'model': ...}``, or the name alone when there are no options (messages)."""
        return f"{self.encoder} {self.encoder_options}" if self.encoder_options else self.encoder

    def save(self, root: Path) -> None:
        tmp = root / (MANIFEST + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)

    @classmethod
    def load(cls, root: Path) -> "IndexManifest":
        from mmrag.errors import IndexError_

        p = root / MANIFEST
        if not p.exists():
            raise IndexError_(f"{root} is not an mmrag index (no {MANIFEST}); build one with `mmrag index`")
        from mmrag.encoders.base import manifest_encoder_options

        try:
            m = cls(**json.loads(p.read_text(encoding="utf-8")))
            m.encoder_options = manifest_encoder_options(m.encoder, m.encoder_options)
        except (json.JSONDecodeError, TypeError) as e:  # (TypeError: wrong fields, options not a mapping)
            raise IndexError_(f"{p} is unreadable ({e})") from None
        return m


class Collection:
    """The two stores of an index directory plus its manifest."""

    def __init__(self, root: str | Path, manifest: IndexManifest):
        self.root = Path(root)
        self.manifest = manifest
        opts = manifest.backend_options
        self.images: VectorStore = open_store(manifest.backend, self.root / "images", manifest.dim, **opts)
        self.captions: VectorStore = open_store(manifest.backend, self.root / "captions", manifest.dim, **opts)
        self._extra: dict[str, VectorStore] = {}

    def store(self, name: str) -> VectorStore:
        """An extra store beside images/ and captions/ (e.g. "chunks": document text chunks),
        opened -- and created -- on first use; indexes without it are unchanged."""
        if name in ("images", "captions"):
            return getattr(self, name)
        if name not in self._extra:
            m = self.manifest
            self._extra[name] = open_store(m.backend, self.root / name, m.dim, **m.backend_options)
        return self._extra[name]

    def has_store(self, name: str) -> bool:
        return name in ("images", "captions") or name in self._extra or (self.root / name).exists()

    @classmethod
    def create_or_open(cls, root: str | Path, manifest: IndexManifest) -> "Collection":
        from mmrag.errors import IndexError_

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if (root / MANIFEST).exists():
            old = IndexManifest.load(root)
            if (old.encoder, old.encoder_options, old.dim) != (manifest.encoder, manifest.encoder_options, manifest.dim):
                raise IndexError_(
                    f"{root} was built with encoder {old.encoder_label()} (dim {old.dim}); "
                    f"refusing to mix in {manifest.encoder_label()} vectors. "
                    "Use another --out directory or the same encoder."
                )
            return cls(root, old)
        # the stores open before the manifest is written: a backend that cannot open (an unknown
        # --store name, a missing package) leaves no manifest naming it, which every later run
        # into this directory would trip over
        col = cls(root, manifest)
        manifest.save(root)
        return col

    @classmethod
    def open(cls, root: str | Path) -> "Collection":
        root = Path(root)
        return cls(root, IndexManifest.load(root))

    def record_skipped(self, source: str, reason: str, kind: str = "skipped") -> None:
        """Append to skipped.jsonl; ``kind`` is one of :data:`SKIP_KINDS`."""
        if kind not in SKIP_KINDS:
            raise ValueError(f"kind must be one of {SKIP_KINDS}, got {kind!r}")
        with open(self.root / "skipped.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"source": source, "reason": reason, "kind": kind, "time": time.time()}) + "\n")

    def skipped(self) -> list[dict]:
        p = self.root / "skipped.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-append
            if "kind" not in row:  # written before kinds existed
                row["kind"] = "duplicate" if str(row.get("reason", "")).startswith("duplicate of ") else "skipped"
            out.append(row)
        return out

    def skip_counts(self) -> dict[str, int]:
        """Distinct sources per kind in skipped.jsonl (a rerun that meets the same broken file
        again appends it again; it is still one file)."""
        seen: dict[str, set[str]] = {k: set() for k in SKIP_KINDS}
        for row in self.skipped():
            seen.setdefault(row["kind"], set()).add(row.get("source", ""))
        return {k: len(v) for k, v in seen.items()}

    def remove(self, image_ids: list[str]) -> tuple[int, int]:
        """Delete images and their captions (no rebuild). Returns (images, captions) removed."""
        metas = self.images.get(image_ids)
        cap_ids = [caption_id(i, k) for i, m in zip(image_ids, metas) if m for k in range(len(m.get("captions") or []))]
        n_caps = self.captions.delete(cap_ids) if cap_ids else 0
        return self.images.delete(image_ids), n_caps

    def save(self) -> None:
        self.images.save()
        self.captions.save()
        for s in self._extra.values():
            s.save()

    def close(self) -> None:
        self.images.close()
        self.captions.close()
        for s in self._extra.values():
            s.close()

    def info(self) -> dict[str, Any]:
        d = {
            "path": str(self.root),
            "encoder": self.manifest.encoder,
            "encoder_options": self.manifest.encoder_options,
            "dim": self.manifest.dim,
            "backend": self.manifest.backend,
            "images": self.images.count(),
            "captions": self.captions.count(),
            **{("skipped" if k == "skipped" else k + "s"): n for k, n in self.skip_counts().items()},
            "sources": self.manifest.sources,
        }
        for name, store in (("images_store", self.images), ("captions_store", self.captions)):
            if hasattr(store, "info"):
                d[name] = store.info()
        return d
