import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from flux_ui.images import (
    MAX_INPUT_PIXELS,
    alpha_or_luminance,
    image_hash,
    load_image,
    open_image,
    working_size,
)
from flux_ui.params import InvalidInput


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_accepts_pil_arrays_paths_bytes_and_gradio_payloads(tmp_path):
    img = Image.new("RGB", (80, 64), (10, 20, 30))
    path = tmp_path / "a.png"
    img.save(path)
    for value in (img, np.asarray(img), str(path), path, path.read_bytes(), {"path": str(path), "url": None}):
        out = load_image(value, "image")
        assert out.mode == "RGB" and out.size == (80, 64) and out.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "image: is missing"),
        (b"not an image at all", "image: is not an image file"),
        ("/no/such/file.png", "image: no such file"),
        (12, "image: expected an image, got int"),
        (Image.new("RGB", (63, 200)), "image: is 63x200; images must be at least 64 px"),
    ],
)
def test_bad_inputs_name_the_field(value, message):
    with pytest.raises(InvalidInput, match=message) as err:
        load_image(value, "image")
    assert err.value.field == "image"


def test_over_twenty_megapixels_is_refused_before_decoding():
    # A 1-bit PNG of 5000x5000 is tiny on disk; its size is read from the header, its pixels never decoded.
    data = png_bytes(Image.new("1", (5000, 5000)))
    assert MAX_INPUT_PIXELS < 5000 * 5000
    with pytest.raises(InvalidInput, match="control_image: is 5000x5000 = 25.0 MP, over the 20 MP limit"):
        load_image(data, "control_image")


def test_decompression_bomb_is_refused():
    data = png_bytes(Image.new("1", (15000, 13000)))  # 195 MP: over PIL's own bomb limit too
    with pytest.raises(InvalidInput, match="image: is (too large|15000x13000)"):
        load_image(data, "image")


def test_truncated_file_is_a_clear_error():
    data = png_bytes(Image.effect_noise((128, 128), 50).convert("RGB"))
    with pytest.raises(InvalidInput, match="image: could not be decoded"):
        load_image(data[: len(data) // 2], "image")


def test_transparency_is_flattened_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))
    out = load_image(rgba, "image")
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((63, 0)) == (255, 255, 255)
    la = Image.new("LA", (64, 64), (0, 0))
    assert load_image(la, "image").getpixel((5, 5)) == (255, 255, 255)
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 255, 0] * 256)
    palette.info["transparency"] = 0
    assert load_image(png_bytes(palette, transparency=0), "image").getpixel((0, 0)) == (255, 255, 255)


def test_greyscale_and_sixteen_bit_are_scaled_not_clipped():
    assert load_image(Image.new("L", (64, 64), 100), "image").getpixel((0, 0)) == (100, 100, 100)
    deep = Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16))  # mid grey in 16 bits
    assert load_image(png_bytes(deep), "image").getpixel((0, 0)) == (128, 128, 128)
    floats = Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32))
    assert load_image(floats, "image").getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_is_converted_with_and_without_a_profile():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red ink
    assert load_image(cmyk, "image").getpixel((0, 0)) == (255, 0, 0)
    # With an embedded profile the conversion goes through it (here an sRGB-like round trip via LCMS).
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = Image.new("CMYK", (64, 64), (0, 0, 0, 0))
    tagged.info["icc_profile"] = profile  # an RGB profile on CMYK data: unusable, so PIL's conversion is used
    assert load_image(tagged, "image").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (100, 64), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue(), "image").size == (64, 100)


def test_masks_read_alpha_when_it_means_something():
    painted = Image.new("RGBA", (64, 64), (255, 0, 255, 0))
    painted.paste((255, 0, 255, 200), (0, 0, 10, 10))
    assert alpha_or_luminance(painted).getpixel((0, 0)) == 200
    assert alpha_or_luminance(painted).getpixel((20, 20)) == 0
    opaque = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    assert alpha_or_luminance(opaque).getpixel((0, 0)) == 255
    assert alpha_or_luminance(Image.new("RGB", (64, 64))).getpixel((0, 0)) == 0


def test_small_masks_can_be_opened_with_a_lower_minimum():
    assert open_image(Image.new("L", (8, 8)), "mask", min_side=1).size == (8, 8)


def test_hash_follows_pixels():
    a, b = Image.new("RGB", (64, 64), 1), Image.new("RGB", (64, 64), 2)
    assert image_hash(a) == image_hash(a.copy()) != image_hash(b)


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
    w, h = working_size(*size, max_pixels)
    assert (w, h) == expected and w * h <= max_pixels and w % 16 == h % 16 == 0
