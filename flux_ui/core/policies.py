"""Memory policies: how the FLUX models are laid out on a GPU of a given size.

A policy is a named configuration of library features, chosen once at start-up from the GPU's total memory
(`select_policy`, a pure function) or named with `--memory-policy`, and applied by the registry to each
model as it is loaded (`prepare`):

- `resident` (40 GB and up): every model on the GPU in the compute dtype; the warm tier keeps recently
  used transformers in pinned RAM.
- `fp8-24gb` (24 GB class): the transformer's and T5-XXL's large linear layers in float8
  (`speed.quantize_fp8`), quantised layer by layer while moving to the GPU, so the bf16 weights are never
  all on the GPU at once; all resident. Measured on an H100 capped at 24 GiB: 3.18 s per [dev] image,
  peak 20.6 GiB. LoRAs are merged into the float8 weights per request (`lora_merge`). Needs compute
  capability 8.9 (Ada, Hopper).
- `offload-12gb` (12-16 GB class, and smaller GPUs at best effort): diffusers group offloading of the
  transformer and T5, one block per group, prefetched on a CUDA stream from pinned RAM; CLIP and the VAE
  stay resident. The registry never moves these modules: their hooks place them.
- `cpu`: no GPU; everything in RAM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

GIB = 2**30
# Thresholds in GiB of the GPU's total memory as the driver reports it: a "40 GB" A100 reports 39.4 GiB
# and a "24 GB" RTX 4090 23.6 GiB, so each class starts a little below its marketing size.
RESIDENT_MIN_GIB = 38.0
FP8_MIN_GIB = 22.0
# Models the policies change (the transformers, T5-XXL, FLUX.2's text encoders); the others (CLIP-L, the
# VAEs, auxiliary models) stay resident under all.
LARGE_MODELS = ("transformer", "text_encoder_2", "flux2_text_encoder")


@dataclass(frozen=True)
class MemoryPolicy:
    """One memory layout; see the module docstring."""

    name: str
    summary: str  # one line for the log and the Models tab
    fp8_at_load: bool = False  # quantise the transformer and T5 to float8 while moving them to the GPU
    group_offload: bool = False  # diffusers group offloading of the transformer and T5
    blocks_per_group: int = 1  # transformer blocks per offload group; diffusers allows only 1 with a stream
    # With --vae-tiling auto, images over this many megapixels are encoded and decoded by the VAE in
    # overlapping tiles (diffusers' tiling: 1024 px tiles, a quarter overlapping), which bounds the VAE's
    # memory by the tile rather than the image. Measured on an H200 (bf16 decode): 2048x2048 untiled 9.7 GiB
    # peak and 0.40 s, tiled 2.7 GiB and 0.73 s; 8.4 MP untiled 19.3 GiB, tiled 2.8 GiB and 1.5 s; tiles
    # differ from the untiled image by 1.5 of 255 on average. A 40 GB card holding the bf16 transformer and
    # T5 has no 10 GiB to spare, so every policy tiles above 2 MP, offloading above 1 MP.
    vae_tile_above_mp: float = 2.1


POLICIES: dict[str, MemoryPolicy] = {
    p.name: p
    for p in (
        MemoryPolicy("resident", "every model resident on the GPU"),
        MemoryPolicy("fp8-24gb", "float8 transformer and T5, all resident", fp8_at_load=True),
        MemoryPolicy(
            "offload-12gb",
            "transformer and T5 group-offloaded from pinned RAM, one block at a time; CLIP and VAE resident",
            group_offload=True,
            vae_tile_above_mp=1.1,
        ),
        MemoryPolicy("cpu", "no GPU: every model in RAM"),
    )
}


# float8 linears hold half the bf16 bytes; embeddings, norms and small layers stay bf16 (measured on FLUX.1
# [dev]'s transformer and T5: 0.52 of their bf16 size).
FP8_SHARE = 0.52


def gpu_need_gib(policy: MemoryPolicy, weights_gib: float) -> float | None:
    """GiB of GPU memory a model of `weights_gib` bf16 weights (transformer + text encoder) holds under
    `policy`; None where it streams from RAM block by block (offloading) or runs on the CPU."""
    if policy.group_offload or policy.name == "cpu":
        return None
    return weights_gib * (FP8_SHARE if policy.fp8_at_load else 1.0)


def misfit(policy: MemoryPolicy, label: str, weights_gib: float, total_gib: float) -> str | None:
    """Why `label` cannot run under `policy` on a GPU of `total_gib`, with the policy that would; None if it
    fits (with 3 GiB for a run's activations). FLUX.2 [dev] (105 GiB in bf16) is the case: resident only
    on a 141 GB card, float8 from the 80 GB class, offloaded below."""
    need = gpu_need_gib(policy, weights_gib)
    if need is None or need + 3.0 <= total_gib:
        return None
    fp8 = gpu_need_gib(POLICIES["fp8-24gb"], weights_gib)
    better = "fp8-24gb" if fp8 is not None and fp8 + 3.0 <= total_gib else "offload-12gb"
    return (
        f"{label} holds {need:.0f} GiB on the GPU under the memory policy {policy.name}, and this GPU has "
        f"{total_gib:.0f} GiB; start with --memory-policy {better}"
    )


def get_policy(name: str) -> MemoryPolicy:
    if name not in POLICIES:
        raise ValueError(f"--memory-policy: unknown policy {name!r}; choose one of: auto, {', '.join(POLICIES)}")
    return POLICIES[name]


def select_policy(device: str, total_bytes: int | None, fp8_capable: bool = True) -> tuple[MemoryPolicy, str]:
    """The policy for a device with `total_bytes` of memory, and why, as a phrase for the log.

    `fp8_capable`: the GPU has float8 tensor cores (compute capability 8.9+); a 24 GB card without them
    (an RTX 3090, say) gets the offloading policy instead.
    """
    if torch.device(device).type == "mps":  # unified memory: the models sit where they always do
        return POLICIES["resident"], "device mps (unified memory)"
    if torch.device(device).type != "cuda" or total_bytes is None:
        return POLICIES["cpu"], f"device {device}"
    gib = total_bytes / GIB
    if gib >= RESIDENT_MIN_GIB:
        return POLICIES["resident"], f"{gib:.1f} GiB GPU"
    if gib >= FP8_MIN_GIB and fp8_capable:
        return POLICIES["fp8-24gb"], f"{gib:.1f} GiB GPU"
    why = f"{gib:.1f} GiB GPU"
    if gib >= FP8_MIN_GIB:
        why += " without float8 support"
    elif gib < 11.0:
        why += ", below the 12 GB class: expect out-of-memory errors at large sizes"
    return POLICIES["offload-12gb"], why


def resolve_policy(name: str, device: str) -> tuple[MemoryPolicy, str]:
    """Turn `--memory-policy` ("auto" or a name) into a policy for `device`, probing the GPU once."""
    total, fp8 = None, True
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        fp8 = torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)
    if name == "auto":
        return select_policy(device, total, fp8)
    policy = get_policy(name)
    if (policy.fp8_at_load or policy.group_offload) and torch.device(device).type != "cuda":
        raise ValueError(f"--memory-policy: {name!r} needs a CUDA GPU; use 'cpu' (or auto) on {device}")
    return policy, "--memory-policy"


PROFILES = ("off", "compile", "fp8")


def resolve_profile(name: str, device: str) -> str:
    """Turn "auto" into the fastest profile the device supports; check explicit names."""
    if name == "auto":
        if not device.startswith("cuda") or not torch.cuda.is_available():
            return "off"
        return "fp8" if torch.cuda.get_device_capability() >= (8, 9) else "compile"
    if name not in PROFILES:
        raise ValueError(f"speed: unknown profile {name!r}; choose one of: auto, {', '.join(PROFILES)}")
    if name != "off" and not device.startswith("cuda"):
        raise ValueError(f"speed: profile {name!r} needs a CUDA GPU; use 'off' on {device}")
    return name


def tile_vae(setting: str, policy: MemoryPolicy, size: tuple[int, int]) -> bool:
    """Whether the VAE works in tiles for an image of `size` (width, height): --vae-tiling on/off, or with
    auto, above the policy's `vae_tile_above_mp`."""
    if setting in ("on", "off"):
        return setting == "on"
    return size[0] * size[1] > policy.vae_tile_above_mp * 1_000_000
