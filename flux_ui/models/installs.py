"""ComfyUI and Forge installs found on disk, for what single model files lack: FLUX.1's tokenizers.

Text encoder files (`clip_l.safetensors`, `t5xxl_*.safetensors`) carry no tokenizer, but the tools that read
them ship one in their install, at fixed places (checked against the tools' repositories):

- ComfyUI: CLIP's in `comfy/sd1_tokenizer/` (openai/clip-vit-large-patch14's, read by `comfy/sd1_clip.py`),
  T5's in `comfy/text_encoders/t5_tokenizer/` (`comfy/t5_tokenizer/` before the text encoders moved to their
  own package in 2024).
- Forge: the hub repos' own tokenizer folders, in `backend/huggingface/black-forest-labs/FLUX.1-dev/`
  (and `FLUX.1-schnell/`), `tokenizer/` and `tokenizer_2/`.

An install is recognised where --models-dir points at it, or at a folder up to `MAX_LEVELS_UP` below it
(`~/ComfyUI/models`, `~/ComfyUI/models/unet`). These are read only when a tokenizer is neither in the
shared repo's folder nor in the hub cache (see `loading`), and never downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LEVELS_UP = 3  # how far above a --models-dir folder an install's root is looked for
CLIP_MAX_LENGTH = 77  # CLIP-L's positions; ComfyUI's tokenizer config says 8192 (ComfyUI splits prompts itself)
FORGE_FLUX = "backend/huggingface/black-forest-labs"
# Tokenizer subfolder (hub layout) -> where installs keep it, relative to their root, in search order.
TOKENIZER_PLACES = {
    "tokenizer": (
        "comfy/sd1_tokenizer",
        f"{FORGE_FLUX}/FLUX.1-dev/tokenizer",
        f"{FORGE_FLUX}/FLUX.1-schnell/tokenizer",
    ),
    "tokenizer_2": (
        "comfy/text_encoders/t5_tokenizer",
        "comfy/t5_tokenizer",
        f"{FORGE_FLUX}/FLUX.1-dev/tokenizer_2",
        f"{FORGE_FLUX}/FLUX.1-schnell/tokenizer_2",
    ),
}
MARKERS = ("comfy", "backend/huggingface")  # folders that make a folder a ComfyUI or Forge root


def roots(folders: Iterable[Path]) -> list[Path]:
    """The ComfyUI and Forge roots at or above `folders` (up to MAX_LEVELS_UP), each once, in order."""
    out: list[Path] = []
    for folder in folders:
        # Not resolved: a models folder is often a link to a larger disk, and the install is above the link.
        start = Path(folder).expanduser().absolute()
        for candidate in [start, *start.parents][: MAX_LEVELS_UP + 1]:
            if any((candidate / m).is_dir() for m in MARKERS) and candidate not in out:
                out.append(candidate)
    return out


def tokenizer_folder(folders: Iterable[Path], subfolder: str) -> Path | None:
    """The folder of an install's tokenizer for `subfolder` ("tokenizer": CLIP, "tokenizer_2": T5), or None."""
    for root in roots(folders):
        for place in TOKENIZER_PLACES[subfolder]:
            if (root / place / "tokenizer_config.json").is_file():
                return root / place
    return None


def load_tokenizer(cls: type, folder: Path, subfolder: str) -> object:
    """`cls` (CLIPTokenizer, T5TokenizerFast) from an install's folder; CLIP's length set to its 77 positions
    (ComfyUI's config says 8192, which diffusers would pad every prompt to)."""
    log.info("reading the %s from the install at %s", subfolder, folder)
    extra = {"model_max_length": CLIP_MAX_LENGTH} if subfolder == "tokenizer" else {}
    return cls.from_pretrained(folder, local_files_only=True, **extra)
