"""Placement: how a freshly loaded model is laid out in memory under the memory policy (float8 while
loading, diffusers' group offloading), and whether the registry may move it."""

from __future__ import annotations

import logging

import torch

from flux_ui.core.policies import LARGE_MODELS, MemoryPolicy
from flux_ui.models import speed

log = logging.getLogger(__name__)


def prepare(policy: MemoryPolicy, role: str, module: torch.nn.Module, device: str) -> None:
    """Lay out a freshly loaded model (still in RAM) as `policy` says; `role` is "transformer",
    "text_encoder_2" or another shared part's name (those are left alone).

    fp8: each large linear layer goes to `device` and is quantised there, then the rest follows, so the GPU
    never holds more than the float8 model plus one bf16 layer. Quantising on the CPU instead would avoid
    even that, but is slow: 7.4 ns per weight measured on 2 cores (one 3072x12288 layer, 0.28 s), so about
    90 s for the transformer's 12 billion weights and 35 s for T5; on the GPU it is a copy and a few
    elementwise kernels per layer.
    group offload: the module stays in RAM and diffusers' hooks copy each group of blocks to the device
    just before it runs (on a side stream, overlapping the previous group's compute).
    """
    if role not in LARGE_MODELS:
        return
    if policy.fp8_at_load:
        n = speed.quantize_fp8(module, device=device)
        module.to(device)
        log.info("%s: %d linear layers quantised to float8 while loading", role, n)
    elif policy.group_offload:
        apply_group_offload(module, device, policy.blocks_per_group)


def apply_group_offload(module: torch.nn.Module, device: str, blocks_per_group: int = 1) -> None:
    """diffusers group offloading: the model's weights stay in (pinned) RAM, each group of blocks is
    copied to `device` just before it runs. A CUDA stream prefetches the next group while one runs; on
    other devices the copies are synchronous (and on the CPU they are no-ops, which the tests rely on)."""
    from diffusers.hooks import apply_group_offloading

    cuda = torch.device(device).type == "cuda"
    if hasattr(module, "enable_group_offload"):  # diffusers models: the same function, as a method
        module.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="block_level",
            num_blocks_per_group=blocks_per_group,
            use_stream=cuda,
        )
    else:
        # transformers' T5 encoder: its blocks sit one level down (encoder.block), and its token embedding is
        # tied to the encoder's; leaf-level groups see each module once. T5 runs once per prompt, so the
        # finer copies cost little.
        apply_group_offloading(module, onload_device=torch.device(device), offload_type="leaf_level", use_stream=cuda)
    module._flux_ui_group_offloaded = True
    log.info("%s group-offloaded to %s, %d block(s) per group", type(module).__name__, device, blocks_per_group)


def is_group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group-offloading hooks place this module (the registry must not move it)."""
    return getattr(module, "_flux_ui_group_offloaded", False)
