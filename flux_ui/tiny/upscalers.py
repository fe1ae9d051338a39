"""A tiny random-weight ESRGAN upscaler, written as the files ComfyUI and Forge users keep.

`write_tiny_upscaler(folder)` builds spandrel's own RRDBNet (the ESRGAN architecture of 4x-UltraSharp and
its kin) with 8 filters and one RRDB block instead of 64 and 23, and saves its state dict with
`torch.save` under the "old-arch" key names (`model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight`...),
exactly the layout of a community `4x-*.pth` file, into `<folder>/upscale_models/`, the ComfyUI
sub-folder the app searches. It is then read by spandrel's ModelLoader like a real one. Its output is
noise at 4x the size.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_UPSCALER = "4x-tiny-ESRGAN"  # its name in the app: the file's stem
SUBFOLDER = "upscale_models"  # as in ComfyUI's models folder


def tiny_esrgan(seed: int = 5000, scale: int = 4) -> torch.nn.Module:
    """spandrel's RRDBNet at a tiny size, with random weights from `seed`."""
    from flux_ui.models.upscalers import spandrel

    spandrel()  # spandrel's architectures import only through the package (see upscalers.spandrel)
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)


def write_tiny_upscaler(folder: Path, seed: int = 5000) -> Path:
    """Write `<folder>/upscale_models/4x-tiny-ESRGAN.pth` unless it is there; return its path."""
    path = folder / SUBFOLDER / f"{TINY_UPSCALER}.pth"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in tiny_esrgan(seed).state_dict().items()}
    partial = path.with_suffix(".pth.partial")
    torch.save(state, partial)
    partial.replace(path)  # whole or not at all: a second process never reads half a file
    return path
