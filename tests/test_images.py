"""Image inputs: every bad upload gets an error naming the field; odd colour modes become correct RGB."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from flux_ui.core.errors import InvalidInput
from flux_ui.media.images import image_hash, load_image


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def error(value, field="image") -> str:
    with pytest.raises(InvalidInput) as err:
        load_image(value, field)
    assert err.value.field == field
    return str(err.value)


@pytest.fixture
def uploaded(bad_images, monkeypatch):
    """The bad images count as uploads: their folder is the upload folder, as Gradio's would be."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(bad_images["text"].parent))
    return bad_images


def test_missing_and_non_images(uploaded):
    assert "is missing" in error(None)
    assert "is missing" in error({"path": None, "url": None})
    assert "is not an image" in error(str(uploaded["text"]), "image_2")
    assert "is not an image" in error(b"GIF89a but not really")
    gone = error(str(uploaded["text"].parent / "gone.png"))
    assert gone == "image: is not a file uploaded to this server; upload it again"
    assert "expected an image" in error(42)


def test_too_small_and_too_large(uploaded):
    bad_images = uploaded
    assert "63x200; each side must be at least 64" in error(str(bad_images["small"]))
    msg = error(str(bad_images["huge"]))
    assert "5000x4100" in msg and "over the limit of 20" in msg


def test_decompression_bomb_is_refused_before_decoding(uploaded):
    bad_images = uploaded
    bomb = bad_images["bomb"].read_bytes()  # 400 megapixels
    assert len(bomb) < 200_000
    assert "refused as a decompression bomb" in error(bomb)  # PIL's own guard, from the header
    moderate = str(bad_images["bomb_108mp"])  # between PIL's warning and error thresholds: our limit stops it
    with pytest.warns(Image.DecompressionBombWarning):  # PIL warns from the header; nothing is decoded
        assert "12000x9000, 108.0 megapixels, over the limit of 20" in error(moderate)


def test_truncated_file_is_reported():
    data = png_bytes(Image.effect_noise((256, 256), 64).convert("RGB"))
    assert "truncated" in error(data[: len(data) // 2])


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red: shows as white
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 255, 128))
    rgb = load_image(png_bytes(img), "image")
    assert rgb.mode == "RGB"
    assert rgb.getpixel((5, 5)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    r, g, b = rgb.getpixel((1, 0))
    assert abs(r - 127) <= 1 and abs(g - 127) <= 1 and b == 255


def test_palette_with_transparency_and_grayscale():
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 255, 0] * 2 + [0] * 762)
    rgb = load_image(png_bytes(pal, transparency=0), "image")
    assert rgb.getpixel((3, 3)) == (255, 255, 255)
    gray = load_image(Image.new("L", (64, 64), 77), "image")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    la = load_image(Image.new("LA", (64, 64), (0, 0)), "image")
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((64, 64), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    rgb = load_image(png_bytes(Image.fromarray(arr)), "image")
    assert rgb.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_becomes_rgb():
    cyan = Image.new("CMYK", (64, 64), (255, 0, 0, 0))
    buf = io.BytesIO()
    cyan.save(buf, format="JPEG", quality=100)  # PIL writes (and reads back) Adobe's CMYK JPEG
    r, g, b = load_image(buf.getvalue(), "image").getpixel((10, 10))
    assert r < 20 and g > 235 and b > 235


def test_cmyk_with_an_unusable_profile_falls_back_to_the_plain_conversion():
    # No CMYK profile ships with the test machines; an sRGB profile on CMYK pixels cannot be applied.
    cyan = Image.new("CMYK", (64, 64), (255, 0, 0, 0))
    cyan.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    r, g, b = load_image(cyan, "image").getpixel((10, 10))
    assert r < 20 and g > 235 and b > 235


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (96, 64), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue(), "image").size == (64, 96)


def test_gradio_file_data_and_data_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    path = tmp_path / "in.png"
    Image.new("RGB", (80, 64), (1, 2, 3)).save(path)
    assert load_image({"path": str(path), "url": None}, "image").size == (80, 64)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    assert load_image({"path": None, "url": url}, "image").getpixel((0, 0)) == (1, 2, 3)
    assert "not valid base64" in error({"path": None, "url": "data:image/png;base64,@@@"})


def test_caller_image_is_left_alone_and_hash_follows_pixels():
    src = Image.new("RGB", (64, 64), (9, 9, 9))
    out = load_image(src, "image")
    assert out is not src and src.getpixel((0, 0)) == (9, 9, 9)
    same = load_image(png_bytes(src), "image")
    assert image_hash(out) == image_hash(same) and len(image_hash(out)) == 16
    assert image_hash(out) != image_hash(Image.new("RGB", (64, 64), (9, 9, 10)))


def test_a_smaller_minimum_side_can_be_asked_for():
    from PIL import Image as _Image

    from flux_ui.media.images import load_image

    small = _Image.new("RGB", (20, 20), "red")
    with pytest.raises(InvalidInput, match="at least 64"):
        load_image(small, "image")
    assert load_image(small, "image", min_side=16).size == (20, 20)


def test_numpy_arrays_are_images_too():
    arr = np.zeros((64, 80, 3), dtype=np.uint8)
    arr[..., 0] = 10
    out = load_image(arr, "image")
    assert out.size == (80, 64) and out.getpixel((0, 0)) == (10, 0, 0)


def test_masks_read_alpha_when_it_means_something():
    from flux_ui.media.images import alpha_or_luminance

    painted = Image.new("RGBA", (64, 64), (255, 0, 255, 0))
    painted.paste((255, 0, 255, 200), (0, 0, 10, 10))
    assert alpha_or_luminance(painted).getpixel((0, 0)) == 200
    assert alpha_or_luminance(painted).getpixel((20, 20)) == 0
    opaque = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    assert alpha_or_luminance(opaque).getpixel((0, 0)) == 255
    assert alpha_or_luminance(Image.new("RGB", (64, 64))).getpixel((0, 0)) == 0


def test_small_masks_can_be_opened_with_a_lower_minimum():
    from flux_ui.media.images import open_image

    assert open_image(Image.new("L", (8, 8)), "mask", min_side=1).size == (8, 8)


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((128, 96), 2_000_000, (128, 96)),
        ((130, 100), 2_000_000, (128, 96)),  # multiples of 16, rounded down
        ((4000, 3000), 1_000_000, (1152, 864)),  # scaled down to fit, aspect kept
        ((64, 64), 2_000_000, (64, 64)),
    ],
)
def test_working_size(size, max_pixels, expected):
    from flux_ui.media.images import working_size

    w, h = working_size(*size, max_pixels)
    assert (w, h) == expected and w * h <= max_pixels and w % 16 == h % 16 == 0
