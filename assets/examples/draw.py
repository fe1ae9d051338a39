"""Draws the example input images in this folder (run from the repository root:
`python assets/examples/draw.py`). They are drawn shapes, not photos, so they carry no one's rights:
CC0, like the rest of this folder."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SIDE = 768


def sky(draw: ImageDraw.ImageDraw, top: tuple[int, int, int], bottom: tuple[int, int, int], height: int) -> None:
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line([(0, y), (SIDE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))


def cottage() -> Image.Image:
    """A cottage on green hills under an evening sky: for image to image and Kontext edits."""
    img = Image.new("RGB", (SIDE, SIDE))
    d = ImageDraw.Draw(img)
    sky(d, (70, 110, 190), (250, 190, 140), 480)
    d.ellipse((540, 90, 660, 210), fill=(255, 230, 150))
    d.polygon([(0, 470), (200, 380), (420, 450), (620, 370), (SIDE, 430), (SIDE, SIDE), (0, SIDE)], fill=(80, 140, 70))
    d.polygon([(0, 560), (300, 500), (SIDE, 580), (SIDE, SIDE), (0, SIDE)], fill=(100, 165, 80))
    d.rectangle((250, 420, 470, 580), fill=(235, 225, 200), outline=(90, 70, 60), width=4)
    d.polygon([(230, 425), (360, 320), (490, 425)], fill=(170, 50, 40), outline=(90, 40, 30))
    d.rectangle((335, 500, 385, 580), fill=(110, 70, 40))
    for x in (275, 410):
        d.rectangle((x, 455, x + 40, 495), fill=(250, 220, 120), outline=(90, 70, 60), width=3)
    d.rectangle((590, 440, 610, 560), fill=(100, 70, 40))
    d.ellipse((530, 330, 670, 470), fill=(50, 110, 50))
    d.line([(360, 580), (330, SIDE)], fill=(200, 180, 140), width=30)
    return img.filter(ImageFilter.SMOOTH_MORE)


def still_life() -> Image.Image:
    """A mug and an apple on a wooden table: for Redux, Fill and VQA."""
    img = Image.new("RGB", (SIDE, SIDE))
    d = ImageDraw.Draw(img)
    sky(d, (225, 220, 210), (200, 190, 175), 440)
    for y in range(440, SIDE, 6):
        shade = 140 + round(20 * math.sin(y / 17))
        d.line([(0, y), (SIDE, y)], fill=(shade, shade * 2 // 3, shade // 3), width=6)
    d.ellipse((170, 560, 420, 610), fill=(60, 45, 30))  # shadow
    d.rectangle((190, 330, 400, 580), fill=(40, 90, 160))
    d.ellipse((190, 300, 400, 360), fill=(25, 60, 120))
    d.ellipse((190, 550, 400, 610), fill=(40, 90, 160))
    d.arc((370, 380, 470, 500), -90, 90, fill=(40, 90, 160), width=22)
    d.ellipse((470, 470, 600, 600), fill=(200, 30, 35))
    d.line([(535, 470), (545, 440)], fill=(80, 50, 20), width=6)
    d.ellipse((545, 430, 590, 455), fill=(60, 140, 50))
    return img.filter(ImageFilter.SMOOTH_MORE)


def shapes() -> Image.Image:
    """Bold outlines on white, a clean source for a Canny control map."""
    img = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((90, 380, 300, 700), outline=(0, 0, 0), width=8)
    d.rectangle((330, 250, 500, 700), outline=(0, 0, 0), width=8)
    d.polygon([(540, 700), (540, 330), (620, 180), (700, 330), (700, 700)], outline=(0, 0, 0), width=8)
    d.ellipse((110, 90, 260, 240), outline=(0, 0, 0), width=8)
    for y in range(420, 680, 60):
        for x in (120, 200):
            d.rectangle((x, y, x + 50, y + 30), outline=(0, 0, 0), width=5)
    d.line([(0, 710), (SIDE, 710)], fill=(0, 0, 0), width=8)
    return img


def main() -> None:
    for name, draw in (("cottage", cottage), ("still_life", still_life), ("shapes", shapes)):
        draw().save(HERE / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main()
