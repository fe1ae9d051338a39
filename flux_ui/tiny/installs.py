"""Fake ComfyUI and Forge installs holding the tiny tokenizers where those tools ship theirs (see
`flux_ui.models.installs`), for the tests of tokenizers found beside a models folder."""

from __future__ import annotations

import json
from pathlib import Path

from flux_ui.models.installs import FORGE_FLUX

SHARED = "black-forest-labs/FLUX.1-schnell"  # the tiny repo whose tokenizers are copied

PLACES = {  # tool -> (CLIP's folder, T5's folder) below its root
    "comfyui": ("comfy/sd1_tokenizer", "comfy/text_encoders/t5_tokenizer"),
    "comfyui-2024": ("comfy/sd1_tokenizer", "comfy/t5_tokenizer"),
    "forge": (f"{FORGE_FLUX}/FLUX.1-dev/tokenizer", f"{FORGE_FLUX}/FLUX.1-dev/tokenizer_2"),
}


def write_install_tokenizers(root: Path, tiny_dir: Path, tool: str) -> Path:
    """The tiny CLIP and T5 tokenizers in `tool`'s places below `root`; ComfyUI's CLIP config says a
    length of 8192, as ComfyUI's own does."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_dir, t5_dir = (root / p for p in PLACES[tool])
    CLIPTokenizer.from_pretrained(tiny_dir / SHARED, subfolder="tokenizer").save_pretrained(clip_dir)
    T5TokenizerFast.from_pretrained(tiny_dir / SHARED, subfolder="tokenizer_2").save_pretrained(t5_dir)
    if tool.startswith("comfyui"):
        config = clip_dir / "tokenizer_config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 8192}))
    return root
