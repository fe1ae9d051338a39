"""Reading user images: whatever the UI or the API hands over, checked and turned into an RGB PIL image.

Every tab that takes an image goes through `load_image`, so the same inputs get the same errors: a missing
image, a file that is not an image, one too small or too large, and decompression bombs (a small file
that would unpack to gigapixels) are refused with an `InvalidInput` naming the field.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from flux_ui.params import InvalidInput

MIN_SIDE = 64  # pixels; FLUX works in 16-pixel patches and is trained far above this
MAX_PIXELS = 20_000_000  # 20 megapixels: a 48 MP phone photo has to be scaled down first
BACKGROUND = (255, 255, 255)  # transparent areas become white, as most viewers and editors show them


def load_image(value: object, field: str, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB copy of `value`, upright as its EXIF orientation says.

    `value` may be a PIL image, a file path, a Gradio file dict (`{"path": ...}`, what components send when
    their preprocessing is off) or an HxW / HxWxC uint8 array. Transparency is flattened onto white;
    grayscale, palette, CMYK and 16-bit images are converted. Raises InvalidInput naming `field`.
    """
    if isinstance(value, Image.Image):
        _check_size(value.size, field, min_side, max_pixels)
        return _to_rgb(value)
    if isinstance(value, np.ndarray):
        try:
            img = Image.fromarray(value)
        except (TypeError, ValueError) as err:
            raise InvalidInput(field, f"is an array of shape {value.shape} that is not an image ({err})") from None
        _check_size(img.size, field, min_side, max_pixels)
        return _to_rgb(img)
    path = value.get("path") if isinstance(value, dict) else value
    if path is None or path == "":
        raise InvalidInput(field, "is missing; upload an image")
    if not isinstance(path, str | Path):
        raise InvalidInput(field, f"expected an image file, got {type(value).__name__}")
    try:
        with warnings.catch_warnings():
            # Above PIL's own bomb threshold it only warns (up to twice that, where it raises); the size
            # check below refuses anything that large anyway, so the warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img.size, field, min_side, max_pixels)  # from the header, before decoding
                img.load()
                return _to_rgb(img)
    except Image.DecompressionBombError:
        raise InvalidInput(
            field, f"is a decompression bomb (its header claims far more pixels than {max_pixels / 1e6:g} MP)"
        ) from None
    except FileNotFoundError:
        raise InvalidInput(field, "the file was not found; upload it again") from None
    except Image.UnidentifiedImageError:  # its message holds the server-side path: not for users
        raise InvalidInput(field, "is not an image file; upload a PNG, JPEG or WebP") from None
    except OSError as err:  # truncated or corrupt files
        raise InvalidInput(field, f"is damaged and cannot be read ({err})") from None


def _check_size(size: tuple[int, int], field: str, min_side: int, max_pixels: int) -> None:
    w, h = size
    if min(w, h) < min_side:
        raise InvalidInput(field, f"is {w}x{h} pixels; each side must be at least {min_side}")
    if w * h > max_pixels:
        raise InvalidInput(
            field, f"is {w}x{h}, {w * h / 1e6:.1f} megapixels; scale it down to at most {max_pixels / 1e6:g}"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)  # phone photos are stored sideways with a rotation tag
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grayscale: PIL's convert("L") clips at 255 instead of scaling, so scale here.
        a = np.asarray(img, dtype=np.float64)
        peak = a.max(initial=0.0)
        top = 65535.0 if img.mode.startswith("I;16") or peak > 255 else 1.0 if img.mode == "F" and peak <= 1 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")  # palette images may carry a transparent index
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGB (a copy, so callers may modify it)
