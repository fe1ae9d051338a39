"""Training presets by GPU memory: what a LoRA run on a card of that size trains with, as data.

A preset fixes what decides memory (the precision of the frozen transformer, the rank, the resolution,
the batch, gradient checkpointing, the optimizer); steps, learning rate, rank and resolution stay editable
in the Train tab. The figures each one was sized by are in docs/PERFORMANCE.md ("LoRA training").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

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
    base: str  # precision of the frozen transformer: "bf16", "float8" (row-wise scaled) or "nf4" (bitsandbytes)
    rank: int  # LoRA rank (alpha = rank, so the LoRA's scale is 1)
    resolution: int  # pixels: buckets hold about resolution² pixels, sides multiples of 16
    batch: int  # images per step
    checkpointing: bool  # recompute each block's activations in the backward pass instead of keeping them
    optimizer: str  # "adamw8bit" (bitsandbytes, CUDA only) or "adamw"
    compile: bool = False  # regional torch.compile of the step's transformer blocks, on CUDA (see model.compile_blocks)
    steps: int = 1000  # the default; ~20 passes over 50 images
    learning_rate: float = 1e-4  # AdamW's; the diffusers FLUX LoRA script and ai-toolkit use 1e-4

    @property
    def summary(self) -> str:
        base = {"bf16": "bf16 base", "float8": "float8 base (bf16 backward)", "nf4": "4-bit NF4 base"}[self.base]
        ckpt = ", gradient checkpointing" if self.checkpointing else ""
        opt = {"adamw8bit": "8-bit AdamW", "adamw": "AdamW"}[self.optimizer]
        compiled = ", compiled on CUDA" if self.compile else ""
        return f"{base}, rank {self.rank}, {self.resolution} px, batch {self.batch}{ckpt}, {opt}{compiled}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # A 4-bit base (6.7 GB for the 12-billion-parameter transformer) is what fits beside activations here.
        Preset("12 GB", 12, base="nf4", rank=16, resolution=512, batch=1, checkpointing=True, optimizer="adamw8bit"),
        Preset("16 GB", 16, base="nf4", rank=16, resolution=768, batch=1, checkpointing=True, optimizer="adamw8bit"),
        # The bf16 base alone is 22.2 GiB: with activations it measured 23.9 GiB at 512 px on the H200, too
        # close to a 24 GiB card's limit to trust, so 24 GB cards train on a 4-bit or float8 base.
        Preset("24 GB", 24, base="nf4", rank=32, resolution=1024, batch=1, checkpointing=True, optimizer="adamw8bit"),
        # The blocks' weights in float8 (the transformer: 11.1 GiB), multiplied on float8 tensor cores (CUDA
        # capability 8.9: Ada, Hopper), the gradient through them in bf16: twice the 4-bit base's bytes, no
        # 4-bit rounding of the weights. Compiled, it trains twice as fast as the NF4 preset in the same cap
        # (H200 under a 24 GiB cap: 0.61 s/step at 512 px, 0.69 at 1024, peak 14.3 GiB; NF4 eager 1.31 and
        # 1.35 s; float8 eager 1.39 s): listed after it, so it is where a 24 GB card with float8 starts.
        Preset(
            "24 GB float8",
            24,
            base="float8",
            rank=32,
            resolution=1024,
            batch=1,
            checkpointing=True,
            optimizer="adamw8bit",
            compile=True,
        ),
        # Full precision base, no recomputation: 0.57 s/step at 34 GiB (512 px), 56.5 GiB at 1024 px; compiled,
        # 0.31 s/step against 0.44 eager at 512 px (H200, same run).
        Preset(
            "80+ GB",
            80,
            base="bf16",
            rank=32,
            resolution=1024,
            batch=1,
            checkpointing=False,
            optimizer="adamw",
            compile=True,
        ),
    )
}
DEFAULT_PRESET = "24 GB"
FLOAT8_CAPABILITY = (8, 9)  # CUDA compute capability of float8 tensor cores (Ada, Hopper and newer)


def device_memory_gib(device: str) -> float | None:
    """GPU memory this process may use, in GiB (the card's, or its share under a per-process cap); None
    off CUDA, where training runs in RAM."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if dev.index is None else dev.index
    total = torch.cuda.get_device_properties(index).total_memory
    return total * torch.cuda.get_per_process_memory_fraction(index) / GIB


@cache
def _cpu_float8() -> str | None:
    """Why float8 matmuls do not run on this CPU build of PyTorch, or None if they do (tried once)."""
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        one = torch.ones(1, 1)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as err:
        return f"this PyTorch has no float8 matmul on the CPU ({str(err).splitlines()[0][:120]})"
    return None


def float8_problem(device: str, capability: tuple[int, int] | None = None) -> str | None:
    """Why a float8 base cannot train on `device`, or None if it can: float8 matmuls need CUDA compute
    capability 8.9 (Ada, Hopper) or newer, or a PyTorch with them on the CPU. `capability` overrides the
    measured one."""
    kind = torch.device(device).type
    if kind == "cpu":
        return _cpu_float8()
    if kind != "cuda":
        return f"float8 matmuls run on CUDA GPUs and the CPU, not on {kind}"
    if capability is None and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(torch.device(device))
    if capability is not None and tuple(capability) < FLOAT8_CAPABILITY:
        major, minor = capability
        return f"this GPU is compute capability {major}.{minor}; float8 matmuls need 8.9 (Ada, Hopper) or newer"
    return None


def fitting(gib: float | None, float8: bool = True) -> list[str]:
    """Names of the presets a card of `gib` GiB can run, smallest first (all of them where unknown);
    without `float8`, none with a float8 base."""
    return [
        n
        for n, p in PRESETS.items()
        if (gib is None or gib >= p.memory_gib * FIT_SHARE) and (float8 or p.base != "float8")
    ]


def default_preset(device: str) -> str:
    """The largest preset that fits this device (the 24 GB one off CUDA)."""
    if (gib := device_memory_gib(device)) is None:
        return DEFAULT_PRESET
    fits = fitting(gib, float8_problem(device) is None)
    return fits[-1] if fits else next(iter(PRESETS))


def compiles(device: str) -> bool:
    """Whether the training step may be compiled on `device`: CUDA only (on the CPU, inductor needs a C++
    toolchain and its compile takes longer than the short runs there save)."""
    return torch.device(device).type == "cuda"


def check_preset(
    name: object, device: str, gib: float | None = None, capability: tuple[int, int] | None = None
) -> Preset:
    """The preset called `name`, if this device has the memory it needs and, for a float8 base, float8
    matmuls; `gib` and `capability` override the measured memory and CUDA compute capability."""
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidInput("preset", f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    gib = device_memory_gib(device) if gib is None else gib
    if preset.base == "float8" and (why := float8_problem(device, capability)) is not None:
        fits = fitting(gib, float8=False)
        fix = f"choose {fits[-1]!r}" if fits else "this GPU is too small for any preset"
        raise InvalidInput("preset", f"{name!r} trains on a float8 base: {why}; {fix}")
    if gib is not None and gib < preset.memory_gib * FIT_SHARE:
        fits = fitting(gib)
        fix = f"choose {fits[-1]!r}" if fits else "this GPU is too small for any preset"
        raise InvalidInput(
            "preset", f"{name!r} needs a GPU with {preset.memory_gib:g} GB; this one has {gib:.1f} GiB; {fix}"
        )
    return preset
