"""Overlapping tiles over a large image, and their results blended back with feathered weights.

A model that works on tiles (an upscaler on a big input, the hires pass beyond FLUX's comfortable size)
sees each tile alone, so neighbouring tiles disagree a little where they meet. Tiles therefore overlap,
and in each overlap the two results are mixed with weights that ramp linearly from one tile to the
other: the seam becomes a gradual cross-fade `overlap` pixels wide instead of a step. Image borders get
no ramp (no neighbour to fade into).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """One tile: its left/top corner and size in pixels, within an image."""

    x: int
    y: int
    width: int
    height: int

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as PIL's `Image.crop` takes it."""
        return self.x, self.y, self.x + self.width, self.y + self.height


def starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours overlapping by at least
    `overlap`, spread evenly and rounded down to `multiple`. One tile (at 0) when `length` <= `tile`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    out = [round(i * last / (count - 1)) // multiple * multiple for i in range(count)]
    out[-1] = last  # the last tile ends at the border (`length` and `tile` are multiples of `multiple`)
    return out


def layout(size: tuple[int, int], tile: int, overlap: int, multiple: int = 1) -> list[Box]:
    """Tiles over an image of `size` (width, height), row by row; each at most `tile` x `tile` pixels, all
    of one size, overlapping by at least `overlap`, with corners on multiples of `multiple`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got {overlap} for tile {tile}")
    width, height = size
    tw, th = min(tile, width), min(tile, height)
    return [
        Box(x, y, tw, th) for y in starts(height, th, overlap, multiple) for x in starts(width, tw, overlap, multiple)
    ]


def _ramp(length: int, start_fade: int, end_fade: int) -> np.ndarray:
    """Weights along one side of a tile: rising over `start_fade` pixels, falling over `end_fade`, 1 between.
    Never 0, so every pixel a tile covers has some weight."""
    w = np.ones(length, dtype=np.float32)
    if start_fade:
        w[:start_fade] = (np.arange(start_fade, dtype=np.float32) + 0.5) / start_fade
    if end_fade:
        w[length - end_fade :] = np.minimum(
            w[length - end_fade :], ((np.arange(end_fade, dtype=np.float32) + 0.5) / end_fade)[::-1]
        )
    return w


def feather(box: Box, boxes: list[Box]) -> np.ndarray:
    """The (height, width) weight mask of `box` among `boxes`: a ramp over the part of each side that
    another tile overlaps, 1 elsewhere."""
    left = max((b.x + b.width - box.x for b in boxes if b.x < box.x and _rows_meet(b, box)), default=0)
    right = max((box.x + box.width - b.x for b in boxes if b.x > box.x and _rows_meet(b, box)), default=0)
    top = max((b.y + b.height - box.y for b in boxes if b.y < box.y and _cols_meet(b, box)), default=0)
    bottom = max((box.y + box.height - b.y for b in boxes if b.y > box.y and _cols_meet(b, box)), default=0)
    fade = [
        max(0, min(v, n)) for v, n in ((left, box.width), (right, box.width), (top, box.height), (bottom, box.height))
    ]
    return np.outer(_ramp(box.height, fade[2], fade[3]), _ramp(box.width, fade[0], fade[1]))


def _rows_meet(a: Box, b: Box) -> bool:
    return a.y < b.y + b.height and b.y < a.y + a.height


def _cols_meet(a: Box, b: Box) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width


class Blender:
    """Accumulates tile results (H, W, C float arrays) with their feathered weights; `result()` is the
    weighted mean, the blended image."""

    def __init__(self, size: tuple[int, int], boxes: list[Box], channels: int = 3):
        self.boxes = boxes
        self.sum = np.zeros((size[1], size[0], channels), dtype=np.float32)
        self.weight = np.zeros((size[1], size[0], 1), dtype=np.float32)

    def add(self, box: Box, pixels: np.ndarray) -> None:
        if pixels.shape[:2] != (box.height, box.width):
            raise ValueError(
                f"a tile result of {pixels.shape[1]}x{pixels.shape[0]} for a {box.width}x{box.height} tile"
            )
        w = feather(box, self.boxes)[..., None]
        self.sum[box.y : box.y + box.height, box.x : box.x + box.width] += pixels * w
        self.weight[box.y : box.y + box.height, box.x : box.x + box.width] += w

    def result(self) -> np.ndarray:
        if not np.all(self.weight > 0):
            raise ValueError("the tiles do not cover the image")
        return self.sum / self.weight
