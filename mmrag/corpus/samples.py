"""A small offline corpus from the photos bundled with scikit-image (used by ``mmrag quickstart``).

Only images shipped inside the scikit-image wheel are used (no pooch download), so this works
without a network. Captions were written for this project and live in
``mmrag/assets/sample_captions.json``, keyed by the ``skimage.data`` function name.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from mmrag.corpus.items import Corpus, CorpusItem, Skipped
from mmrag.errors import CorpusError

MAX_SIDE = 640  # the photos are stored at most this large (retina.jpg is 1411 px)
INSTALL_HINT = "pip install scikit-image  (or: pip install 'mmrag[quickstart]')"


def default_samples_dir() -> Path:
    """``mmrag.paths.cache_dir()/samples`` (follows ``$MMRAG_CACHE``, like every other cache)."""
    from mmrag.paths import cache_dir

    return cache_dir() / "samples"


def sample_captions() -> dict[str, list[str]]:
    """The bundled captions: ``{skimage name: [caption, ...]}`` in a fixed order."""
    text = (resources.files("mmrag") / "assets" / "sample_captions.json").read_text("utf-8")
    return json.loads(text)


def _load(data_module, name: str) -> np.ndarray:
    arr = getattr(data_module, name)()
    if name == "stereo_motorcycle":  # (left, right, disparity): keep the left photo
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr


def _to_rgb(arr: np.ndarray) -> Image.Image:
    img = Image.fromarray(arr)
    if img.mode in ("RGBA", "LA"):
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return bg
    return img.convert("RGB")


def sample_photos_corpus(out_dir: str | os.PathLike | None = None) -> Corpus:
    """Write the sample photos as JPEGs (plus ``name.txt`` caption sidecars, so the folder is
    also a valid ``folder`` corpus) into ``out_dir`` (default :func:`default_samples_dir`) and
    return them as a corpus. Files already there are reused. A photo that the installed
    scikit-image cannot load offline is left out and listed in ``skipped``."""
    try:
        import skimage.data as skdata
    except ImportError:
        raise CorpusError(
            f"the sample photos come from scikit-image, which is not installed: {INSTALL_HINT}"
        ) from None
    out = Path(out_dir).expanduser() if out_dir is not None else default_samples_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"{out}: cannot create the samples folder ({e.strerror or e})") from None
    items: list[CorpusItem] = []
    skipped: list[Skipped] = []
    for name, captions in sample_captions().items():
        path = out / f"{name}.jpg"
        if not (path.is_file() and path.stat().st_size > 0):
            try:
                img = _to_rgb(_load(skdata, name))
                img.thumbnail((MAX_SIDE, MAX_SIDE))
            except Exception as e:  # missing in this version, or needs pooch / a download
                why = f"cannot load offline ({type(e).__name__}: {e})"
                skipped.append(Skipped(f"skimage.data.{name}", why))
                continue
            tmp = path.with_suffix(".jpg.tmp")
            img.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        side = path.with_suffix(".txt")
        text = "\n".join(captions) + "\n"
        if not side.is_file() or side.read_text(encoding="utf-8", errors="replace") != text:
            side.write_text(text, encoding="utf-8")
        items.append(
            CorpusItem(
                id=path.name,
                path=path,
                captions=list(captions),
                metadata={"source": f"skimage.data.{name}"},
            )
        )
    if not items:
        raise CorpusError(
            f"no sample photos could be loaded from the installed scikit-image "
            f"({'; '.join(s.reason for s in skipped[:2])}); try: pip install -U scikit-image"
        )
    items.sort(key=lambda it: it.id)
    return Corpus(name="sample-photos", root=out, items=items, skipped=skipped)
