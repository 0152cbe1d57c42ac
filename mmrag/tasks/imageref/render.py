"""``![caption](IMAGE_k)`` references: find, check, and resolve them to real files.

``IMAGE_k`` (k from 1) indexes the candidate images given to the task, as in ImageRef-VL's output
format. :func:`render` swaps each reference for the image's path (or a ``data:`` URL, or an
HTML ``<img>``); a reference to no candidate is an :class:`InvalidReferenceError`, never a
broken link.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmrag.errors import MmragError

__all__ = ["IMAGE_REF", "InvalidReferenceError", "find_references", "invalid_references", "render", "strip_image_markup"]

IMAGE_REF = re.compile(r"!\[([^\]]*)\]\((IMAGE_(\d+))\)")


class InvalidReferenceError(MmragError):
    """An ``IMAGE_k`` reference names no candidate image."""


def find_references(markdown: str) -> list[tuple[str, str]]:
    """``[(caption, "IMAGE_k"), ...]`` in order of appearance."""
    return [(m.group(1), m.group(2)) for m in IMAGE_REF.finditer(markdown)]


def invalid_references(markdown: str, n_images: int) -> list[str]:
    """References whose k is outside 1..n_images (also bare ``IMAGE_k`` outside image markup)."""
    bad = []
    for m in re.finditer(r"IMAGE_(\d+)", markdown):
        if not 1 <= int(m.group(1)) <= n_images:
            bad.append(m.group(0))
    return bad


def _image_path(entry: Any) -> str:
    if isinstance(entry, Mapping):
        return str(entry.get("path") or "")
    if isinstance(entry, (str, Path)):
        return str(entry)
    return str(getattr(entry, "path", "") or "")


def strip_image_markup(text: str) -> str:
    """The answer without its image references (what the LLM judge reads)."""
    text = IMAGE_REF.sub("", text)
    text = re.sub(r"IMAGE_\d+", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def render(markdown: str, images: Sequence[Any], mode: str = "path", base_dir: str | Path | None = None) -> str:
    """Resolve ``IMAGE_k`` to image k of ``images`` (paths, dicts or objects with ``path``).

    ``mode``: ``"path"`` (Markdown link to the file; relative to ``base_dir`` when given),
    ``"data"`` (the file inlined as a ``data:`` URL, for a self-contained page) or ``"html"``
    (the whole answer as HTML -- headings, paragraphs, ``<img src alt>`` -- rendered by
    markdown-it-py's CommonMark renderer)."""
    if mode not in ("path", "data", "html"):
        raise ValueError("mode must be path, data or html")
    bad = invalid_references(markdown, len(images))
    if bad:
        raise InvalidReferenceError(f"{', '.join(sorted(set(bad)))} name no candidate image (there are {len(images)})")

    def link(m: re.Match) -> str:
        caption, k = m.group(1), int(m.group(3))
        path = _image_path(images[k - 1])
        target = path
        if mode == "data":
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InvalidReferenceError(f"IMAGE_{k} ({path}): cannot read the file ({e.strerror or e})") from None
            mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
            target = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        elif base_dir is not None and not re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I):
            try:
                target = Path(path).resolve().relative_to(Path(base_dir).resolve()).as_posix()
            except ValueError:
                target = Path(path).resolve().as_posix()
        return f"![{caption}]({target.replace(' ', '%20').replace(')', '%29')})"

    resolved = IMAGE_REF.sub(link, markdown)
    if mode != "html":
        return resolved
    from markdown_it import MarkdownIt

    # raw HTML in the answer (it quotes documents) is escaped, not passed through
    return MarkdownIt("commonmark", {"html": False}).render(resolved)
