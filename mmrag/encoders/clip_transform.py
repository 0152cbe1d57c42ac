"""CLIP image preprocessing: PIL RGB image -> normalised float32 CHW array.

Resize the short side to the model resolution (bicubic, PIL), centre crop, scale to [0, 1],
subtract the CLIP mean and divide by the CLIP std. Two bit-level flavours exist in the wild and
both are reproduced exactly:

* ``"hf"``: ``transformers.CLIPImageProcessor`` (PIL backend): crop offset ``(h - crop) // 2``,
  rescale in float64 then cast to float32, normalise in float32.
* ``"torchvision"``: OpenAI / open_clip (``Resize`` + ``CenterCrop`` + ``ToTensor`` +
  ``Normalize``): crop offset ``int(round((h - crop) / 2))``, divide by 255 in float32.

They differ only by a one-pixel crop shift on some odd size differences and by float rounding in
the last bit, so either is fine for any CLIP model; we use the flavour that matches how the
directory's layout was made (Hugging Face layout -> ``"hf"``, open_clip layout -> ``"torchvision"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SIZE = 224
# When the resized (pre-crop) image would be this many times larger than the crop, resample only
# the crop window (PIL ``box``) instead: identical maths up to float rounding of the filter
# positions, and it bounds time and memory on extreme aspect ratios (e.g. a 10 x 6,000,000 strip
# would otherwise be resized to 224 x 134,400,000).
_BOX_RESIZE_FACTOR = 16

_PIL_RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "random": Image.Resampling.BICUBIC,  # open_clip: "random" means bicubic at inference
}


@dataclass(frozen=True)
class ClipTransform:
    """Callable PIL image -> float32 [3, crop_h, crop_w]; ``batch`` stacks to NCHW."""

    resize: int | tuple[int, int] | None = DEFAULT_SIZE  # int: short side; (h, w): squash; None: none
    crop: tuple[int, int] | None = (DEFAULT_SIZE, DEFAULT_SIZE)  # (h, w); None: no centre crop
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resample: Image.Resampling = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    flavour: str = "hf"  # "hf" | "torchvision", see the module docstring

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model_dir(cls, directory: str | Path | None, flavour: str = "hf") -> "ClipTransform":
        """Settings from ``preprocessor_config.json`` (Hugging Face) or ``open_clip_config.json``,
        falling back to OpenAI CLIP's (224 px, bicubic, CLIP mean/std)."""
        if directory is None:
            return cls(flavour=flavour)
        d = Path(directory)
        hf = d / "preprocessor_config.json"
        if hf.is_file():
            return cls.from_hf_config(json.loads(hf.read_text(encoding="utf-8")), flavour=flavour)
        oc = d / "open_clip_config.json"
        if oc.is_file():
            return cls.from_open_clip_config(json.loads(oc.read_text(encoding="utf-8")), flavour=flavour)
        return cls(flavour=flavour)

    @classmethod
    def from_hf_config(cls, cfg: dict, flavour: str = "hf") -> "ClipTransform":
        size = cfg.get("size", DEFAULT_SIZE)
        resize: int | tuple[int, int] | None
        if isinstance(size, dict):
            if "shortest_edge" in size:
                resize = int(size["shortest_edge"])
            else:
                resize = (int(size["height"]), int(size["width"]))
        else:
            resize = int(size)
        if not cfg.get("do_resize", True):
            resize = None
        crop_cfg = cfg.get("crop_size", resize if isinstance(resize, int) else DEFAULT_SIZE)
        if isinstance(crop_cfg, dict):
            crop = (int(crop_cfg["height"]), int(crop_cfg["width"]))
        else:
            crop = (int(crop_cfg), int(crop_cfg))
        if not cfg.get("do_center_crop", True):
            crop = None
        mean = tuple(float(x) for x in cfg.get("image_mean", CLIP_MEAN)) if cfg.get("do_normalize", True) else (0.0, 0.0, 0.0)
        std = tuple(float(x) for x in cfg.get("image_std", CLIP_STD)) if cfg.get("do_normalize", True) else (1.0, 1.0, 1.0)
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        resample = _PIL_RESAMPLE.get(cfg.get("resample", 3), Image.Resampling.BICUBIC)
        return cls(resize, crop, mean, std, resample, rescale, flavour)

    @classmethod
    def from_open_clip_config(cls, cfg: dict, flavour: str = "torchvision") -> "ClipTransform":
        model_cfg = cfg.get("model_cfg", cfg)
        pp = dict(cfg.get("preprocess_cfg", {}))
        image_size = pp.get("size") or (model_cfg.get("vision_cfg") or {}).get("image_size") or DEFAULT_SIZE
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        mode = pp.get("resize_mode", "shortest")
        if mode == "shortest":
            resize: int | tuple[int, int] = int(h) if h == w else (int(h), int(w))
            crop: tuple[int, int] | None = (int(h), int(w))
            if h != w:  # open_clip's ResizeKeepRatio path; not reproduced
                raise ValueError("open_clip non-square image_size with resize_mode 'shortest' is not supported")
        elif mode == "squash":
            resize, crop = (int(h), int(w)), None
        else:
            raise ValueError(f"open_clip resize_mode {mode!r} is not supported (only 'shortest', 'squash')")
        mean = tuple(float(x) for x in pp.get("mean", CLIP_MEAN))
        std = tuple(float(x) for x in pp.get("std", CLIP_STD))
        resample = _PIL_RESAMPLE.get(pp.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
        return cls(resize, crop, mean, std, resample, 1 / 255, flavour)

    # -- application ----------------------------------------------------------------------------
    @property
    def output_hw(self) -> tuple[int, int] | None:
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        return None

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize step, as torchvision / transformers compute it."""
        if self.resize is None:
            return w, h
        if isinstance(self.resize, tuple):
            return self.resize[1], self.resize[0]
        s = int(self.resize)
        if w <= h:
            return s, int(s * h / w)
        return int(s * w / h), s

    def _crop_offsets(self, w: int, h: int) -> tuple[int, int]:
        ch, cw = self.crop  # type: ignore[misc]
        if self.flavour == "torchvision":
            return int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
        return (w - cw) // 2, (h - ch) // 2

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """The geometric part: resized, centre-cropped RGB image."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        if w < 1 or h < 1:
            raise ValueError("empty image")
        rw, rh = self._resized_size(w, h)
        rw, rh = max(rw, 1), max(rh, 1)
        crop = self.crop
        if crop is not None and rw >= crop[1] and rh >= crop[0] and rw * rh > _BOX_RESIZE_FACTOR * crop[0] * crop[1]:
            left, top = self._crop_offsets(rw, rh)
            sx, sy = w / rw, h / rh
            box = (left * sx, top * sy, (left + crop[1]) * sx, (top + crop[0]) * sy)
            return img.resize((crop[1], crop[0]), resample=self.resample, box=box)
        if (rw, rh) != (w, h):
            img = img.resize((rw, rh), resample=self.resample)
        if crop is None:
            return img
        ch, cw = crop
        if rw >= cw and rh >= ch:
            left, top = self._crop_offsets(rw, rh)
            return img.crop((left, top, left + cw, top + ch))
        # Smaller than the crop (only without a short-side resize): zero-pad around it, centred,
        # as both reference implementations do.
        pw, ph = max(cw, rw) - rw, max(ch, rh) - rh
        if self.flavour == "torchvision":
            offset = (pw // 2, ph // 2)
        else:
            offset = ((pw + 1) // 2, (ph + 1) // 2)
        canvas = Image.new("RGB", (rw + pw, rh + ph))
        canvas.paste(img, offset)
        left, top = self._crop_offsets(*canvas.size)
        return canvas.crop((left, top, left + cw, top + ch))

    def __call__(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(self.resize_and_crop(img))  # HWC uint8
        if self.flavour == "torchvision":
            x = arr.astype(np.float32) / np.float32(1 / self.rescale_factor)
        else:
            x = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self(im) for im in images]).astype(np.float32, copy=False)
