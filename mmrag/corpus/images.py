"""Safe image loading: every failure becomes an ImageError with a reason.

SVG files (documentation figures are mostly SVG) are rasterised with cairosvg over libcairo, at
a bounded size, so they are embedded like any other image; without cairosvg or libcairo an SVG
fails with an ImageError naming what to install.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmrag.errors import ImageError

# Refuse decompression bombs before decoding: 64 MP is far above any photo a user would index
# at embedding resolution, and bounds memory per image to ~200 MB.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".svg"}
# SVG limits, the vector analogue of MAX_PIXELS: the file is read whole and parsed, so its size is
# capped (d2l's largest figure is 270 KB); the raster's long side is brought into
# [SVG_MIN_SIDE, SVG_MAX_SIDE] px whatever the declared size (a 1e9 px wide SVG is a bomb, a 40 px
# icon too small for a 224 px encoder input).
MAX_SVG_BYTES = 16_000_000
SVG_MAX_SIDE = 1024
SVG_MIN_SIDE = 256
_SVG_INSTALL = "pip install cairosvg; Debian/Ubuntu: apt-get install libcairo2"


def open_image(
    source: str | Path | bytes | Image.Image,
    max_pixels: int = MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Open and fully decode an image as RGB, or raise ImageError saying why not.

    ``draft``: for JPEGs, let the decoder downscale by a power of two while keeping both sides
    at least this large (much faster for big photos that are resized afterwards anyway).
    """
    if isinstance(source, Image.Image):
        try:
            return _to_rgb(source)
        except (OSError, ValueError) as e:
            raise ImageError(f"<image>: cannot convert to RGB ({e})") from None
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot open ({e.strerror or e})") from None
    with fp:
        head = fp.read(4096)
        if not head:  # the reason the folder reader gives, not "not an image"
            raise ImageError(f"{name}: empty file (0 bytes)")
        fp.seek(0)
        if _looks_like_svg(head, name):
            data = fp.read(MAX_SVG_BYTES + 1)
            if len(data) > MAX_SVG_BYTES:
                raise ImageError(f"{name}: SVG too large (> {MAX_SVG_BYTES} bytes)")
            return _to_rgb(_rasterise_svg(data, name, max_pixels))
        try:
            with warnings.catch_warnings():
                # Our own max_pixels check below is the authority (it runs on the header,
                # before decoding); PIL's warning at ~89 Mpx would silently cap a larger
                # max_pixels. PIL's hard DecompressionBombError (~179 Mpx) still applies.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"{name}: image too large ({w}x{h} > {max_pixels} pixels)")
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", draft)
                img.load()  # decode now, so truncation is caught here and not in a worker
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image or unsupported format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{name}: decompression bomb refused ({e})") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
        if getattr(img, "is_animated", False):
            img.seek(0)
        try:
            return _to_rgb(_upright(img))
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot convert to RGB ({e})") from None


def _looks_like_svg(head: bytes, name: str) -> bool:
    if name.lower().endswith((".svg", ".svgz")):
        return True
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith(b"<") and b"<svg" in head


def _rasterise_svg(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An SVG document as a PIL image, its long side in [SVG_MIN_SIDE, SVG_MAX_SIDE] px.

    cairosvg's defaults are kept: no XML entities, no external files or URLs (only data: URLs)."""
    try:
        from cairosvg.helpers import node_format
        from cairosvg.parser import Tree
        from cairosvg.surface import PNGSurface
    except ImportError as e:
        raise ImageError(f"{name}: SVG needs the cairosvg package to be rasterised ({_SVG_INSTALL}): {e}") from None
    except OSError as e:  # cairocffi finds no libcairo
        raise ImageError(f"{name}: SVG needs libcairo to be rasterised ({_SVG_INSTALL}): {e}") from None
    try:
        tree = Tree(bytestring=data)
        # the declared size, units resolved as cairosvg does at 96 dpi (percentages: no viewport)
        probe = _SizeProbe()
        w, h, _ = node_format(probe, tree)
        if not (w > 0 and h > 0) or not (w < float("inf") and h < float("inf")):
            raise ImageError(f"{name}: SVG has no usable width/height or viewBox")
        long_side = max(w, h)
        scale = min(max(long_side, SVG_MIN_SIDE), SVG_MAX_SIDE) / long_side
        if min(w, h) * scale < 1:
            raise ImageError(f"{name}: SVG aspect ratio too extreme to rasterise ({w:g}x{h:g})")
        if round(w * scale) * round(h * scale) > max_pixels:
            raise ImageError(f"{name}: SVG too large to rasterise ({w:.0f}x{h:.0f} at scale {scale:.3g})")
        out = io.BytesIO()
        surface = PNGSurface(tree, out, 96, scale=scale)
        surface.finish()
        img = Image.open(io.BytesIO(out.getvalue()))
        img.load()
    except ImageError:
        raise
    except Exception as e:  # malformed XML, forbidden entities, unsupported content: cairosvg's own errors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{name}: corrupt or unsupported SVG ({msg})") from None
    return img


class _SizeProbe:
    """What cairosvg's size() reads from a surface, to get an SVG's declared size before drawing."""

    context_width = context_height = 0
    dpi = 96
    font_size = 16.0  # 12pt at 96 dpi, cairosvg's default


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos are stored sideways with a rotation tag)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with high-bit-depth greys scaled (not clipped) and transparency over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if img.mode == "F" and hi <= 1.0:
            a = a * 255.0
        elif img.mode.startswith("I;16") or 255.0 < hi <= 65535.0:
            a = a / 257.0
        elif hi > 65535.0 or float(a.min()) < 0.0:
            lo = float(a.min())
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")
