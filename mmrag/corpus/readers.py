"""Corpus readers: one function per on-disk format, each returning a :class:`Corpus`.

Formats (``kind`` for :func:`read_corpus`):

``folder``
    A directory of images, searched recursively in sorted order. Ids are POSIX paths relative to
    the root. An optional sidecar ``name.txt`` next to ``name.jpg`` holds captions, one per
    non-empty line. Hidden files and directories (``.name``) are ignored; files without an image
    suffix are ignored silently.
``coco``
    A COCO captions JSON (``images[{id, file_name, ...}]``, ``annotations[{image_id, caption}]``).
``karpathy``
    Karpathy's split files (``dataset_coco.json``, ``dataset_flickr8k.json``, ...):
    ``images[{filepath?, filename, split, sentences[{raw}]}]``.
``flickr8k``
    The Flickr8k folder: ``captions.jsonl`` when present, else ``Flickr8k.token.txt`` plus the
    official ``Flickr_8k.{train,dev,test}Images.txt`` split lists (directly or under ``ann/``).
``jsonl``
    A manifest, one JSON object per line:
    ``{"image": "relative/path.jpg", "captions": [...], "id"?: ..., "split"?: ..., ...}``.
``auto``
    Detect one of the above from the path (see :func:`detect_kind`).

Policies shared by every reader:

* Readers never decode images (the indexer does, through :func:`open_image`); they only
  ``stat`` each file. A file that is missing becomes ``Skipped(source, "file not found")``; an
  empty (0-byte) file becomes ``Skipped(source, "empty file (0 bytes)")``. A file with an image
  suffix that is not really an image (corrupt, truncated, text) is *kept*: the indexer rejects
  it with an :class:`ImageError` and records it there.
* Manifests (JSON, JSONL, token files) must be UTF-8 (a BOM is accepted). Anything else is a
  :class:`CorpusError` naming the file, the byte offset and the line, because a wrongly
  encoded manifest is a problem with the whole file, not with one row.
* Caption sidecars of the ``folder`` reader are the exception: one badly encoded sidecar should
  not lose the image, so it is decoded with ``errors="replace"`` and recorded in ``warnings``
  (source = the sidecar, reason says so) while the image is kept; so is an unreadable sidecar.
* In JSONL manifests a line that is not valid JSON, or a row without ``image``, is skipped with
  its line number in ``skipped``; it is not fatal.
* Captions are stripped and empty ones dropped; their order is kept.
* Items are sorted by id; a repeated id is skipped ("duplicate id"). ``limit`` keeps the first
  ``limit`` usable items after sorting.
* A missing path is a :class:`CorpusError`; so is a corpus with no items, with a hint about why.

Splits (``split`` of :func:`read_corpus`): a split name filters; ``None`` or ``"all"`` keep every
image; ``"default"`` (:data:`DEFAULT_SPLIT`) means ``"test"`` when the corpus has splits and every
image otherwise (:func:`resolve_split`), so evaluating one's own unsplit photos just works.
"""

from __future__ import annotations

import json
import os
import re
import stat as stat_mod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmrag.corpus.images import IMAGE_SUFFIXES
from mmrag.corpus.items import Corpus, CorpusItem, Skipped
from mmrag.errors import CorpusError

__all__ = [
    "DEFAULT_SPLIT",
    "READERS",
    "detect_kind",
    "existing_path",
    "file_problem",
    "load_json",
    "parse_jsonl",
    "read_coco",
    "read_corpus",
    "read_flickr8k",
    "read_folder",
    "read_jsonl",
    "read_karpathy",
    "register_reader",
    "resolve_split",
]

ReaderFn = Callable[..., Corpus]

#: Reader functions by ``kind``. A new format is one entry: ``READERS["mine"] = read_mine``
#: (or decorate it with :func:`register_reader`). Every reader takes
#: ``(path, split=None, limit=None, **options)`` and returns a :class:`Corpus`.
READERS: dict[str, ReaderFn] = {}


def register_reader(name: str) -> Callable[[ReaderFn], ReaderFn]:
    def deco(fn: ReaderFn) -> ReaderFn:
        if name in READERS or name == "auto":
            raise ValueError(f"corpus reader {name!r} is already registered")
        READERS[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- helpers
# existing_path, load_json, file_problem and parse_jsonl are public: the other readers of
# mmrag.corpus (e.g. vqa_rad) apply the same policies with them.


def existing_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute; a missing one is a CorpusError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CorpusError(f"{p}: no such file or directory")
    return Path(os.path.abspath(p))  # absolute, '..' folded, symlinks kept


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise CorpusError(f"limit must be a positive integer, got {limit!r}")


def _read_text(path: Path) -> str:
    """A manifest's text; a non-UTF-8 file is a CorpusError saying where."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(
            f"{path}: not valid UTF-8 at byte {e.start} (line {line}); "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def load_json(path: Path) -> Any:
    """A UTF-8 JSON file; bad encoding or syntax is a CorpusError naming the place."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


def _clean_captions(captions: Iterable[Any]) -> list[str]:
    out = []
    for c in captions:
        if isinstance(c, str):
            c = c.strip()
            if c:
                out.append(c)
    return out


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image file, or None. A stat, never a read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except NotADirectoryError:
        return "file not found"
    except OSError as e:
        return f"cannot access ({e.strerror or e})"
    if stat_mod.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat_mod.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _finish(
    name: str,
    root: Path,
    items: list[CorpusItem],
    skipped: list[Skipped],
    limit: int | None,
    source: Path,
    hint: str = "",
) -> Corpus:
    """Sort by id, drop duplicates, check files exist, apply limit, refuse an empty result."""
    items = sorted(items, key=lambda it: it.id)
    kept: list[CorpusItem] = []
    seen: set[str] = set()
    for it in items:
        if limit is not None and len(kept) >= limit:
            break
        if it.id in seen:
            skipped.append(Skipped(it.id, "duplicate id"))
            continue
        seen.add(it.id)
        problem = file_problem(it.path)
        if problem:
            skipped.append(Skipped(str(it.path), problem, id=it.id))
            continue
        kept.append(it)
    if not kept:
        parts = [f"no images found in {source}"]
        if hint:
            parts.append(hint)
        if skipped:
            first = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:3])
            parts.append(f"{len(skipped)} entries skipped, e.g. {first}")
        raise CorpusError(" - ".join(parts))
    return Corpus(name=name, root=root, items=kept, skipped=skipped)


def _pick_image_dir(base: Path, names: list[str], extra: Iterable[str] = ()) -> Path:
    """The first of ``base``, ``base/images`` and ``base/<extra>`` holding some of ``names``."""
    candidates = [base, base / "images", *(base / e for e in extra)]
    probe = sorted(names)[:25]
    for cand in candidates:
        if cand.is_dir() and any((cand / n).is_file() for n in probe):
            return cand
    return base


def _split_hint(requested: str | None, available: Iterable[str | None]) -> str:
    if requested is None:
        return ""
    avail = sorted({str(a) for a in available if a is not None})
    return f"split {requested!r} matched nothing (splits present: {', '.join(avail) or 'none'})"


# --------------------------------------------------------------------------- folder


def _read_sidecar(path: Path, warnings: list[Skipped]) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        warnings.append(Skipped(str(path), f"caption file unreadable ({e.strerror or e})"))
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        warnings.append(
            Skipped(
                str(path),
                f"caption file not valid UTF-8 at byte {e.start}; read with replacement "
                "characters (image kept)",
            )
        )
        text = data.decode("utf-8", errors="replace")
    return _clean_captions(text.splitlines())


@register_reader("folder")
def read_folder(
    path: str | os.PathLike, split: str | None = None, limit: int | None = None
) -> Corpus:
    """Every image under ``path`` (recursive, sorted), with ``name.txt`` sidecar captions."""
    _check_limit(limit)
    root = existing_path(path)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory (the folder reader needs one)")
    if split is not None:
        raise CorpusError(
            f"{root}: a folder corpus has no splits (asked for {split!r}); drop the split, "
            "or describe the images in a JSONL manifest with a 'split' field"
        )
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith(".") or Path(fn).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = Path(dirpath) / fn
            found.append((full.relative_to(root).as_posix(), full))
    items = [CorpusItem(id=rel, path=full) for rel, full in found]
    hint = (
        f"looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))} "
        "(hidden files and folders are ignored)"
    )
    corpus = _finish(root.name, root, items, [], limit, root, hint)
    for item in corpus.items:  # sidecars only for the items kept (limit makes this cheap)
        side = item.path.with_suffix(".txt")
        if side.is_file():
            item.captions = _read_sidecar(side, corpus.warnings)
            item.metadata["caption_file"] = side.relative_to(root).as_posix()
    return corpus


# --------------------------------------------------------------------------- coco

_COCO_IMAGE_DIRS = ("val2017", "train2017", "val2014", "train2014", "test2017")


def _coco_from_data(
    data: Any,
    json_path: Path,
    split: str | None,
    limit: int | None,
    image_dir: str | os.PathLike | None,
) -> Corpus:
    if split is not None:
        raise CorpusError(
            f"{json_path}: a COCO captions file is one split already (asked for {split!r}); "
            "use the 'karpathy' reader for Karpathy's train/val/test splits"
        )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise CorpusError(f"{json_path}: not a COCO captions file (needs 'images' and 'annotations')")
    skipped: list[Skipped] = []
    licenses = {
        lic.get("id"): lic for lic in data.get("licenses") or [] if isinstance(lic, dict)
    }
    by_id: dict[Any, dict] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            skipped.append(Skipped(f"{json_path}: images[{i}]", "no 'id' or 'file_name'"))
            continue
        by_id[img["id"]] = img
    captions: dict[Any, list[str]] = {k: [] for k in by_id}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            continue
        key = ann.get("image_id")
        if key not in captions:
            skipped.append(
                Skipped(f"{json_path}: annotations[{i}]", f"unknown image_id {key!r}")
            )
            continue
        if isinstance(ann.get("caption"), str):
            captions[key].append(ann["caption"])
    if image_dir is not None:
        base = existing_path(image_dir)
    else:
        base = _pick_image_dir(
            json_path.parent, [str(im["file_name"]) for im in by_id.values()], _COCO_IMAGE_DIRS
        )
    items = []
    for key, img in by_id.items():
        meta: dict[str, Any] = {"coco_id": key}
        for src, dst in (("license", "license"), ("width", "original_width"),
                         ("height", "original_height"), ("coco_url", "coco_url"),
                         ("flickr_url", "flickr_url")):
            if src in img:
                meta[dst] = img[src]
        lic = licenses.get(img.get("license"))
        if lic:
            meta["license_name"] = lic.get("name")
            meta["license_url"] = lic.get("url")
        rel = str(img["file_name"])
        items.append(
            CorpusItem(id=rel, path=base / rel, captions=_clean_captions(captions[key]),
                       split=None, metadata=meta)
        )
    hint = f"images are looked up under {base}; pass image_dir= if they live elsewhere"
    return _finish(json_path.stem, base, items, skipped, limit, json_path, hint)


@register_reader("coco")
def read_coco(
    path: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
) -> Corpus:
    """A COCO captions JSON. Ids are the ``file_name``s; metadata keeps the COCO id, licence
    and the original width/height. Images are looked up under ``image_dir``, by default the
    JSON's folder or its ``images/``, ``val2017/``, ``train2017/``, ``val2014/``... subfolder,
    whichever holds the images."""
    _check_limit(limit)
    json_path = existing_path(path)
    if json_path.is_dir():
        json_path = _find_one(json_path, "captions_*.json", "COCO captions JSON")
    return _coco_from_data(load_json(json_path), json_path, split, limit, image_dir)


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(hits) != 1:
        raise CorpusError(
            f"{folder}: expected one {what} ({pattern}), found {len(hits)}; pass the file itself"
        )
    return hits[0]


# --------------------------------------------------------------------------- karpathy

_KARPATHY_SPLITS = ("train", "val", "test", "restval")


def _karpathy_from_data(
    data: Any,
    json_path: Path,
    split: str | None,
    limit: int | None,
    image_dir: str | os.PathLike | None,
    restval_as_train: bool,
) -> Corpus:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CorpusError(f"{json_path}: not a Karpathy split file (needs 'images')")
    if split == "dev":
        split = "val"
    if split is not None and split not in _KARPATHY_SPLITS:
        raise CorpusError(
            f"unknown split {split!r} for a Karpathy file; use one of {', '.join(_KARPATHY_SPLITS)}"
        )
    skipped: list[Skipped] = []
    entries = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not img.get("filename"):
            skipped.append(Skipped(f"{json_path}: images[{i}]", "no 'filename'"))
            continue
        rel = str(img["filename"])
        if img.get("filepath"):
            rel = f"{str(img['filepath']).rstrip('/')}/{rel}"
        entries.append((rel, img))
    if image_dir is not None:
        base = existing_path(image_dir)
    else:
        base = _pick_image_dir(
            json_path.parent,
            [rel for rel, _ in entries],
            ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "coco"),
        )
    items = []
    present = set()
    for rel, img in entries:
        orig = img.get("split")
        present.add(orig)
        item_split = "train" if (restval_as_train and orig == "restval") else orig
        if split is not None and item_split != split:
            continue
        caps = []
        for s in img.get("sentences") or []:
            if isinstance(s, dict):
                raw = s.get("raw")
                if not isinstance(raw, str) and isinstance(s.get("tokens"), list):
                    raw = " ".join(map(str, s["tokens"]))
                caps.append(raw)
        meta: dict[str, Any] = {
            k: img[k] for k in ("cocoid", "imgid", "sentids") if k in img
        }
        if item_split != orig:
            meta["karpathy_split"] = orig
        items.append(
            CorpusItem(id=rel, path=base / rel, captions=_clean_captions(caps),
                       split=item_split, metadata=meta)
        )
    name = json_path.stem + (f"-{split}" if split else "")
    hint = _split_hint(split, present) or (
        f"images are looked up under {base}; pass image_dir= if they live elsewhere"
    )
    return _finish(name, base, items, skipped, limit, json_path, hint)


@register_reader("karpathy")
def read_karpathy(
    path: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    restval_as_train: bool = False,
) -> Corpus:
    """Karpathy's ``dataset_*.json``. Ids are ``filepath/filename`` (or ``filename``).

    ``split`` is one of train/val/test/restval (``dev`` means ``val``). ``restval`` images keep
    their own split unless ``restval_as_train=True``: then they are reported as ``train`` (and
    included by ``split="train"``), the usual "Karpathy train + restval" training set, with
    ``metadata["karpathy_split"] = "restval"``.
    """
    _check_limit(limit)
    json_path = existing_path(path)
    if json_path.is_dir():
        json_path = _find_one(json_path, "dataset_*.json", "Karpathy split file")
    return _karpathy_from_data(
        load_json(json_path), json_path, split, limit, image_dir, restval_as_train
    )


# --------------------------------------------------------------------------- jsonl


def parse_jsonl(
    path: Path, skipped: list[Skipped]
) -> list[tuple[int, dict]]:
    """(line number, object) per JSON-object line; bad lines are appended to ``skipped``."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            # NaN/Infinity are Python's extension, not JSON: the index stores metadata as strict
            # JSON, so such a row would stop the whole run at its batch
            row = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            skipped.append(Skipped(f"{path}:{n}", f"line {n}: not valid JSON ({e.msg})"))
            continue
        except ValueError as e:
            skipped.append(Skipped(f"{path}:{n}", f"line {n}: not valid JSON ({e})"))
            continue
        if not isinstance(row, dict):
            skipped.append(Skipped(f"{path}:{n}", f"line {n}: not a JSON object"))
            continue
        rows.append((n, row))
    return rows


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _norm_split(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return None if s.lower() in ("", "none", "null") else s


def _rows_to_items(
    rows: list[tuple[int, dict]], path: Path, base: Path, skipped: list[Skipped]
) -> list[CorpusItem]:
    items = []
    for n, row in rows:
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            skipped.append(Skipped(f"{path}:{n}", f"line {n}: no 'image' path"))
            continue
        caps = row.get("captions")
        if caps is None:
            caps = row.get("caption")
        if isinstance(caps, str):
            caps = [caps]
        elif caps is None:
            caps = []
        elif not isinstance(caps, list):
            skipped.append(Skipped(f"{path}:{n}", f"line {n}: 'captions' is not a list"))
            continue
        meta = {k: v for k, v in row.items() if k not in ("image", "captions", "caption", "id", "split")}
        item_id = row.get("id")
        items.append(
            CorpusItem(
                id=str(item_id) if item_id not in (None, "") else image,
                path=base / image,
                captions=_clean_captions(caps),
                split=_norm_split(row.get("split")),
                metadata=meta,
            )
        )
    return items


@register_reader("jsonl")
def read_jsonl(
    path: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
) -> Corpus:
    """A JSONL manifest. ``image`` paths are relative to ``image_dir`` (default: the manifest's
    folder) or absolute; ``captions`` (list) or ``caption`` (string); ``id`` defaults to the
    image path; ``split`` (``"none"``/null mean no split) filters when ``split`` is given; every
    other key goes to ``metadata``."""
    _check_limit(limit)
    jpath = existing_path(path)
    if jpath.is_dir():
        raise CorpusError(f"{jpath}: a directory; the jsonl reader needs the manifest file")
    base = existing_path(image_dir) if image_dir is not None else jpath.parent
    skipped: list[Skipped] = []
    items = _rows_to_items(parse_jsonl(jpath, skipped), jpath, base, skipped)
    present = {it.split for it in items}
    if split is not None:
        items = [it for it in items if it.split == split]
    name = jpath.stem + (f"-{split}" if split else "")
    return _finish(name, base, items, skipped, limit, jpath, _split_hint(split, present))


# --------------------------------------------------------------------------- flickr8k

FLICKR8K_SPLITS = ("train", "dev", "test")
_FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
_FLICKR_NAME = re.compile(r"^\d+_[0-9a-f]+\.jpg$")


def _flickr_annotation_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / "ann" / name):
        if cand.is_file():
            return cand
    return None


def _is_flickr_jsonl(path: Path) -> bool:
    """Whether the first row of ``path`` looks like a Flickr8k captions.jsonl row."""
    try:
        with path.open("rb") as f:
            first = f.readline()
        row = json.loads(first.decode("utf-8-sig"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(row, dict)
        and isinstance(row.get("image"), str)
        and "captions" in row
        and bool(_FLICKR_NAME.match(Path(row["image"]).name))
    )


@register_reader("flickr8k")
def read_flickr8k(
    path: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    source: str = "auto",
    image_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Flickr8k: ``path`` is its folder (or its ``captions.jsonl`` / ``Flickr8k.token.txt``).

    ``source``: ``"auto"`` prefers ``captions.jsonl`` and falls back to the official token file;
    ``"jsonl"`` or ``"token"`` force one. ``split`` is train/dev/test (``val`` means ``dev``) or
    None for all 8,091 images, including the 91 that are in no official split (their ``split``
    is None). Ids are the image file names, so both sources give the same ids.

    Token-file quirks handled: the caption keyed ``2258277193_586949ec62.jpg.1#0`` belongs to
    ``2258277193_586949ec62.jpg`` (a known typo in the file); that image is not in the official
    image archive, so it ends up in ``skipped`` as "file not found".
    """
    _check_limit(limit)
    if split == "val":
        split = "dev"
    if split is not None and split not in FLICKR8K_SPLITS:
        raise CorpusError(
            f"unknown Flickr8k split {split!r}; use one of {', '.join(FLICKR8K_SPLITS)} "
            "(or none for all images)"
        )
    if source not in ("auto", "jsonl", "token"):
        raise CorpusError(f"unknown Flickr8k source {source!r}; use auto, jsonl or token")
    p = existing_path(path)
    jsonl = token = None
    if p.is_file():
        if p.suffix == ".jsonl":
            jsonl, folder = p, p.parent
        else:
            token = p
            folder = p.parent.parent if p.parent.name == "ann" else p.parent
    else:
        folder = p
        cand = folder / "captions.jsonl"
        jsonl = cand if cand.is_file() else None
        token = _flickr_annotation_file(folder, "Flickr8k.token.txt")
    if source == "jsonl":
        token = None
    elif source == "token":
        jsonl = None
    elif jsonl is not None:
        token = None
    if jsonl is None and token is None:
        raise CorpusError(
            f"{p}: no Flickr8k captions found (need captions.jsonl, or Flickr8k.token.txt "
            "directly or under ann/)"
        )
    skipped: list[Skipped] = []
    if jsonl is not None:
        base = existing_path(image_dir) if image_dir is not None else jsonl.parent
        items = _rows_to_items(parse_jsonl(jsonl, skipped), jsonl, base, skipped)
        for it in items:
            it.id = Path(it.id).name
        root = base
        src = jsonl
    else:
        assert token is not None
        items, root = _flickr_token_items(token, folder, image_dir, skipped)
        src = token
    present = {it.split for it in items}
    if split is not None:
        items = [it for it in items if it.split == split]
    name = "flickr8k" + (f"-{split}" if split else "")
    return _finish(name, root, items, skipped, limit, src, _split_hint(split, present))


def _flickr_token_items(
    token: Path, folder: Path, image_dir: str | os.PathLike | None, skipped: list[Skipped]
) -> tuple[list[CorpusItem], Path]:
    caps: dict[str, list[tuple[int, str]]] = {}
    for n, line in enumerate(_read_text(token).splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, _, k = key.strip().partition("#")
        if not tab or not name:
            skipped.append(Skipped(f"{token}:{n}", f"line {n}: expected 'name.jpg#k<TAB>caption'"))
            continue
        name = re.sub(r"(\.jpg)\.\d+$", r"\1", name)  # "x.jpg.1#0" typo in the official file
        caps.setdefault(name, []).append((int(k) if k.isdigit() else 0, caption))
    splits: dict[str, str] = {}
    ann = token.parent
    for sp, fname in (("train", "Flickr_8k.trainImages.txt"), ("dev", "Flickr_8k.devImages.txt"),
                      ("test", "Flickr_8k.testImages.txt")):
        f = _flickr_annotation_file(ann, fname) or _flickr_annotation_file(folder, fname)
        if f is None:
            continue
        for line in _read_text(f).splitlines():
            if line.strip():
                splits[line.strip()] = sp
    if image_dir is not None:
        base = existing_path(image_dir)
    else:
        base = _pick_image_dir(folder, list(caps), _FLICKR_IMAGE_DIRS)
    items = [
        CorpusItem(
            id=name,
            path=base / name,
            captions=_clean_captions(c for _, c in sorted(pairs, key=lambda kc: kc[0])),
            split=splits.get(name),
        )
        for name, pairs in caps.items()
    ]
    return items, base


# --------------------------------------------------------------------------- auto


def detect_kind(path: str | os.PathLike) -> str:
    """Which reader fits ``path``.

    * a directory holding ``Flickr8k.token.txt`` (directly or in ``ann/``), or a
      ``captions.jsonl`` whose rows are Flickr photos -> ``flickr8k``
    * a directory holding exactly one ``captions_*.json`` in COCO layout -> ``coco``
    * a directory holding another ``captions.jsonl`` manifest -> ``jsonl`` (on that file)
    * any other directory -> ``folder``
    * a ``.json`` with ``images`` + ``annotations`` -> ``coco``; with ``images[].sentences``
      -> ``karpathy``
    * a ``.jsonl`` -> ``jsonl``; a ``Flickr8k.token.txt`` -> ``flickr8k``
    """
    return _detect(existing_path(path))[0]


def _detect(p: Path) -> tuple[str, Path, Any]:
    """(kind, path to hand the reader, parsed JSON if already loaded)."""
    if p.is_dir():
        if _flickr_annotation_file(p, "Flickr8k.token.txt"):
            return "flickr8k", p, None
        manifest = p / "captions.jsonl"
        if manifest.is_file():
            return ("flickr8k", p, None) if _is_flickr_jsonl(manifest) else ("jsonl", manifest, None)
        coco = sorted(c for c in p.glob("captions_*.json") if c.is_file())
        if len(coco) == 1:
            data = load_json(coco[0])
            if _json_kind(data) == "coco":
                return "coco", coco[0], data
        return "folder", p, None
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl", p, None
    if suffix == ".json":
        data = load_json(p)
        kind = _json_kind(data)
        if kind is None:
            raise CorpusError(
                f"{p}: unrecognised JSON layout (expected COCO 'images'+'annotations' or "
                "Karpathy 'images[].sentences'); name the kind explicitly"
            )
        return kind, p, data
    if p.name.lower() == "flickr8k.token.txt":
        return "flickr8k", p, None
    if suffix in IMAGE_SUFFIXES:
        raise CorpusError(f"{p}: a single image, not a corpus; give the folder that holds it")
    raise CorpusError(
        f"{p}: cannot tell what kind of corpus this is; pass one of {', '.join(sorted(READERS))}"
    )


def _json_kind(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return None
    if isinstance(data.get("annotations"), list):
        return "coco"
    first = next((im for im in data["images"] if isinstance(im, dict)), None)
    if first is not None and "sentences" in first:
        return "karpathy"
    return None


# --------------------------------------------------------------------------- dispatcher

#: ``split`` value meaning "test when the corpus has splits, else all images".
DEFAULT_SPLIT = "default"
_ALWAYS_SPLIT = ("flickr8k", "karpathy", "vqa-rad")  # readers whose every corpus has splits
_NEVER_SPLIT = ("folder", "coco")         # readers that refuse a split


def resolve_split(kind: str, path: str | os.PathLike, split: str | None, **options: Any) -> str | None:
    """The split :func:`read_corpus` filters on: ``None``/``"all"`` -> None (every image);
    ``"default"`` -> ``"test"`` when the corpus has splits, else None; any other name as given."""
    if split is None or split == "all":
        return None
    if split != DEFAULT_SPLIT:
        return split
    if kind == "auto":  # the reader's own path too: a folder's captions.jsonl is read as that file
        kind, path, _ = _detect(existing_path(path))
    if kind in _ALWAYS_SPLIT:
        return "test"
    if kind in _NEVER_SPLIT:
        return None
    # other formats (jsonl, registered readers): splits are per row, so look at the rows
    whole = read_corpus(kind, path, split=None, **options)
    return "test" if any(it.split is not None for it in whole.items) else None



def read_corpus(
    kind: str,
    path: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> Corpus:
    """Read a corpus of the given ``kind`` (one of :data:`READERS`, or ``"auto"``).

    ``options`` go to the reader (``image_dir=`` for coco/karpathy/jsonl/flickr8k,
    ``restval_as_train=`` for karpathy, ``source=`` for flickr8k). ``split``: see
    :func:`resolve_split` (``"all"``, ``"default"`` or a split name; None = all).
    """
    split = resolve_split(kind, path, split, **options)
    if kind == "auto":
        detected, target, data = _detect(existing_path(path))
        if data is not None and detected == "coco":
            _check_limit(limit)
            return _coco_from_data(data, target, split, limit, options.get("image_dir"))
        if data is not None and detected == "karpathy":
            _check_limit(limit)
            return _karpathy_from_data(
                data, target, split, limit, options.get("image_dir"),
                bool(options.get("restval_as_train", False)),
            )
        kind, path = detected, target
    try:
        reader = READERS[kind]
    except KeyError:
        raise CorpusError(
            f"unknown corpus kind {kind!r}; use one of auto, {', '.join(sorted(READERS))}"
        ) from None
    try:
        return reader(path, split=split, limit=limit, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise CorpusError(f"corpus kind {kind!r} does not take that option ({e})") from None
        raise
