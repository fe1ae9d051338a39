"""Training presets by GPU memory: what a LoRA run on a card of that size trains with, as data.

A preset fixes what decides memory (the precision of the frozen transformer, the rank, the resolution,
the batch, gradient checkpointing, the optimizer); steps, learning rate, rank and resolution stay editable
in the Train tab. The figures each one was sized by are in docs/PERFORMANCE.md ("LoRA training").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.core.memory import GIB

# A card sold as "24 GB" reports 23.6 to 24 GiB and an "80 GB" one 79.2 to 80: a preset is refused only
# when the card is smaller than this share of its figure.
FIT_SHARE = 0.95


@dataclass(frozen=True)
class Preset:
    """How one training run uses the GPU."""

    name: str  # what the Train tab and the run's JSON call it
    memory_gib: float  # GPU memory it is made for; a smaller card is refused before any work
    base: str  # precision of the frozen transformer: "bf16", or "nf4" (bitsandbytes 4-bit, QLoRA-style)
    rank: int  # LoRA rank (alpha = rank, so the LoRA's scale is 1)
    resolution: int  # pixels: buckets hold about resolution² pixels, sides multiples of 16
    batch: int  # images per step
    checkpointing: bool  # recompute each block's activations in the backward pass instead of keeping them
    optimizer: str  # "adamw8bit" (bitsandbytes, CUDA only) or "adamw"
    steps: int = 1000  # the default; ~20 passes over 50 images
    learning_rate: float = 1e-4  # AdamW's; the diffusers FLUX LoRA script and ai-toolkit use 1e-4

    @property
    def summary(self) -> str:
        base = {"bf16": "bf16 base", "nf4": "4-bit NF4 base"}[self.base]
        ckpt = ", gradient checkpointing" if self.checkpointing else ""
        opt = {"adamw8bit": "8-bit AdamW", "adamw": "AdamW"}[self.optimizer]
        return f"{base}, rank {self.rank}, {self.resolution} px, batch {self.batch}{ckpt}, {opt}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # A 4-bit base (6.7 GB for the 12-billion-parameter transformer) is what fits beside activations here.
        Preset("12 GB", 12, base="nf4", rank=16, resolution=512, batch=1, checkpointing=True, optimizer="adamw8bit"),
        Preset("16 GB", 16, base="nf4", rank=16, resolution=768, batch=1, checkpointing=True, optimizer="adamw8bit"),
        # The bf16 base alone is 22.2 GiB: with activations it measured 23.9 GiB at 512 px on the H200, too
        # close to a 24 GiB card's limit to trust, so 24 GB cards train on the 4-bit base as well.
        Preset("24 GB", 24, base="nf4", rank=32, resolution=1024, batch=1, checkpointing=True, optimizer="adamw8bit"),
        # Full precision base, no recomputation: 0.57 s/step at 34 GiB (512 px), 56.5 GiB at 1024 px.
        Preset("80+ GB", 80, base="bf16", rank=32, resolution=1024, batch=1, checkpointing=False, optimizer="adamw"),
    )
}
DEFAULT_PRESET = "24 GB"


def device_memory_gib(device: str) -> float | None:
    """GPU memory this process may use, in GiB (the card's, or its share under a per-process cap); None
    off CUDA, where training runs in RAM."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if dev.index is None else dev.index
    total = torch.cuda.get_device_properties(index).total_memory
    return total * torch.cuda.get_per_process_memory_fraction(index) / GIB


def fitting(gib: float | None) -> list[str]:
    """Names of the presets a card of `gib` GiB can run, smallest first (all of them where unknown)."""
    return [n for n, p in PRESETS.items() if gib is None or gib >= p.memory_gib * FIT_SHARE]


def default_preset(device: str) -> str:
    """The largest preset that fits this device (the 24 GB one off CUDA)."""
    if (gib := device_memory_gib(device)) is None:
        return DEFAULT_PRESET
    fits = fitting(gib)
    return fits[-1] if fits else next(iter(PRESETS))


def check_preset(name: object, device: str, gib: float | None = None) -> Preset:
    """The preset called `name`, if this device has the memory it needs; `gib` overrides the measured size."""
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidInput("preset", f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    gib = device_memory_gib(device) if gib is None else gib
    if gib is not None and gib < preset.memory_gib * FIT_SHARE:
        fits = fitting(gib)
        fix = f"choose {fits[-1]!r}" if fits else "this GPU is too small for any preset"
        raise InvalidInput(
            "preset", f"{name!r} needs a GPU with {preset.memory_gib:g} GB; this one has {gib:.1f} GiB; {fix}"
        )
    return preset
