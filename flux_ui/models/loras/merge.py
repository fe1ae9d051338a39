"""LoRAs merged into the transformer's weights, for compiled and float8 transformers.

PEFT adds a LoRA as extra layers beside each linear layer. Under torch.compile every change of that
structure or of the active set changes the traced code: a recompile per LoRA combination, and past
dynamo's recompile limit the blocks silently run eager. PEFT cannot wrap the float8 layers of the `fp8`
speed profile and the `fp8-24gb` memory policy at all. So for those transformers a request's LoRAs are
merged into the weights instead, in place: W += sum of weight * scale * B @ A. Shapes, dtypes and tensor
identities stay as they were, so the compiled blocks run on with no recompile; the changed layers' values
are copied aside first and copied back when the request ends, so the base model returns bit for bit.

A float8 layer is dequantised, changed, and requantised on the same per-row grid (a row gets a new
scale only if the LoRA pushes it past the float8 range). The base weights already sit on that grid,
where rounding to nearest would drop every change smaller than half a grid step (most of a LoRA's: e4m3
keeps 3 mantissa bits): those weights are rounded stochastically, up or down in proportion to the
distance, which keeps the changes on average (as ComfyUI does for float8 checkpoints); the others are
rounded to nearest, which is half as noisy. The random bits are seeded from the request's LoRAs and
weights, so the same LoRAs give the same image for the same seed. A weak LoRA (changes of a tenth of a
step) still comes out noisy: see docs/PERFORMANCE.md.

The scale of each layer (alpha / rank, per-layer rank and alpha patterns) is computed by the same diffusers
and PEFT code that sizes PEFT's own LoRA layers, from the same converted state dict.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import torch

from flux_ui.core import memory
from flux_ui.models.speed import FP8_MAX, Float8RowwiseLinear

log = logging.getLogger(__name__)

PREFIX = "transformer."
# Originals of the changed layers stay on the GPU when this much would still be free afterwards; else RAM.
DEVICE_SAVE_MARGIN_BYTES = 2 * 2**30
_FP32_DROPPED_BITS = 20  # float32 has 23 mantissa bits, float8 e4m3 keeps 3
FP8_TOP_STEP = 32.0  # float8 e4m3's step between its largest values (416, 448)


@dataclass(frozen=True)
class Delta:
    """One LoRA's low-rank change of one linear layer: weight += scale * up @ down."""

    down: torch.Tensor  # (rank, in_features), lora_A
    up: torch.Tensor  # (out_features, rank), lora_B
    scale: float  # lora_alpha / rank (or / sqrt(rank) for rsLoRA)


@dataclass
class Merged:
    """What a merge changed: the original tensors of each changed layer, to copy back."""

    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> attribute -> original


class MergeError(ValueError):
    """A LoRA that cannot be merged into this transformer; the message says why."""


def needs_merge(transformer: torch.nn.Module) -> bool:
    """True when LoRAs must be merged into `transformer`: it has float8 layers, or compiled blocks."""
    return any(
        isinstance(m, Float8RowwiseLinear) or getattr(m, "_compiled_call_impl", None) is not None
        for m in transformer.modules()
    )


def parse(state_dict: dict, network_alphas: dict | None, metadata: dict | None) -> dict[str, Delta]:
    """The transformer part of a LoRA in diffusers' layout (as `lora_state_dict` returns it, keys under
    "transformer.") as one Delta per layer; {} if it has none. Raises MergeError for DoRA and LoRA biases."""
    # Private diffusers helper, pinned with diffusers: it is what `load_lora_adapter` builds PEFT's
    # LoraConfig with, so ranks and alphas are read exactly as for PEFT's layers.
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    state = {k.removeprefix(PREFIX): v for k, v in state_dict.items() if k.startswith(PREFIX)}
    if not state:
        return {}
    if "lora_A" not in next(iter(state)):
        state = convert_unet_state_dict_to_peft(state)
    if metadata is not None:
        metadata = {k.removeprefix(PREFIX): v for k, v in metadata.items() if k.startswith(PREFIX)}
    if network_alphas:
        network_alphas = {k.removeprefix(PREFIX): v for k, v in network_alphas.items() if k.startswith(PREFIX)}
    rank = {f"^{k}": v.shape[1] for k, v in state.items() if "lora_B" in k and v.ndim > 1}
    config = _create_lora_config(state, network_alphas, metadata, rank, model_state_dict=None)
    if config.use_dora:
        raise MergeError("it is a DoRA (magnitude vectors), which is not merged; use --speed off")
    if any(k.endswith("lora_B.bias") for k in state):
        raise MergeError("it carries LoRA biases, which are not merged; use --speed off")
    deltas = {}
    for key, down in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        up = state.get(f"{module}.lora_B.weight")
        if up is None or down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise MergeError(f"its layer {module} has no matching lora_A/lora_B pair")
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        deltas[module] = Delta(down, up, alpha / (math.sqrt(r) if config.use_rslora else r))
    return deltas


def pin(deltas: dict[str, Delta]) -> dict[str, Delta]:
    """The same factors in page-locked RAM when CUDA is available (asynchronous copies to the GPU)."""
    if not torch.cuda.is_available():
        return deltas
    return {name: Delta(d.down.pin_memory(), d.up.pin_memory(), d.scale) for name, d in deltas.items()}


def check_fit(transformer: torch.nn.Module, deltas: dict[str, Delta]) -> None:
    """Raise MergeError unless every layer the LoRA changes is a linear layer of `transformer` of its shape."""
    missing, wrong = [], []
    for name, delta in deltas.items():
        try:
            module = transformer.get_submodule(name)
        except AttributeError:
            missing.append(name)
            continue
        if not isinstance(module, torch.nn.Linear | Float8RowwiseLinear):
            wrong.append(f"{name} is a {type(module).__name__}, not a linear layer")
        elif (module.out_features, module.in_features) != (delta.up.shape[0], delta.down.shape[1]):
            wrong.append(
                f"size mismatch for {name}: LoRA {delta.up.shape[0]}x{delta.down.shape[1]}, "
                f"model {module.out_features}x{module.in_features}"
            )
    if missing:
        raise MergeError(f"{len(missing)} of the {len(deltas)} layers it changes are not in it, e.g. {min(missing)}")
    if wrong:
        raise MergeError(wrong[0])


def seed_of(request: list[tuple[str, float]]) -> int:
    """A stochastic-rounding seed for a set of (LoRA identity, weight) pairs, independent of their order."""
    text = repr(sorted(request))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def onto_fp8_grid_(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Round float32 `x` in place, stochastically, to values float8 e4m3 holds exactly: random bits are
    added below the 3 mantissa bits e4m3 keeps and then cut off (a carry rounds up). Returns `x`."""
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << _FP32_DROPPED_BITS, x.shape, generator=generator, device=x.device, dtype=torch.int32)
    bits.add_(noise).bitwise_and_(~((1 << _FP32_DROPPED_BITS) - 1))
    return x.clamp_(-FP8_MAX, FP8_MAX)


def _requantize(x: torch.Tensor, old: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 `x` (scaled weights of a float8 layer whose codes were `old`) to float8: to nearest where
    that moves the weight, stochastically where rounding to nearest would give the old code back and so
    drop the change. Stochastic rounding is unbiased but twice as noisy; this uses it only where rounding
    to nearest would be biased (changes under half a step)."""
    nearest = x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    unmoved = nearest.view(torch.uint8) == old.view(torch.uint8)
    return torch.where(unmoved, onto_fp8_grid_(x, generator).to(torch.float8_e4m3fn), nearest)


@torch.inference_mode()
def merge(transformer: torch.nn.Module, loras: list[tuple[dict[str, Delta], float]], seed: int) -> Merged:
    """Add the weighted LoRAs to `transformer`'s layers in place; returns what to `restore`."""
    names = sorted({name for deltas, _ in loras for name in deltas})
    modules = {name: transformer.get_submodule(name) for name in names}
    saved_bytes = sum(_weight_bytes(m) for m in modules.values())
    device = next(transformer.parameters()).device
    keep_on = device if _room_on(device, saved_bytes) else torch.device("cpu")
    generator = torch.Generator(device).manual_seed(seed)
    merged = Merged()
    try:
        for name in names:
            module = modules[name]
            change = None
            for deltas, weight in loras:
                if (delta := deltas.get(name)) is not None and weight:
                    up = delta.up.to(device, torch.float32, non_blocking=True) * (weight * delta.scale)
                    part = up @ delta.down.to(device, torch.float32, non_blocking=True)
                    change = part if change is None else change.add_(part)
            if change is None:
                continue
            if isinstance(module, Float8RowwiseLinear):
                merged.saved[name] = {
                    "weight_fp8": module.weight_fp8.to(keep_on, copy=True),
                    "weight_scale": module.weight_scale.to(keep_on, copy=True),
                }
                w = change.addcmul_(module.weight_fp8.float(), module.weight_scale.t())  # in place: one buffer
                # Each row keeps its scale unless the change outgrows it by more than one top float8 step
                # (those few largest weights are clamped): on the same grid the weights a LoRA barely moves
                # stay where they were, where a rescaled grid would re-round every weight of the row and
                # add noise the size of the float8 error itself, drowning a weak LoRA.
                amax = torch.linalg.vector_norm(w, math.inf, dim=1, keepdim=True)
                kept = module.weight_scale.t()
                scale = torch.where(amax > kept * (FP8_MAX + FP8_TOP_STEP), amax / FP8_MAX, kept)
                module.weight_fp8.copy_(_requantize(w.div_(scale), module.weight_fp8, generator))
                module.weight_scale.copy_(scale.t())
            else:
                merged.saved[name] = {"weight": module.weight.to(keep_on, copy=True)}
                module.weight.copy_(change.add_(module.weight))
            del change
    except BaseException:
        restore(transformer, merged)
        raise
    log.info("merged LoRAs into %d layers (originals kept on %s)", len(merged.saved), keep_on)
    return merged


@torch.inference_mode()
def restore(transformer: torch.nn.Module, merged: Merged) -> None:
    """Copy the original values back into the layers `merge` changed (the same tensors, in place)."""
    for name, tensors in merged.saved.items():
        module = transformer.get_submodule(name)
        for attr, original in tensors.items():
            getattr(module, attr).copy_(original)
    merged.saved.clear()


def _weight_bytes(module: torch.nn.Module) -> int:
    if isinstance(module, Float8RowwiseLinear):
        return module.weight_fp8.nbytes + module.weight_scale.nbytes
    return module.weight.nbytes


def _room_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free = memory.device_free_bytes(str(device))
    return free is not None and free > nbytes + DEVICE_SAVE_MARGIN_BYTES
