"""``mmrag info``, ``mmrag remove`` and ``mmrag encoders``: look at and edit an index."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mmrag.cli.common import err, out


def info(index_dir: Path = typer.Option(..., "--index", "-i"), as_json: bool = typer.Option(False, "--json")):
    """What an index holds and how it was built."""
    from mmrag.index.collection import Collection

    c = Collection.open(index_dir)
    d = c.info()
    c.close()
    if as_json:
        print(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        for line in info_lines(d):
            out.print(line, markup=False, highlight=False)


def info_lines(d: dict, indent: int = 0) -> list[str]:
    """``key: value`` lines, nested dicts indented and lists comma-joined -- not Python reprs."""
    lines = []
    pad = "  " * indent
    for key, v in d.items():
        label = str(key).replace("_", " ")
        if isinstance(v, dict):
            lines.append(f"{pad}{label}:" + ("" if v else " none"))
            lines += info_lines(v, indent + 1)
        elif isinstance(v, (list, tuple)):
            if v and all(isinstance(x, dict) for x in v):
                lines.append(f"{pad}{label}:")
                for x in v:
                    lines.append(f"{pad}  - " + ", ".join(f"{k}={y}" for k, y in x.items()))
            else:
                lines.append(f"{pad}{label}: " + (", ".join(str(x) for x in v) or "none"))
        else:
            lines.append(f"{pad}{label}: {'none' if v is None else v}")
    return lines


def remove(
    ids: list[str] = typer.Argument(..., help="Image ids to delete (as shown by search)."),
    index_dir: Path = typer.Option(..., "--index", "-i"),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing this index, wait for it instead of refusing."),
):
    """Delete images (and their captions) from an index, without a rebuild."""
    from mmrag.index.collection import Collection, IndexManifest, write_lock

    IndexManifest.load(index_dir)  # not an index: say so before creating a lock file in it
    with write_lock(index_dir, wait=wait):
        c = Collection.open(index_dir)
        try:
            n_img, n_cap = c.remove(ids)
            c.save()
        finally:
            c.close()
    out.print(f"removed {n_img} images and {n_cap} captions")
    if n_img < len(ids):
        err.print(f"[yellow]{len(ids) - n_img} of the ids were not in the index[/]")


def encoders():
    """List the encoders that can be chosen by name."""
    from mmrag.encoders import ENCODERS

    for n in ENCODERS.names():
        out.print(n)
