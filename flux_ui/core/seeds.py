"""Seeds: 32-bit, as in other SD UIs, so they can be typed and shared; random ones; those of a batch."""

from __future__ import annotations

import random

SEED_MAX = 2**32 - 1  # seeds are 32-bit, as in other SD UIs, so they can be typed and shared


def batch_seed(first: int, index: int) -> int:
    """The seed of image `index` of a batch that starts at `first`: `first + index`, wrapping past SEED_MAX
    to 0, so every seed a batch reports can be typed back in."""
    return (first + index) % (SEED_MAX + 1)


def resolve_seed(seed: int) -> int:
    return random.randint(0, SEED_MAX - 16) if seed == -1 else seed
