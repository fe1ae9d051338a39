"""Reading user images: conversions to RGB, and errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flux_ui.images import load_image
from flux_ui.params import InvalidInput


def saved(tmp_path, img: Image.Image, name: str = "in.png", **kw) -> str:
    path = tmp_path / name
    img.save(path, **kw)
    return str(path)


def test_transparency_becomes_white_and_colours_survive(tmp_path):
    img = Image.new("RGBA", (80, 64), (0, 0, 0, 0))
    img.paste((200, 10, 10, 255), (0, 0, 40, 64))
    out = load_image({"path": saved(tmp_path, img)}, "image")  # a Gradio file dict
    assert out.mode == "RGB" and out.size == (80, 64)
    assert out.getpixel((10, 10)) == (200, 10, 10)
    assert out.getpixel((70, 10)) == (255, 255, 255)


def test_palette_with_a_transparent_index(tmp_path):
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    path = saved(tmp_path, img, transparency=1)
    assert load_image(path, "image").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),  # 16-bit grayscale is scaled, not clipped
        ("I;16", 32896, (128, 128, 128)),
    ],
)
def test_grayscale_cmyk_and_16_bit_become_rgb(mode, value, expected):
    out = load_image(Image.new(mode, (64, 64), value), "image")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == expected


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (96, 64), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 degrees clockwise to view"
    out = load_image(saved(tmp_path, img, "photo.jpg", exif=exif), "image")
    assert out.size == (64, 96)


def test_arrays_are_accepted():
    out = load_image(np.full((64, 80, 3), 7, np.uint8), "image")
    assert out.size == (80, 64) and out.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("value", [None, "", {"path": None}])
def test_missing_image(value):
    with pytest.raises(InvalidInput, match="image: is missing; upload an image"):
        load_image(value, "image")


def test_not_an_image_does_not_show_the_server_path(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(InvalidInput) as err:
        load_image(str(path), "init_image")
    assert str(err.value) == "init_image: is not an image file; upload a PNG, JPEG or WebP"


def test_truncated_file(tmp_path):
    path = saved(tmp_path, Image.effect_noise((128, 128), 50).convert("RGB"))
    with open(path, "r+b") as fh:
        fh.truncate(len(fh.read()) // 2)
    with pytest.raises(InvalidInput, match="image: is damaged"):
        load_image(path, "image")


def test_size_limits_name_the_field(tmp_path):
    with pytest.raises(InvalidInput, match=r"image: is 63x200 pixels; each side must be at least 64"):
        load_image(Image.new("RGB", (63, 200)), "image")
    assert load_image(Image.new("RGB", (20, 16)), "image", min_side=16).size == (20, 16)
    big = saved(tmp_path, Image.new("1", (5000, 4100)))  # 20.5 MP, a small file: checked from its header
    with pytest.raises(InvalidInput, match=r"image: is 5000x4100, 20.5 megapixels; scale it down to at most 20"):
        load_image(big, "image")


def test_decompression_bomb(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("1", (400, 400)))
    # PIL refuses images over twice MAX_IMAGE_PIXELS while reading the header; a small limit makes a
    # 160,000-pixel file a bomb without writing gigapixels to disk.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(InvalidInput, match="image: is a decompression bomb"):
        load_image(path, "image")
