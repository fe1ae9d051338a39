"""Speed profiles: which diffusers / torch / torchao features make the FLUX transformer and VAE fast.

A profile is a named configuration, chosen once at start-up from the device and applied by the registry
to every model it loads:

- `off`: plain eager diffusers (the CPU default; also for debugging).
- `compile`: fused QKV projections, the cuDNN attention backend, a channels-last VAE, and regional
  `torch.compile` of the repeated transformer blocks (one compile per block type, so the first image
  costs seconds to tens of seconds instead of minutes, and the inductor cache makes restarts cheap).
- `fp8`: `compile` plus torchao float8 row-wise dynamic quantisation of the transformer's linear layers
  (weights and activations in float8 on the tensor cores). Needs compute capability 8.9+ (Ada, Hopper).

Every piece is a library feature; this module only decides which ones and in what order (quantise
before compiling, so the compiled graph sees the float8 layers).
"""

from __future__ import annotations

import importlib.util
import logging
import time

import torch

log = logging.getLogger(__name__)

PROFILES = ("off", "compile", "fp8")
# Linear layers smaller than this (in either dimension) stay in bf16: float8 scaling costs more than it
# saves on them, and the time/guidance embedders are among them.
FP8_MIN_FEATURES = 1024


def resolve_profile(name: str, device: str) -> str:
    """Turn "auto" into the fastest profile the device supports; check explicit names."""
    if name == "auto":
        if not device.startswith("cuda") or not torch.cuda.is_available():
            return "off"
        fp8_ok = torch.cuda.get_device_capability() >= (8, 9) and importlib.util.find_spec("torchao") is not None
        return "fp8" if fp8_ok else "compile"
    if name not in PROFILES:
        raise ValueError(f"speed: unknown profile {name!r}; choose one of: auto, {', '.join(PROFILES)}")
    if name != "off" and not device.startswith("cuda"):
        raise ValueError(f"speed: profile {name!r} needs a CUDA GPU; use 'off' on {device}")
    if name == "fp8" and importlib.util.find_spec("torchao") is None:
        raise ValueError("speed: profile 'fp8' needs torchao; pip install torchao, or use 'compile'")
    return name


def _fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        and module.in_features >= FP8_MIN_FEATURES
        and module.out_features >= FP8_MIN_FEATURES
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """Float8 weights and dynamically scaled float8 activations, one scale per row (torchao)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_fp8_filter)


def optimize_transformer(transformer: torch.nn.Module, profile: str) -> torch.nn.Module:
    """Apply `profile` to a FluxTransformer2DModel already on its GPU; returns it (changed in place)."""
    if profile == "off":
        return transformer
    start = time.perf_counter()
    transformer.fuse_qkv_projections()
    transformer.set_attention_backend("_native_cudnn")
    if profile == "fp8":
        quantize_fp8(transformer)
    # Regional compilation: each repeated block type is compiled once and reused by all its instances.
    transformer.compile_repeated_blocks(fullgraph=True)
    log.info(
        "speed profile %s applied to the transformer in %.1f s (compiles on first use)",
        profile,
        time.perf_counter() - start,
    )
    return transformer


def optimize_vae(vae: torch.nn.Module, profile: str) -> torch.nn.Module:
    """Channels-last memory format and fused attention projections for the VAE (its convolutions dominate)."""
    if profile == "off":
        return vae
    vae.fuse_qkv_projections()
    vae.to(memory_format=torch.channels_last)
    return vae
