"""Image inputs: open, check and convert what users upload, with errors that name the field.

Accepted values are what the UI, the API and code hand in: a PIL image, a numpy array, a file path, or a
Gradio file payload (a dict with a "path", already placed in Gradio's upload cache). Images are checked
for size before their pixels are decoded, so decompression bombs are refused cheaply.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from flux_ui.params import MIN_SIDE, InvalidInput

log = logging.getLogger(__name__)

MAX_INPUT_MEGAPIXELS = 20.0  # largest image accepted as input (outputs have their own limit)
MAX_INPUT_PIXELS = int(MAX_INPUT_MEGAPIXELS * 1_000_000)
_TOO_LARGE = f"is too large to decode safely (a decompression bomb?); the limit is {MAX_INPUT_MEGAPIXELS:g} MP"
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # integer modes holding 16-bit samples in practice


def _open(value: object, field: str) -> Image.Image:
    """The value as an (unchecked, lazily decoded) PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        try:
            return Image.fromarray(value)
        except (TypeError, ValueError) as err:
            raise InvalidInput(field, f"this array is not an image ({err})") from None
    if isinstance(value, dict) and "path" in value:
        value = value["path"]
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    if isinstance(value, str | Path | io.BytesIO):
        try:
            return Image.open(value)
        except FileNotFoundError:
            raise InvalidInput(field, f"no such file: {value}") from None
        except Image.DecompressionBombError:
            raise InvalidInput(field, _TOO_LARGE) from None
        except (UnidentifiedImageError, OSError):
            raise InvalidInput(field, "is not an image file PIL can read (use PNG, JPEG or WebP)") from None
    raise InvalidInput(field, f"expected an image, got {type(value).__name__}")


def open_image(value: object, field: str, min_side: int = MIN_SIDE) -> Image.Image:
    """Open and check an image input in its own colour mode; raise InvalidInput naming `field` if it is
    missing, not an image, smaller than `min_side` px on a side, over 20 megapixels, or broken.

    The result is decoded, upright (EXIF orientation applied) and, for animations, the first frame.
    """
    if value is None:
        raise InvalidInput(field, "is missing; upload an image")
    img = _open(value, field)
    w, h = img.size
    if w < min_side or h < min_side:
        raise InvalidInput(field, f"is {w}x{h}; images must be at least {min_side} px on each side")
    if w * h > MAX_INPUT_PIXELS:
        raise InvalidInput(
            field, f"is {w}x{h} = {w * h / 1e6:.1f} MP, over the {MAX_INPUT_MEGAPIXELS:g} MP limit; downscale it first"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()
            upright = ImageOps.exif_transpose(img)  # a copy
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(field, _TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt files fail here, not at open
        raise InvalidInput(field, f"could not be decoded ({err}); re-save it as PNG or JPEG") from None
    finally:
        if img is not value:  # opened here from a file: release it (animations keep theirs open)
            img.close()
    return upright


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the way a viewer shows it.

    Transparency is flattened onto white (as browsers show transparent PNGs on a light page), 16-bit and
    float greyscale are scaled rather than clipped, and CMYK goes through its embedded ICC profile when it
    has one (PIL's plain CMYK conversion ignores profiles).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        # 16-bit: 0-65535 -> 0-255; float: [0, 1] -> 0-255, or taken as 0-255 already if it goes beyond 1.
        scale = 1 / 257 if img.mode != "F" else (255.0 if a.max(initial=0.0) <= 1.0 else 1.0)
        a = a * scale
        return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError) as err:
                log.warning("CMYK image with an unusable ICC profile (%s); converting without it", err)
        return img.convert("RGB")
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(value: object, field: str) -> Image.Image:
    """Open, check and convert an image input to RGB; see `open_image` for what is refused."""
    return to_rgb(open_image(value, field))


def alpha_or_luminance(img: Image.Image) -> Image.Image:
    """A single-channel view of a mask: its alpha where it has a meaningful one, else its brightness."""
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands():
        alpha = img.getchannel("A")
        if alpha.getextrema() != (255, 255):  # a fully opaque alpha says nothing; read the pixels instead
            return alpha
    return to_rgb(img).convert("L")


def image_hash(img: Image.Image) -> str:
    """A short hash of the pixels (not the file), recorded in metadata to tell source images apart."""
    digest = hashlib.sha256(f"{img.mode}{img.size}".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()[:10]


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The generation size for a `width` x `height` canvas: scaled down (never up) to fit `max_pixels`,
    each side rounded down to a multiple of 16 (FLUX works in 16-pixel patches), at least 64."""
    scale = min(1.0, (max_pixels / (width * height)) ** 0.5)
    return tuple(max(MIN_SIDE, int(side * scale) // 16 * 16) for side in (width, height))  # type: ignore[return-value]
