"""Image inputs: decoded safely, checked, and converted to plain RGB, with errors that name the field.

Every tab that takes an image (Kontext, Redux, Fill, Control, VQA) reads it through `load_image`, so the
same rules hold everywhere: at least 64 px a side, at most 20 megapixels (checked from the header, before
a single pixel is decoded, so a decompression bomb costs nothing), EXIF rotation applied, transparency
composited on white, grayscale, 16-bit, palette and CMYK images converted to sRGB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from flux_ui.core.errors import InvalidInput
from flux_ui.media.uploads import checked_upload

log = logging.getLogger(__name__)

MIN_INPUT_SIDE = 64  # pixels; smaller inputs carry too little for the models to work with
MAX_INPUT_MEGAPIXELS = 20.0  # largest input accepted; generation sizes have their own, lower limit
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as a viewer shows them


def _open(value: object, field: str) -> Image.Image:
    """A lazily opened PIL image from an upload in any of the forms Gradio and its clients send."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # Gradio's FileData: a file in the upload cache, or a data: URL
        url = value.get("url") or ""
        if value.get("path"):
            value = value["path"]
        elif url.startswith("data:"):
            try:
                value = base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput(field, "the data URL is not valid base64") from None
        else:
            raise InvalidInput(field, "is missing; upload an image")
    if isinstance(value, bytes):
        value = io.BytesIO(value)
    elif isinstance(value, str | Path):
        value = checked_upload(value, field)  # a path is read only if it is an upload to this server
    else:
        raise InvalidInput(field, f"expected an image, got {type(value).__name__}")
    try:
        return Image.open(value)  # reads the header only
    except Image.DecompressionBombError as err:
        raise InvalidInput(field, f"refused as a decompression bomb ({err})") from None
    except ValueError as err:  # PIL's guard against text chunks that inflate without bound
        if "Decompressed" in str(err):
            raise InvalidInput(field, f"refused as a decompression bomb ({err})") from None
        raise InvalidInput(field, "is not an image (use PNG, JPEG or WebP)") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise InvalidInput(field, "is not an image (use PNG, JPEG or WebP)") from None


def _check_size(img: Image.Image, field: str, max_pixels: int, min_side: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise InvalidInput(
            field,
            f"is {w}x{h}, {w * h / 1e6:.1f} megapixels, over the limit of {max_pixels / 1e6:g}; scale it down first",
        )
    if min(w, h) < min_side:
        raise InvalidInput(field, f"is {w}x{h}; each side must be at least {min_side} pixels")


def to_rgb(img: Image.Image) -> Image.Image:
    """Plain 8-bit sRGB, whatever the mode; transparency composited on white."""
    if img.mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:  # a profile says what the inks mean; converting without one only approximates
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError) as err:
                log.warning("ignoring an unusable CMYK colour profile: %s", err)
        return img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16- and 32-bit grayscale: scale to 8 bits (PIL's own convert clips everything above 255 to white).
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(
    value: object, field: str, max_megapixels: float = MAX_INPUT_MEGAPIXELS, *, min_side: int = MIN_INPUT_SIDE
) -> Image.Image:
    """Decode and check an uploaded image in its own colour mode; raise InvalidInput naming `field` if it
    is missing, not an image, smaller than `min_side` px a side, over `max_megapixels`, a decompression
    bomb, or truncated. The result is a new image, upright (EXIF orientation applied), the first frame of
    an animation.

    `value` may be a PIL image, a numpy array, raw bytes, Gradio's FileData dict (`path` or a `data:` URL)
    or a file path; a path (the FileData's too) must be an upload (`uploads.checked_upload`).
    """
    if value is None or (isinstance(value, str | dict | bytes) and not value):
        raise InvalidInput(field, "is missing; upload an image")
    if isinstance(value, np.ndarray):
        try:
            value = Image.fromarray(value)
        except (TypeError, ValueError) as err:
            raise InvalidInput(field, f"this array is not an image ({err})") from None
    opened = _open(value, field)
    try:
        _check_size(opened, field, int(max_megapixels * 1_000_000), min_side)
        try:
            opened.seek(0)  # animations: the first frame
            opened.load()
            return ImageOps.exif_transpose(opened)  # a new image, turned as the camera meant
        except Image.DecompressionBombError as err:
            raise InvalidInput(field, f"refused as a decompression bomb ({err})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InvalidInput(field, f"could not be decoded; the file may be truncated ({err})") from None
    finally:
        if opened is not value:  # a file we opened; the caller's own PIL image stays open
            opened.close()


def load_image(
    value: object, field: str, max_megapixels: float = MAX_INPUT_MEGAPIXELS, *, min_side: int = MIN_INPUT_SIDE
) -> Image.Image:
    """`open_image`, then converted to 8-bit RGB (see `to_rgb`). The image's text chunks (a PNG's generation
    parameters) stay in its `info`, whatever the conversion made anew, for tasks that carry them on."""
    upright = open_image(value, field, max_megapixels, min_side=min_side)
    try:
        rgb = to_rgb(upright)
    except ValueError as err:
        raise InvalidInput(field, f"colour mode {upright.mode} is not supported ({err})") from None
    rgb.info.update({k: v for k, v in upright.info.items() if isinstance(v, str)})
    return rgb


def alpha_or_luminance(img: Image.Image) -> Image.Image:
    """A single-channel view of a mask: its alpha where it has a meaningful one, else its brightness."""
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands():
        alpha = img.getchannel("A")
        if alpha.getextrema() != (255, 255):  # a fully opaque alpha says nothing; read the pixels instead
            return alpha
    return to_rgb(img).convert("L")


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The generation size for a `width` x `height` canvas: scaled down (never up) to fit `max_pixels`,
    each side rounded down to a multiple of 16 (FLUX works in 16-pixel patches), at least 64."""
    scale = min(1.0, (max_pixels / (width * height)) ** 0.5)
    w, h = (max(MIN_INPUT_SIDE, int(side * scale) // 16 * 16) for side in (width, height))
    return w, h


def image_hash(image: Image.Image) -> str:
    """A short content hash of the decoded RGB pixels (16 hex digits): the same picture gives the same hash
    however it was encoded or uploaded, so an output names the input it came from."""
    h = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


def stitch(images: list[Image.Image], max_aspect: float = 2.4, max_height: int = 1568) -> Image.Image:
    """Several RGB pictures side by side in one, each scaled (aspect kept) to a common height, as ComfyUI's
    Image Stitch node lays references out for Kontext. When a single row would be wider than `max_aspect`
    (three or four square pictures), they go in rows of two instead, each cell as large as the largest
    scaled picture, pictures centred on white. The common height is the tallest input's, at most
    `max_height` (Kontext's longest side: the pipeline shrinks the stitched picture to about 1 MP anyway)."""
    height = min(max(im.height for im in images), max_height)

    def scaled(im: Image.Image, h: int) -> Image.Image:
        return im.resize((max(1, round(im.width * h / im.height)), h), Image.Resampling.LANCZOS)

    row = [scaled(im, height) for im in images]
    if sum(im.width for im in row) / height <= max_aspect:
        canvas = Image.new("RGB", (sum(im.width for im in row), height), "white")
        x = 0
        for im in row:
            canvas.paste(im, (x, 0))
            x += im.width
        return canvas
    cell_w = max(im.width for im in row)
    rows = (len(row) + 1) // 2
    canvas = Image.new("RGB", (2 * cell_w, rows * height), "white")
    for i, im in enumerate(row):
        canvas.paste(im, ((i % 2) * cell_w + (cell_w - im.width) // 2, (i // 2) * height))
    return canvas
