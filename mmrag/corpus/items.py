"""What a corpus is made of: images with captions and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CorpusItem:
    """One image of a corpus.

    ``id`` is stable across runs (a path relative to the corpus root, or the dataset's own
    image name), so indexing can resume and captions can be joined back to images.
    """

    id: str
    path: Path
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """Something a reader or the indexer left out, and why. ``id``: the corpus item's id when
    the item itself was left out (its file is empty or not a regular file), so an index that
    holds an earlier version of it can drop it."""

    source: str
    reason: str
    id: str | None = None


@dataclass
class Corpus:
    """The items a reader produced, what it had to skip, and what it kept with a warning
    (e.g. an image whose caption file could not be decoded: the image is indexed)."""

    name: str
    root: Path
    items: list[CorpusItem]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def captions(self) -> tuple[list[str], list[int]]:
        """All captions, flattened, with the index of the item each belongs to."""
        texts: list[str] = []
        owner: list[int] = []
        for i, item in enumerate(self.items):
            for c in item.captions:
                texts.append(c)
                owner.append(i)
        return texts, owner
