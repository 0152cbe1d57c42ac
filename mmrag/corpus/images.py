"""Safe image loading: every failure becomes an ImageError with a reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmrag.errors import ImageError

# Refuse decompression bombs before decoding: 64 MP is far above any photo a user would index
# at embedding resolution, and bounds memory per image to ~200 MB.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB, or raise ImageError saying why not."""
    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
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
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"{name}: image too large ({w}x{h} > {max_pixels} pixels)")
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
            return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot convert to RGB ({e})") from None
