"""What the tiny models of both families share: the word list their tokenizers know and the byte-level BPE
alphabet, and FLUX.1 [dev]'s published scheduler configuration."""

from __future__ import annotations

# The scheduler config of FLUX.1 [dev] as published: the schedule shifts with the image's resolution.
SCHEDULER_DEV = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# Tokens the tiny tokenizers know as whole words; anything else falls back to characters.
_WORD_TEXT = "a an the of on in with and at to photo portrait painting cat dog fox bird red blue green chair table tree"
WORDS = [*_WORD_TEXT.split(), "city", "night", "sky", "sitting", "standing", "cinematic", "light", "style"]


def bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (CLIP's included) use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]
